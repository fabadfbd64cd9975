"""Config loading: types, limits, unknown keys, overrides, and every shipped YAML preset.

Run: `pytest tests/unit/test_config.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from unbackdoor.cli import STAGES, main
from unbackdoor.data.backdoors import load_specs
from unbackdoor.running.config import ConfigError, from_dict, load_preset, parse_overrides, preset_names, resolve
from unbackdoor.stages.poison import PoisonConfig
from unbackdoor.stages.world import WorldConfig


@dataclass
class Inner:
    lr: float = field(default=1e-3, metadata={"min": 0.0, "min_exclusive": True})
    family: str = field(default="llama", metadata={"choices": ("llama", "qwen3")})


@dataclass
class Outer:
    steps: int = field(default=10, metadata={"min": 1})
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def test_nested_overrides_are_typed():
    cfg = from_dict(Outer, parse_overrides(["steps=5", "inner.lr=3e-4", "inner.family=qwen3", "tags=[a,b]"]))
    assert cfg.steps == 5 and cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.family == "qwen3"
    assert cfg.tags == ["a", "b"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("stepz=3", "unknown key stepz; valid keys: inner, steps, tags"),
        ("inner.betas=3", "unknown key inner.betas; valid keys: family, lr"),
        ("steps=many", "steps: expected an integer, got 'many'"),
        ("steps=0", "steps: 0 must be >= 1"),
        ("inner.lr=-1", "inner.lr: -1.0 must be > 0.0"),
        ("inner.family=gpt9", "inner.family: 'gpt9' is not one of llama, qwen3"),
        ("steps", "is not of the form key=value"),
    ],
)
def test_bad_values_name_key_value_and_valid_choices(override, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, parse_overrides([override]))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@dataclass
class Stage:
    inner: Inner = field(default_factory=lambda: Inner(lr=0.5, family="qwen3"))


def test_a_nested_override_keeps_the_stage_default_of_the_other_keys():
    cfg = from_dict(Stage, parse_overrides(["inner.lr=0.1"]))
    assert cfg.inner.lr == pytest.approx(0.1) and cfg.inner.family == "qwen3"


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: small, tiny"):
        resolve(WorldConfig, "world", "huge", [])


@pytest.mark.parametrize("name", preset_names("world"))
def test_world_presets_load(name):
    cfg = resolve(WorldConfig, "world", name, [])
    assert cfg.tokens > 0


@pytest.mark.parametrize("name", preset_names("backdoors"))
def test_backdoor_presets_load(name):
    specs = load_specs(name)
    assert len({s.name for s in specs}) == len(specs)


def test_every_shipped_yaml_is_covered():
    assert preset_names("world") == ["small", "tiny"]
    assert preset_names("backdoors") == ["behaviour6", "default8", "en-fr3", "en-fr6", "script6"]
    assert load_preset("backdoors", "default8")["backdoors"]


def test_poison_config_requires_world():
    with pytest.raises(ConfigError, match="world: required"):
        from_dict(PoisonConfig, {})


@pytest.mark.parametrize("override, message", [("seed=-1", "seed: -1 must be a seed >= 0"),
                                               ("seeds=[0,-2]", "seeds: -2 must be a seed >= 0")])  # fmt: skip
def test_negative_seeds_are_refused(override, message):
    from unbackdoor.stages.transfer import TransferConfig

    with pytest.raises(ConfigError, match=message):
        from_dict(TransferConfig, parse_overrides([override]))


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_help_lists_its_config_keys_with_defaults(stage, capsys):
    with pytest.raises(SystemExit) as done:
        main([stage, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    keys = text.split("config keys (key=value overrides, dotted; the defaults before any --preset):\n")[1]
    assert "  seed=0" in keys.splitlines()  # every stage has a seed
    if stage in ("pretrain", "inject", "remove"):
        assert "  train.lr=" in text and "  train.precision=fp32  (one of fp32, bf16, auto)" in keys


def test_a_yaml_file_is_a_preset_of_the_users_own(tmp_path):
    from unbackdoor.running.config import UserError
    from unbackdoor.stages.transfer import TransferConfig

    mine = tmp_path / "my-cluster.yaml"
    mine.write_text("launcher: {kind: slurm, partition: gpu, time_min: 240}\nworkers: 2\n")
    cfg = resolve(TransferConfig, "transfer", str(mine), ["launcher.time_min=30"])
    assert (cfg.launcher.kind, cfg.launcher.partition, cfg.launcher.time_min, cfg.workers) == ("slurm", "gpu", 30, 2)
    assert cfg.remove == TransferConfig().remove  # keys the file does not set keep the stage's defaults
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="holds a list; expected a mapping of config keys"):
        load_preset("transfer", str(tmp_path / "list.yaml"))
    with pytest.raises(UserError, match="does not exist"):
        load_preset("transfer", str(tmp_path / "nothere.yml"))
    (tmp_path / "typo.yaml").write_text("launcher: {kind: pbs}\n")
    with pytest.raises(ConfigError, match="launcher.kind: 'pbs' is not one of local, slurm, commands"):
        resolve(TransferConfig, "transfer", str(tmp_path / "typo.yaml"), [])
