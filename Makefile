# Every target sets up .venv itself, so a fresh clone needs only python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint typecheck pytest bench bench-supervisor bench-peers docs clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo needs trio, attrs and the demo extra (rich) only, not the development set, and
# it runs corral from src/: installing corral itself would build it first (~7 s more).
# Those packages are read from pyproject.toml. A .venv that already has the
# development set (make test was run) has them all.
$(DEMO_STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  $(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	    print(*p["dependencies"], *p["optional-dependencies"]["demo"], sep="\n")' \
	  | $(BIN)/python -m pip install --quiet --requirement /dev/stdin; fi
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	PYTHONPATH=src $(BIN)/python -m corral demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# Two processes, a test file each at a time (fixtures stay per file): ~2 min instead of
# ~3.5 on two cores. Every test also passes alone and serially (`.venv/bin/pytest -q`).
pytest: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

# Every benchmark; each rewrites its own block of docs/benchmarks.md.
bench: bench-supervisor bench-peers

bench-supervisor: $(STAMP)
	$(BIN)/python -m benchmarks.supervisor_overhead

# corral side by side with trio-parallel, anyio, PPE, mp.Pool, pebble, loky and a bare-pipe floor
# (~8 min; BENCH_ARGS=--quick for a smoke test). Rewrites docs/img/peers-*.png and the
# generated block of docs/benchmarks.md.
bench-peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks.peers --update-docs $(BENCH_ARGS)

# The documentation site (mkdocs.yml) into site/; any warning (a broken link or anchor, a
# missing page, a docstring mkdocstrings cannot read) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .pytest_cache .ruff_cache site
