# tfxops: two commands do all the set-up on a fresh machine with Python 3.10.
#   make demo   create .venv, install (pinned by constraints.txt), run the whole loop
#   make test   the same set-up, then the test suite
# Both are idempotent: the install step reruns only when pyproject.toml or
# constraints.txt change.

SHELL := /bin/bash
VENV ?= .venv
PIP_FLAGS ?= --disable-pip-version-check --no-input

# A Python 3.10 interpreter: $(PYTHON) if given, else python3.10 on PATH, else pyenv's.
# Each candidate is run, so a pyenv shim that answers "command not found" is skipped.
PYTHON ?=
PYTHON310 := $(shell for p in $(PYTHON) python3.10 python3 \
	  $$(pyenv root 2>/dev/null)/versions/3.10.*/bin/python3.10 \
	  $$HOME/.pyenv/versions/3.10.*/bin/python3.10 /usr/local/bin/python3.10 /usr/bin/python3.10; do \
	  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 \
	    && { "$$p" -c 'import sys; print(sys.executable)'; break; }; done)

STAMP := $(VENV)/.installed

.PHONY: demo run serve monitor test test-slow install bench bench-serving bench-monitoring bench-scale lock clean help

help:
	@echo "make demo    set up and run the whole loop (train, serve, watch, retrain) on the bundled data"
	@echo "make test    set up and run the tests"
	@echo "make test-slow   the slow contract tests (pytest marker 'slow'; not in make test)"
	@echo "make run | serve | monitor   one piece: tfxops run / serve / monitor"
	@echo "make bench | bench-serving | bench-monitoring | bench-scale   the benchmarks (bench/)"
	@echo "make clean   remove outputs/ (runs, metadata, pushed models, logs)"

install: $(STAMP)

# A new top-level package (a new */__init__.py) needs the editable install redone.
$(STAMP): pyproject.toml constraints.txt $(wildcard */__init__.py)
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: tfxops needs Python 3.10 (TFX 1.16 supports Python < 3.11) and none was found." >&2; \
	  echo "       Tried: python3.10, python3, pyenv's versions/3.10.*. Install Python 3.10" >&2; \
	  echo "       (e.g. 'pyenv install 3.10.13') or pass one: make PYTHON=/path/to/python3.10 ..." >&2; \
	  exit 1; fi
	@if [ ! -x $(VENV)/bin/python ] || ! $(VENV)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	  echo "== creating $(VENV) with $(PYTHON310)"; rm -rf $(VENV); $(PYTHON310) -m venv $(VENV); fi
	@echo "== installing tfxops and its pinned dependencies (first time: a few minutes, ~3.3 GB)"
	$(VENV)/bin/pip install $(PIP_FLAGS) -q --upgrade "pip>=23,<25" "setuptools>=64,<76" wheel
	$(VENV)/bin/pip install $(PIP_FLAGS) -q -c constraints.txt -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/tfxops demo

run: $(STAMP)
	$(VENV)/bin/tfxops run

serve: $(STAMP)
	$(VENV)/bin/tfxops serve

monitor: $(STAMP)
	$(VENV)/bin/tfxops monitor

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow tests

bench: $(STAMP)
	$(VENV)/bin/python bench/pipeline.py

bench-serving: $(STAMP)
	$(VENV)/bin/python bench/serving.py

bench-monitoring: $(STAMP)
	$(VENV)/bin/python bench/monitoring.py

bench-scale: $(STAMP)
	$(VENV)/bin/python bench/scale.py

# Re-resolve the whole environment after a dependency change (needs the network).
lock: $(STAMP)
	( sed -n '1,3p' constraints.txt; $(VENV)/bin/pip freeze --exclude-editable | grep -v '^tfxops' ) > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf outputs
