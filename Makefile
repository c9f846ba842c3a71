# The two commands of the README are `make run` and `make test`; everything else is for developers.
# Both set up what they need first: a virtual environment in .venv with the pinned packages,
# and (for the linters) node_modules with buf.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_INSTALLED := $(CHECKOV_VENV)/.installed

## Podman's settings for this project's containers (runc, cgroupfs: see the file).
CONTAINERS_CONF ?= $(CURDIR)/deploy/containers/containers.conf
export CONTAINERS_CONF

.PHONY: images up down test-containers k8s-smoke setup checkov-setup run run-s3 test pytest lint protos protos-check bench bench-tracing bench-validators bench-judge bench-curation bench-pods fuzz load test-trl pod-lock clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

$(NODE_INSTALLED): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## make checkov-setup: checkov, the policy scan of the Kubernetes manifests and Dockerfiles
## (tests/deploy), in a virtual environment of its own: its packages conflict with our pins.
checkov-setup: $(CHECKOV_INSTALLED)

$(CHECKOV_INSTALLED): deploy/checkov-requirements.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r deploy/checkov-requirements.txt
	@touch $@

## make run: start every service and the gateway on http://127.0.0.1:8080 (SQLite under var/).
run: setup
	$(BIN)/tunelab dev

## make run-s3: the same, with datasets and outputs in a local SeaweedFS S3 server (var/seaweedfs).
run-s3: setup
	$(BIN)/tunelab dev --s3

## make images: every image built here with podman (docker: CONTAINER_TOOL=docker): the four
## services, the gateway, PostgreSQL and SeaweedFS, on a Debian base made by debootstrap (needs
## root) unless TUNELAB_BASE_IMAGE names one, e.g. python:3.11-slim-bookworm where a registry is
## reachable (python scripts/images.py --help).
images: setup
	$(BIN)/python scripts/images.py

## make up: the suite in containers as compose.yaml describes it, the gateway on
## http://127.0.0.1:8080; make down stops it (make down VOLUMES=1 also deletes its data).
up: setup
	$(BIN)/python scripts/up.py up

down: setup
	$(BIN)/python scripts/up.py down $(if $(VOLUMES),--volumes)

## make test-containers: the end-to-end tests marked `containers` (a training run on the local
## provider inside the deploy container, a download by token, OTLP ingest, an evaluation and a
## curation) against the suite in containers: builds the images and starts it first.
test-containers: images up
	TUNELAB_E2E_TARGET=containers $(BIN)/python -m pytest -m containers tests/e2e

## make k8s-smoke: the Kubernetes dev overlay, rendered and started with podman kube play (what
## podman does not play is translated or left out, and said), then every service's health
## checked and everything removed (python scripts/k8s_smoke.py --keep leaves it running).
k8s-smoke: images
	$(BIN)/python scripts/k8s_smoke.py

## make test: the linters, the generated-code check, then every test (SQLite and PostgreSQL).
test: lint pytest

pytest: setup checkov-setup
	$(BIN)/python -m pytest

lint: setup $(NODE_INSTALLED) protos-check
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python scripts/buf_lint.py

## make protos: regenerate gen/python from protos/ (commit the result).
protos: setup
	$(BIN)/python scripts/gen_protos.py

protos-check: setup
	$(BIN)/python scripts/gen_protos.py --check

bench: setup
	$(BIN)/python -m bench

bench-tracing: setup
	$(BIN)/python -m bench tracing

## make bench-validators: the eval validators' judgments/s over 10,000 subjects beside the same
## checks written inline, and one 5 MB output through them (python -m bench validators --help);
## then the same validators with storage over 10,000 traces on PostgreSQL and SQLite: Evaluate
## 16 in flight and a rule following new traces, through the tracing and eval services, beside
## the validators alone and a Core bulk insert of the same judgments (a few minutes;
## python -m bench validators --storage --help, --traces 500 for a quick check).
bench-validators: setup
	$(BIN)/python -m bench validators
	$(BIN)/python -m bench validators --storage

## make bench-curation: datasets curated from 100,000 judged traces, SFT and DPO, rows/s on both
## databases beside ListSpans alone over the same spans (python -m bench curation --help).
bench-curation: setup
	$(BIN)/python -m bench curation

## make bench-pods: a training pod's start latency (create to first report, and to the end of a
## 5-step run) on the container provider, through Podman's API, beside the local provider's.
bench-pods: setup
	$(BIN)/python -m bench pods

## make bench-judge: the LLM judge's grades/s against the fake OpenAI endpoint answering in
## 200 ms, at concurrency 8 and 16, beside the ideal concurrency / 0.2 s
## (python -m bench judge --help).
bench-judge: setup
	$(BIN)/python -m bench judge

## make load: 50 clients for 60 s against the whole suite, the second half beside 200 slow
## connections; per-route p50/p99, throughput, 5xx and RSS (python -m bench load --help).
load: setup
	$(BIN)/python -m bench load

## make fuzz: the API fuzz test of make test at length: 500 examples per operation and a fresh
## seed (printed; TUNELAB_FUZZ_SEED=N repeats a run), on both databases.
fuzz: setup
	TUNELAB_FUZZ_EXAMPLES=$${TUNELAB_FUZZ_EXAMPLES:-500} \
	TUNELAB_FUZZ_SEED=$${TUNELAB_FUZZ_SEED:-$$(date +%s)} \
	$(BIN)/python -m pytest tests/e2e/test_fuzz.py -s

## make test-trl: the GPU pods' trainer (trl_train) end to end on this machine's CPU, for SFT and
## DPO on a tiny model built locally, with the pods' pinned packages in a scratch virtual
## environment under /tmp (not the project's; about 1 GB, so not part of make test).
test-trl: setup
	$(BIN)/python scripts/trl_on_cpu.py

## make pod-lock: resolve the pods' packages again (services/deploy/pod/stack.py) and rewrite
## their lock, services/deploy/pod/constraints.txt.
pod-lock: setup
	$(BIN)/python -m services.deploy.pod.lock

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .build .mypy_cache .ruff_cache .pytest_cache
