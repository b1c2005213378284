# zsnr: the two commands a newcomer needs are `make demo` and `make test`; each sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Never reach for the hub (stalls, broken tokenizers) and never upload to wandb from tests.
export HF_HUB_OFFLINE := 1
export WANDB_MODE := offline
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-all lint demo paper bench report docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

# The paper in miniature (CPU, ~15 min): outputs/demo/report.md. Extra settings: make demo ARGS="families=[shapes,scenes]".
demo: setup
	$(PY) launch/demo.py $(ARGS)

# Every claim of the paper in miniature, two protocols (CPU, ~59 min; ~47 after make demo, whose runs it reuses): outputs/paper/report.md.
paper: setup
	$(PY) launch/paper.py $(ARGS)

# The documentation site (docs/, mkdocs.yml) into site/, strict: a warning, a broken link or anchor, or a page
# missing from the nav fails it. `make test` builds it too (tests/unit/test_docs.py).
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

# The CI suite: everything but the tests marked slow (see pyproject's markers); it ends with the 20 slowest tests.
test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" --durations=20 tests

# Everything, the slow end-to-end tests included.
test-all: setup
	$(PY) -m pytest -q -m "not gpu" tests

lint: setup
	$(VENV)/bin/ruff check src launch tests
	$(VENV)/bin/ruff format --check src launch tests

report: setup
	$(PY) -m zsnr.diffusion.report --plot outputs/schedules.png

bench: setup
	$(PY) -m pytest -q -s tests/bench -m "not gpu" -p no:cacheprovider --no-header -k bench

clean:
	rm -rf outputs multirun .pytest_cache site
