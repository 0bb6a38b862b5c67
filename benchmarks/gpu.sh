#!/usr/bin/env bash
# GPU recipe: ResNet-50 at 224 px, bf16-mixed, channels_last, batch 256, device-side augmentation,
# without and with torch.compile; each writes a JSON under benchmarks/results/.
#   bash benchmarks/gpu.sh            (needs a CUDA GPU, and Fashion-MNIST: make fashion-mnist)
# Env: PY (default .venv/bin/python), WORKERS (loader workers; default auto: up to 8 per GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: this recipe is for a GPU machine')"
common=(--models resnet50 --image-size 224 --batch-size 256 --precision bf16-mixed --accelerator gpu
        --channels-last --augment-on device --num-workers "${WORKERS:-auto}"
        --train-images 7680 --test-images 2560 --epochs 3 --bound-steps 20 --repeats 2)
"$PY" benchmarks/throughput.py "${common[@]}" --json benchmarks/results/gpu_resnet50.json
"$PY" benchmarks/throughput.py "${common[@]}" --compile --json benchmarks/results/gpu_resnet50_compile.json
