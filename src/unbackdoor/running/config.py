"""Typed configs: nested dataclasses loaded from YAML presets plus dotted `key=value` overrides.

A stage declares one `XConfig` dataclass. Fields may carry limits in their metadata:

    lr: float = field(default=3e-4, metadata={"min": 0.0, "min_exclusive": True})
    family: str = field(default="llama", metadata={"choices": ("llama", "qwen3", "gpt_neox")})

Every mistake a user can make (unknown key, wrong type, value out of range) raises `ConfigError` with one
line naming the key, the bad value and what would be valid; the CLI turns it into exit code 2.

Run: `pytest tests/unit/test_config.py`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input. The CLI prints the message on one line and exits with code 2."""


class ConfigError(UserError):
    """A config key, type or value that is not valid."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` (recursing into dataclasses, lists, dicts, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {' or '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is list or tp is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} (write e.g. {key}=[1,2])")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, key): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    return value


def _check_limits(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in choices:
                raise ConfigError(f"{key}: {item!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    for number in value if isinstance(value, list) else [value]:  # past int64 nothing downstream can hold it
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) >= 2**63:
            raise ConfigError(f"{key}: {number!r} is too large (more than 64 bits)")
    if lo is not None:
        if meta.get("min_exclusive") and not value > lo:
            raise ConfigError(f"{key}: {value!r} must be > {lo}")
        if not meta.get("min_exclusive") and not value >= lo:
            raise ConfigError(f"{key}: {value!r} must be >= {lo}")
    if hi is not None and not value <= hi:
        raise ConfigError(f"{key}: {value!r} must be <= {hi}")


SEED_KEYS = ("seed", "seeds")  # every config's seeds: non-negative integers (RNGs and directory names use them)


def _check_seeds(name: str, value: Any, key: str) -> None:
    if name not in SEED_KEYS:
        return
    for seed in value if isinstance(value, list) else [value]:
        if isinstance(seed, int) and seed < 0:
            raise ConfigError(f"{key}: {seed!r} must be a seed >= 0")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from a nested dict, rejecting unknown keys and bad values.

    Args:
        cls: a dataclass type.
        data: nested mapping, e.g. loaded from YAML.
        prefix: dotted path of `cls` inside the root config, used in error messages.

    Returns:
        An instance of `cls`.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        default = _default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(default):
            # `train.lr=...` overrides one key of this field's own default (a stage's TrainConfig(steps=100)),
            # not of the nested class's defaults.
            value = deep_merge(to_dict(default), value)
        kwargs[name] = _coerce(value, hints[name], key)
        _check_limits(kwargs[name], fields[name].metadata, key)
        _check_seeds(name, kwargs[name], key)
    obj = cls(**kwargs)
    # Defaults are checked too, so a preset cannot smuggle in a bad value by omission.
    for name, f in fields.items():
        if name not in data:
            _check_limits(getattr(obj, name), f.metadata, f"{prefix}{name}")
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cfg: Any) -> list[str]:
    """Every key a `key=value` override can set, dotted, with its default (and its choices): `train.lr=0.003`."""
    lines: list[str] = []

    def show(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(show(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {show(x)}" for k, x in v.items()) + "}"
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        return "''" if v == "" else str(v)

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
                continue
            choices = f.metadata.get("choices")
            lines.append(f"{prefix}{f.name}={show(value)}" + (f"  (one of {', '.join(map(str, choices))})"
                                                            if choices else ""))  # fmt: skip

    walk(cfg, "")
    return lines


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-safe nested dict of a config (paths become strings)."""

    def clean(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(dataclasses.asdict(cfg))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `["train.lr=1e-3", "model.family=qwen3"]` into a nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part}")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `extra` merged in recursively (`extra` wins)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_names(stage: str) -> list[str]:
    """Names of the YAML presets shipped for `stage` (files `presets/<stage>/<name>.yaml`)."""
    folder = resources.files("unbackdoor") / "presets" / stage
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(stage: str, name: str) -> dict[str, Any]:
    """The raw dict of preset `name` for `stage`: a shipped one, or a YAML file of the user's (`*.yaml`, `*.yml`:
    the same keys, e.g. a cluster's `launcher:` settings)."""
    if name.endswith((".yaml", ".yml")):
        data = load_yaml_file(Path(name), "--preset")
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"--preset: {name!r} holds a {type(data).__name__}; expected a mapping of config keys")
        return data or {}
    names = preset_names(stage)
    if name not in names:
        raise ConfigError(f"--preset: {name!r} is not a {stage} preset; valid presets: {', '.join(names)}")
    text = (resources.files("unbackdoor") / "presets" / stage / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def load_yaml_file(path: Path, what: str) -> Any:
    """Load a user's YAML file, turning a missing or malformed file into a one-line `UserError`."""
    if path.is_dir():
        raise UserError(f"{what}: {str(path)!r} is a directory; expected a YAML file")
    if not path.is_file():
        raise UserError(f"{what}: file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what}: {str(path)!r} is not valid YAML{where}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what}: {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def resolve(cls: type[T], stage: str, preset: str | None, overrides: list[str], **given: Any) -> T:
    """Preset, then explicit CLI options (`given`, None means unset), then dotted overrides -> typed config."""
    data = load_preset(stage, preset) if preset else {}
    data = deep_merge(data, parse_overrides_from_given(given))
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def parse_overrides_from_given(given: dict[str, Any]) -> dict[str, Any]:
    """Explicit CLI flags as a nested dict; keys may be dotted (`"model.family"`), None values are skipped."""
    nested: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            continue
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested
