# tfxops: two commands do all the set-up on a fresh machine with Python 3.10.
#   make demo   create .venv, install (pinned and hashed by constraints.txt), run the whole loop
#   make test   the same set-up, then the test suite
# Both are idempotent: the install step reruns only when pyproject.toml or a lock file
# (constraints.txt, requirements-bootstrap.txt) changes.

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
# The locks: every package at one version with the SHA-256 of each of its files (make lock).
LOCK := constraints.txt
BOOTSTRAP_LOCK := requirements-bootstrap.txt

.PHONY: demo run serve monitor test test-slow install bench bench-serving bench-peers bench-serving-quick bench-monitoring bench-scale lock sbom pin-images clean help protos

help:
	@echo "make demo    set up and run the whole loop (train, serve, watch, retrain) on the bundled data"
	@echo "make test    set up and run the tests"
	@echo "make test-slow   the slow contract tests (pytest marker 'slow'; not in make test)"
	@echo "make run | serve | monitor   one piece: tfxops run / serve / monitor"
	@echo "make bench | bench-serving | bench-monitoring | bench-scale   the benchmarks (bench/)"
	@echo "make bench-peers | bench-serving-quick   bench-serving's peers' virtualenv alone; a short run without peers"
	@echo "make lock    rehash the locks from the installed environment (after a dependency change)"
	@echo "make protos  regenerate the V2 gRPC stubs (serving/v2/grpc_predict_v2_pb2*.py) from third_party/kserve"
	@echo "make sbom    a CycloneDX SBOM of the installed environment: outputs/sbom.cdx.json (SBOM=path)"
	@echo "make pin-images   pin the images of docker-compose.yml, Dockerfile, deploy/k8s by digest"
	@echo "make clean   remove outputs/ (runs, metadata, pushed models, logs)"

install: $(STAMP)

# A new top-level package (a new */__init__.py) needs the editable install redone.
$(STAMP): pyproject.toml $(LOCK) $(BOOTSTRAP_LOCK) $(wildcard */__init__.py)
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: tfxops needs Python 3.10 (TFX 1.16 supports Python < 3.11) and none was found." >&2; \
	  echo "       Tried: python3.10, python3, pyenv's versions/3.10.*. Install Python 3.10" >&2; \
	  echo "       (e.g. 'pyenv install 3.10.13') or pass one: make PYTHON=/path/to/python3.10 ..." >&2; \
	  exit 1; fi
	@if [ ! -x $(VENV)/bin/python ] || ! $(VENV)/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then \
	  echo "== creating $(VENV) with $(PYTHON310)"; rm -rf $(VENV); $(PYTHON310) -m venv $(VENV); fi
	@echo "== installing tfxops and its pinned dependencies (first time: a few minutes, ~3.3 GB)"
	@# Hash-checking mode: a file whose SHA-256 is not in the lock is refused. pip, setuptools
	@# and wheel first, from their own lock; they build the project (editable: no single file
	@# to hash) and the few sdists of the lock in place (no build isolation, whose build
	@# dependencies pip would fetch unhashed). --no-deps: the lock is the whole environment;
	@# pip check proves it complete.
	$(VENV)/bin/pip install $(PIP_FLAGS) -q --require-hashes --no-deps -r $(BOOTSTRAP_LOCK)
	$(VENV)/bin/pip install $(PIP_FLAGS) -q --require-hashes --no-deps --no-build-isolation -r $(LOCK)
	$(VENV)/bin/pip install $(PIP_FLAGS) -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
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

# the peers of bench-serving (FastAPI + uvicorn, KServe) in their own virtualenv under
# ~/.cache/tfxops-bench/ (TFXOPS_BENCH_CACHE): built by bench-serving when missing; this builds it alone
bench-peers: $(STAMP)
	$(VENV)/bin/python -m bench.peers.peer_venv

# a short bench-serving run without the peers, written to outputs/bench-serving-quick.md
bench-serving-quick: $(STAMP)
	$(VENV)/bin/python bench/serving.py --no-peers --seconds 1 --rounds 1 --out outputs/bench-serving-quick.md

bench-monitoring: $(STAMP)
	$(VENV)/bin/python bench/monitoring.py

bench-scale: $(STAMP)
	$(VENV)/bin/python bench/scale.py

# Rewrite the locks from the environment after a dependency change (needs the network):
# change pyproject.toml, install the new resolution into $(VENV) (pip install -e .
# without -c), then make lock: every installed version with the hashes of all its files.
lock: $(STAMP)
	$(VENV)/bin/pip freeze --all --exclude-editable > $(VENV)/freeze.txt
	$(VENV)/bin/python tools/lock.py $(VENV)/freeze.txt $(LOCK) --bootstrap $(BOOTSTRAP_LOCK)
	@rm -f $(VENV)/freeze.txt

# The KServe V2 gRPC stubs from the vendored proto (protoc of grpcio-tools 1.48.2, in
# .cache/tools-venv-protos; the generated files are committed).
protos:
	PYTHON=$(PYTHON310) tools/gen_v2_protos.sh

# A CycloneDX SBOM of $(VENV) (cyclonedx-py in a tools venv of its own, hashed pins).
SBOM_VENV := .cache/tools-venv-sbom
SBOM_LOCK := tools/sbom-requirements.txt
$(SBOM_VENV)/.installed: $(SBOM_LOCK) $(BOOTSTRAP_LOCK)
	@if [ -z "$(PYTHON310)" ]; then echo "error: no Python 3.10 found (make PYTHON=/path/to/python3.10 sbom)" >&2; exit 1; fi
	rm -rf $(SBOM_VENV) && $(PYTHON310) -m venv $(SBOM_VENV)
	$(SBOM_VENV)/bin/pip install $(PIP_FLAGS) -q --require-hashes --no-deps -r $(BOOTSTRAP_LOCK)
	$(SBOM_VENV)/bin/pip install $(PIP_FLAGS) -q --require-hashes --no-deps -r $(SBOM_LOCK)
	@touch $@

SBOM ?= outputs/sbom.cdx.json
sbom: $(STAMP) $(SBOM_VENV)/.installed
	@mkdir -p $(dir $(SBOM))
	$(SBOM_VENV)/bin/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
	  --of JSON -o $(SBOM) $(VENV)/bin/python
	@echo "== $(SBOM): CycloneDX, every package installed in $(VENV)"

# Pin every image by digest (needs Docker and the registry): each image: / FROM of
# docker-compose.yml, Dockerfile and deploy/k8s gets the digest its tag has today.
pin-images:
	tools/pin_images.sh docker-compose.yml Dockerfile deploy/k8s/*.yaml

clean:
	rm -rf outputs
