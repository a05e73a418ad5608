# One task runner for the project. `make help` lists the targets.
# Every target bootstraps the project's own virtualenv (.venv) from requirements.txt when it
# is missing or older than requirements.txt, so a fresh clone needs only Python 3.11+ and make.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and the demo read MNIST from here when it exists (no download needed).
SHARED_MNIST := $(abspath ../shared/data/mnist)
export MNIST_DATA_DIR ?= $(if $(wildcard $(SHARED_MNIST)/*.gz),$(SHARED_MNIST),)

.DEFAULT_GOAL := help
.PHONY: help venv demo train test test-fast lint format bench test-infra preflight \
	serve test-training test-serving bench-serving test-scripts

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP) ## Create or update the local virtualenv (.venv) from requirements.txt

demo: $(STAMP) ## The main job end to end: train on MNIST, register in local MLflow, serve under azmlinfsrv, score
	$(PY) -m scripts demo

train: $(STAMP) ## Train once with the default hyperparameters into ./outputs
	$(PY) -m training.train

# fork:begin github_actions
test: lint-workflows
# fork:end github_actions
test: $(STAMP) ## Run the whole test suite (lint included)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

test-fast: $(STAMP) ## Run the tests that do not train a model
	$(PY) -m pytest -m "not slow"

# The tests mirror the source: tests/<folder> tests <folder>/.
test-infra: $(STAMP) ## Run the tests of infra/ (both Pulumi programs under mocks, policy, stack outputs)
	$(PY) -m pytest tests/infra

test-training: $(STAMP) ## Run the tests of training/ (real MNIST: every mode, resume, export, models)
	$(PY) -m pytest tests/training

preflight: $(STAMP) ## Check VM sizes and Azure ML quota in the region before `pulumi up` (STACK=dev)
	$(PY) -m scripts preflight --stack $(or $(STACK),dev)

serve: $(STAMP) ## Serve ./outputs/model with serving/code/score.py under azmlinfsrv on :5001, as the endpoint would
	$(PY) -m scripts serve

test-serving: $(STAMP) ## Run the tests of serving/ (the uploaded scoring code under the real azmlinfsrv)
	$(PY) -m pytest tests/serving

test-scripts: $(STAMP) ## Run the tests of scripts/ (job specs run locally, deploy/batch/preflight offline)
	$(PY) -m pytest tests/scripts

# fork:begin horovod
.PHONY: horovod-env train-horovod
horovod-env: ## Build (or reuse) the pinned Horovod virtualenv: TF 2.13 + horovod 0.28.1, Gloo
	$(PYTHON) training/environments/horovod/build_env.py

train-horovod: ## Train with Horovod on NP local processes (default 2) over Gloo into ./outputs
	@HVD_PY="$$($(PYTHON) training/environments/horovod/build_env.py --print-python)" && \
	"$$(dirname "$$HVD_PY")/horovodrun" --gloo -np $(or $(NP),2) -H 127.0.0.1:$(or $(NP),2) \
		"$$HVD_PY" -m training.train
# fork:end horovod

lint: $(STAMP) ## Lint and check formatting with ruff
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# fork:begin github_actions
# zizmor: GitHub Actions security audit (offline, no API calls; pedantic: code smells too).
# check-jsonschema: the SchemaStore workflow schema inside the package. Both always run; the
# target fails when either finds anything.
WORKFLOWS ?= .github/workflows
lint-workflows: $(STAMP) ## Lint the GitHub workflows: zizmor --offline and the workflow JSON schema
	@status=0; \
	$(VENV)/bin/zizmor --offline --no-progress --pedantic $(WORKFLOWS)/*.yml || status=1; \
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)/*.yml \
		|| status=1; \
	exit $$status
.PHONY: lint-workflows
# fork:end github_actions

format: $(STAMP) ## Fix lint and format with ruff
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

bench: $(STAMP) ## Run the benchmarks (training speed) and print ratios against their baselines
	$(PY) -m benchmarks.train_speed

bench-serving: $(STAMP) ## Benchmark score.py under azmlinfsrv against model.predict and an empty run()
	$(PY) -m benchmarks.serving_speed

.PHONY: bench-concurrency
bench-concurrency: $(STAMP) ## Load deployment.yml's serving settings with 1, 2, 4 clients (MODEL_DIR, SET="NAME=VALUE ...")
	$(PY) -m benchmarks.serving_concurrency --model-dir $(or $(MODEL_DIR),outputs) \
		$(foreach pair,$(SET),--set $(pair))
