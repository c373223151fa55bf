# musicflow: `make demo` runs the pipeline on synthetic songs, `make test` runs the tests.
# Both create .venv and install what they need (ffmpeg, and Chromium for the UI tests, from apt
# when they are missing).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DO_NOT_TRACK = 1
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export TF_CPP_MIN_LOG_LEVEL = 2

.PHONY: demo test lint format bench ffmpeg chromium clean constraints

demo: $(STAMP) ffmpeg
	$(BIN)/musicflow demo

# Two pytest workers (pytest-xdist): much of the suite waits on servers and subprocesses.
# `PYTEST_WORKERS=0 make test` runs it in one process.
PYTEST_WORKERS ?= 2

test: $(STAMP) ffmpeg chromium
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ffmpeg
	$(BIN)/python benchmarks/bench_ingest.py

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Re-resolve every dependency from pyproject.toml alone in a scratch venv and freeze it into
# constraints.txt; then `make test` (it reinstalls .venv from the new pins) and commit both.
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip
	.venv-constraints/bin/python -m pip install --quiet -e '.[dev]'
	{ sed -n '1,/^# (a fresh venv/p' constraints.txt; \
	  .venv-constraints/bin/python -m pip freeze --exclude-editable | grep -v '^musicflow'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

ffmpeg:
	@command -v ffmpeg >/dev/null 2>&1 || { \
	  echo "ffmpeg not found: installing it with apt-get"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg >/dev/null; \
	}
	@ffmpeg -version | head -n 1

# Debian's chromium, for the tests that look at the Prefect UI (Playwright drives it; no browser download).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "chromium not found: installing it with apt-get"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	}
	@{ command -v chromium || command -v chromium-browser; } >/dev/null && echo "chromium: $$({ command -v chromium || command -v chromium-browser; })"

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache .hypothesis
