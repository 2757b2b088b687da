# Each target works on a fresh machine with only Python, pip and apt.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test` (auto: one per core, at most 4; each runs torch on its share of the cores).
# What fails beside other workers runs alone once more before make test fails: a loaded machine shifts timing.
# (The one flake seen so far, test_label_issues' exit 1 with no output, was a real import race in posetune, found
# and fixed in stop 38; a test that needs the rerun deserves the same hunt, so its name is printed above the rerun.)
TEST_WORKERS ?= auto

.PHONY: install test demo bench bench-quick lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	bash scripts/ensure-chromium.sh || echo "chromium unavailable: the browser test will be skipped"
	$(PY) -m pytest -n $(TEST_WORKERS) --maxprocesses 4 || { \
	  echo "make test: tests failed beside other workers; running those alone once more (a failure there fails make test)"; \
	  $(PY) -m pytest --last-failed --last-failed-no-failures none; }

demo: install
	$(VENV)/bin/posetune demo --out demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports

bench: install
	$(PY) benchmarks/suite.py --full

bench-quick: install
	$(PY) benchmarks/suite.py --quick

clean:
	rm -rf demo runs .pytest_cache
