# tlexp — `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install fashion-mnist test test-all train sweep tensorboard lint clean bench-cache clean-cache

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## create .venv, install tlexp (editable, with dev tools) and the Fashion-MNIST Debian package
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA build' if torch.version.cuda else '| CPU build')"
	@$(MAKE) --no-print-directory fashion-mnist

fashion-mnist: ## install the Debian package dataset-fashion-mnist if its files are missing
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(dir $(FMNIST))"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four idx files in a folder and pass dataset.root=<folder>"; fi

test: ## fast tests (under 10 minutes on 2 cores)
	$(PY) -m pytest -q

test-all: ## all tests, the slow ones too
	$(PY) -m pytest -q -m "slow or not slow"

train: ## the main job: python -m tlexp.train $(ARGS)
	$(PY) -m tlexp.train $(ARGS)

sweep: ## the four strategies side by side (Hydra multirun)
	$(PY) -m tlexp.train -m strategy=scratch,feature_extraction,finetune,gradual $(ARGS)

tensorboard: ## TensorBoard over every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

bench-cache: ## cached vs uncached feature_extraction (Fashion-MNIST, EfficientNet-Lite0, 20 epochs), side by side
	$(PY) benchmarks/bench_cache.py $(ARGS)

clean-cache: ## remove the feature cache (cache.dir: $$TLEXP_CACHE_DIR or ~/.cache/tlexp/features)
	rm -rf "$${TLEXP_CACHE_DIR:-$$HOME/.cache/tlexp/features}"

lint: ## ruff
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean: ## remove build and test debris (keeps outputs/ and .venv)
	rm -rf build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
