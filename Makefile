# tlexp — `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install fashion-mnist test test-all train inspect audit bench-preflight sweep compare advise plan bench-plan bench bench-gpu bench-cache bench-recipes bench-datasets bench-auto bench-audit bench-unknown bench-export clean-cache tensorboard evaluate predict export lint docs clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## create .venv, install tlexp (editable, dev tools, torch pinned by constraints.txt) and the Fashion-MNIST Debian package
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '| CUDA build' if torch.version.cuda else '| CPU build')"
	@$(MAKE) --no-print-directory fashion-mnist

fashion-mnist: ## install the Debian package dataset-fashion-mnist if its files are missing
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(dir $(FMNIST))"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four idx files in a folder and pass dataset.root=<folder>"; fi

test: ## fast tests (under 10 minutes on 2 cores; two pytest workers: most of the time is Python processes starting, one core each)
	$(PY) -m pytest -q -n 2 --dist worksteal

test-all: ## all tests, the slow ones too
	$(PY) -m pytest -q -n 2 --dist worksteal -m "slow or not slow"

train: ## the main job: python -m tlexp.train $(ARGS)
	$(PY) -m tlexp.train $(ARGS)

inspect: ## a dataset report without training: python -m tlexp.inspect $(ARGS) (e.g. ARGS="dataset=imagefolder dataset.root=$$HOME/photos")
	$(PY) -m tlexp.inspect $(ARGS)

audit: ## which train + val images look mislabelled (out-of-fold probe + cleanlab): python -m tlexp.audit $(ARGS)
	$(PY) -m tlexp.audit $(ARGS)

bench-preflight: ## pre-flight speed: 1 thread vs all cores vs cached, side by side
	$(PY) benchmarks/bench_preflight.py $(ARGS)

sweep: ## the four strategies side by side (Hydra multirun)
	$(PY) -m tlexp.train -m strategy=scratch,feature_extraction,finetune,gradual,lp_ft $(ARGS)

compare: ## strategies x seeds side by side, then the report (python -m tlexp.compare $(ARGS))
	$(PY) -m tlexp.compare $(ARGS)

advise: ## which strategy auto would pick for a dataset (python -m tlexp.advise $(ARGS))
	$(PY) -m tlexp.advise $(ARGS)

plan: ## how many more images, and of which classes: a learning curve and a labelling plan (python -m tlexp.plan $(ARGS); add pool=<folder> to rank unlabelled images)
	$(PY) -m tlexp.plan $(ARGS)

bench: ## throughput vs the compute bound and vs a plain PyTorch loop (CPU, a few minutes): $(ARGS)
	$(PY) benchmarks/throughput.py $(ARGS)

bench-gpu: ## the GPU recipe: resnet50, 224 px, bf16, channels_last, batch 256, with and without compile
	PY=$(PY) bash benchmarks/gpu.sh

tensorboard: ## TensorBoard over every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

evaluate: ## evaluation report for a checkpoint: make evaluate ARGS="ckpt=<run>/checkpoints/last.ckpt"
	$(PY) -m tlexp.evaluate $(ARGS)

predict: ## label new images: make predict ARGS="ckpt=<file> input=<file|folder|glob>"
	$(PY) -m tlexp.predict $(ARGS)

export: ## ONNX / TorchScript + model card: make export ARGS="ckpt=<file> format=onnx"
	$(PY) -m tlexp.export $(ARGS)

bench-recipes: ## the recipe study: feature_extraction (+ probe), lp_ft, gradual, finetune on the main job's data, chosen on val: $(ARGS)
	$(PY) benchmarks/recipes.py $(ARGS)

bench-datasets: ## the benchmarks' other real image sets (digits, textures) as image folders under outputs/datasets
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[bench]"
	$(PY) benchmarks/datasets.py --root outputs/datasets

bench-auto: bench-datasets ## strategy=auto's regret and cost against every candidate at full length (hours on CPU; resumable): $(ARGS)
	$(PY) benchmarks/bench_auto.py $(ARGS)

bench-plan: bench-datasets ## the plan's forecasts against the accuracy really reached, and its ranking against random labels (probe parts: minutes once the features are cached; resumable): $(ARGS)
	$(PY) benchmarks/bench_plan.py $(ARGS)

bench-audit: bench-datasets ## the label audit on 5% / 10% flipped labels: recall of the flips, test accuracy clean / noisy / flagged left out (hours on CPU; resumable): $(ARGS)
	$(PY) benchmarks/bench_audit.py $(ARGS)

bench-unknown: bench-datasets ## 'unknown' inputs: models on Fashion-MNIST, digits, textures shown the others' test images: AUROC, share accepted at the threshold (minutes on CPU; resumable): $(ARGS)
	$(PY) benchmarks/bench_unknown.py $(ARGS)

bench-export: ## PyTorch fp32, ONNX fp32 and ONNX int8 side by side: images/s at batch 1 and 32, test accuracy (the newest main-job run, or ARGS="--ckpt <file>")
	$(PY) benchmarks/bench_export.py $(ARGS)

bench-cache: ## cached vs uncached feature_extraction (Fashion-MNIST, EfficientNet-Lite0, 20 epochs), side by side
	$(PY) benchmarks/bench_cache.py $(ARGS)

clean-cache: ## remove the feature cache (cache.dir: $$TLEXP_CACHE_DIR or ~/.cache/tlexp/features)
	rm -rf "$${TLEXP_CACHE_DIR:-$$HOME/.cache/tlexp/features}"

lint: ## ruff
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

docs: ## build the docs site (strict)
	$(PY) docs/gen_config_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean: ## remove build and test debris (keeps outputs/ and .venv)
	rm -rf build dist site src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
