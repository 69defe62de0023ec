# Developer commands. `make setup` prepares a fresh Debian machine (run as root for apt).
PYTHON ?= python
APT_PACKAGES := postgresql

.PHONY: setup system-packages test test-fast lint type bench

setup: system-packages
	$(PYTHON) -m pip install -r requirements/torch-cpu.txt
	$(PYTHON) -m pip install ".[test,bench,dev]"

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
	ruff check sb3_ppo_variants tests
	ruff format --check sb3_ppo_variants tests

type:
	mypy sb3_ppo_variants

bench:
	$(PYTHON) -m sb3_ppo_variants.benchmark --help
