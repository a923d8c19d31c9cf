# The README's two commands: `make up` starts the studio, `make test` runs the whole suite.
# Both set everything up on a fresh machine first (a virtualenv, torch==2.13.0, then the project).

VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: up test install browser lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the browser tests (no browser download at run time), and an emoji font
# so the status icons in the screenshots are drawn.
browser:
	@{ command -v chromium >/dev/null 2>&1 && [ -d /usr/share/fonts/truetype/noto ]; } || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	    fonts-noto-color-emoji) >/dev/null 2>&1 \
	  || echo "chromium could not be installed; browser tests will be skipped"; }

up: install
	$(VENV)/bin/distill-studio up

# The suite in TEST_JOBS processes (pytest-xdist), each test file whole in one of them (its
# module fixtures made once): a sixth less time on two cores. The files start slowest first, in
# the order tests/conftest.py gives them (tests/file_seconds.json), not xdist's (most tests
# first), so that no process waits idle at the end for a long file the other began last.
# `make test TEST_JOBS=0` runs it in one process.
TEST_JOBS ?= 2

test: install browser lint
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

# The same checks as .pre-commit-config.yaml, plus the import contracts. `ruff format --check`
# is run by pre-commit; mypy reads its targets and settings from pyproject.toml ([tool.mypy]).
lint: install
	$(VENV)/bin/ruff check core backend worker client cli ui tests benchmarks migrations
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy core worker/engine

bench: install
	$(PY) -m benchmarks.paper_table

clean:
	rm -rf $(VENV) .ds-data
