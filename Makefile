# idlkit: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (on local disk here); override elsewhere, e.g. TORCH_SPEC="torch>=2.2".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.idlkit-installed
# the suite on both cores, one test file per worker (files share module-level fixtures)
PYTEST_ARGS ?= -n 2 --dist loadfile
SHARED_DATA := $(abspath ../shared/datasets)
ifneq ($(wildcard $(SHARED_DATA)),)
export IDLKIT_DATA ?= $(SHARED_DATA)
endif

.PHONY: setup demo test lint bench experiment package docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/idlkit demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# sdist + wheel in dist/ (offline: the build backend comes with the dev extras), the packaging
# tests, then a fresh virtual environment that installs only the wheel (and its dependencies, torch
# pinned by TORCH_SPEC) and runs the README's examples from it
package: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	$(PY) -m pytest -p no:cacheprovider tests/test_packaging.py
	$(PYTHON) -m venv dist/fresh-venv
	dist/fresh-venv/bin/python -m pip install -q "$(TORCH_SPEC)" dist/idlkit-*.whl
	cd dist && OMP_NUM_THREADS=1 fresh-venv/bin/python ../tests/run_readme_examples.py ../README.md --expect-under fresh-venv

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# torchidl is the reference of bench_core; --no-deps keeps pip away from torch
bench: $(STAMP)
	$(PY) -m pip install -q --no-deps torchidl || echo "torchidl unavailable: idlkit rows only"
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_wellposed.py

# one paper reproduction with the data found through $$IDLKIT_DATA (exported above):
# make experiment NAME=compression ARGS=--quick
experiment: $(STAMP)
	@test -n "$(NAME)" || (echo "usage: make experiment NAME=<script in experiments/, without .py> [ARGS=...]"; exit 2)
	cd experiments && ../$(PY) $(NAME).py $(ARGS)

# the documentation site into site/ (mkdocs-material + mkdocstrings; the `docs` extra, installed
# on first use), with --strict: any warning (broken link, unresolved ::: name) fails the build
docs: $(STAMP)
	$(PY) -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || $(PY) -m pip install -q -e ".[dev,docs]"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) runs dist site .pytest_cache .ruff_cache
