# Developer commands. `make setup` prepares a fresh Debian machine (run as root for apt) and builds a new
# virtual environment in $(VENV) with the package, its extras and the CPU build of torch.
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
APT_PACKAGES := postgresql

.PHONY: setup venv system-packages test test-fast lint type bench pong pong-report

setup: system-packages venv

# --no-compile: pip would byte-compile every module of every package (about 100 CPU-seconds, most of them
# torch's); Python compiles and caches the modules a command imports the first time it imports them.
venv:
	$(BASE_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --no-compile -r requirements/torch-cpu.txt
	$(PYTHON) -m pip install --no-compile ".[test,dev]"

system-packages:
	@if command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "postgresql already installed"; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	else \
		echo "install the Debian packages '$(APT_PACKAGES)' (needs root); the PostgreSQL tests are skipped without them"; \
	fi

test:
	$(PYTHON) -m pytest

test-fast:
	$(PYTHON) -m pytest -m "not slow"

lint:
	$(PYTHON) -m ruff check sb3_ppo_variants tests
	$(PYTHON) -m ruff format --check sb3_ppo_variants tests

type:
	$(PYTHON) -m mypy sb3_ppo_variants

# The published evidence (docs/benchmarks.md); runs resume where they stopped.
BENCH_RUNS ?= benchmark_runs
bench:
	$(PYTHON) -m sb3_ppo_variants.benchmark cost --output docs/results/cost --plots docs/benchmarks \
		--setting mlp cnn --threads 1 2 --repeats 9 5 --fps-repeats 3 2
	$(PYTHON) -m sb3_ppo_variants.benchmark learn --runs $(BENCH_RUNS) \
		--tasks MinAtar/Breakout-v1 Acrobot-v1 LunarLander-v3 --seeds 0 1 2 3 4 --threads 1
	$(PYTHON) -m sb3_ppo_variants.benchmark collapse --runs $(BENCH_RUNS) --lr-scales 1 3 10 30 \
		--seeds 0 1 2 3 4 --threads 1
	$(PYTHON) -m sb3_ppo_variants.benchmark report --runs $(BENCH_RUNS) --output docs/results --plots docs/benchmarks

# Pong with the seed's settings, ppo_logit and SB3's ppo, to 2M agent steps each (docs/benchmarks.md): starts both
# runs, or continues them from the checkpoints in benchmark_runs/pong, and copies the newest checkpoint and the
# Monitor files there every 10 minutes; commit benchmark_runs/pong to keep them.
pong:
	nice -n 10 $(PYTHON) -m sb3_ppo_variants.benchmark pong train

pong-report:
	$(PYTHON) -m sb3_ppo_variants.benchmark pong report
