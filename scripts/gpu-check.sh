#!/usr/bin/env bash
# gpu-check.sh: every GPU check of densenet-zoo in one go, on a machine with an NVIDIA GPU, a
# CUDA 13 driver and PyTorch from its cu13 wheels, and no Rust toolchain: the binary is built
# elsewhere (README, "Building for an NVIDIA GPU") and copied here with this repository.
#
# Usage:  scripts/gpu-check.sh BINARY [FASHION_MNIST_DIR]
#   1. parity: the PyTorch fixtures on the GPU against the CPU and PyTorch (logits, training-mode
#      outputs, running statistics, every gradient), 1e-4 relative;
#   2. speed and peak GPU memory next to PyTorch eager on the same card: the book's net training
#      at 96x96 batch 256, DenseNet-121 inference at batch 1 and 64 and a training step at 64;
#   3. with FASHION_MNIST_DIR (the four IDX files): the book's 10-epoch run at 96x96, timed.
# About 5 minutes without step 3 on an H100. Exits non-zero at the first failed step.
set -euo pipefail

BIN=$(realpath "${1:?usage: scripts/gpu-check.sh BINARY [FASHION_MNIST_DIR]}")
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

# The CUDA libraries come with PyTorch's wheels; the driver's libcuda is already on the path.
SP=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib:$SP/nvidia/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$BIN" | grep 'not found'; then
  echo "gpu-check: the binary's libraries above are missing" >&2
  exit 1
fi
"$BIN" --version

echo "== 1. parity on the GPU"
"$BIN" check-device --device cuda

echo "== 2. speed and GPU memory next to PyTorch eager"
"$PY" benches/side_by_side.py --device cuda --binary "$BIN" --iters 10 --warmup 3

if [ -n "${2:-}" ]; then
  echo "== 3. the book's run: Fashion-MNIST at 96x96, 10 epochs, batch 256"
  out=$(mktemp -d)
  start=$(date +%s)
  "$BIN" train --variant d2l --data "$2" --image-size 96 --epochs 10 --device cuda --out "$out" --seed 0
  echo "wall: $(( $(date +%s) - start )) s (the book: 330 s)"
  tail -n 1 "$out/metrics.jsonl"
fi
