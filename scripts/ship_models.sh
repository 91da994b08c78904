#!/usr/bin/env bash
# Re-make the shipped models with the commands README.md ("Shipped models") documents: one torch thread,
# seeded, so the same software gives the same weights. Writes runs/ship/ (or $1); compare with
# `flowmap eval`, then copy gmm8, digits, digits_uncond and mnist .safetensors into flowmap/assets/ to ship
# them. `bash scripts/ship_models.sh runs/ship mnist` makes only mnist: its two stages train data-parallel
# over NPROC processes of one thread each (default 2, `torchrun --standalone`; about 2.1 h on this 2-vCPU
# box). The weights depend on NPROC (each rank draws its own part of the batch).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
FLOWMAP=${FLOWMAP:-.venv/bin/flowmap}
PYTHON=${PYTHON:-.venv/bin/python}
NPROC=${NPROC:-2}
OUT=${1:-runs/ship}
ONLY=${2:-all}

train_mnist() {  # one stage of the mnist recipe, data-parallel over NPROC one-thread processes
  if [ "$NPROC" -gt 1 ]; then
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m flowmap train "$@"
  else
    $FLOWMAP train "$@"
  fi
}

mnist() {
  # mnist: multi-resolution U-Net (preset: width 32, mults 1,2,4, bf16 autocast, batch 128): an fm teacher,
  train_mnist --data mnist --method fm --steps 4000 --lr 6e-4 --ckpt-every 500 --out "$OUT/mnist_fm.safetensors"
  # then distil the served jumps (--time-dist grid: segments of 1-4 step schedules) from its ODE (Adams-Bashforth
  # steps no longer than 1/16, guidance 1.25), starting from its weights
  train_mnist --data mnist --method distill --teacher "$OUT/mnist_fm.safetensors" \
    --init "$OUT/mnist_fm.safetensors" --time-dist grid --diagonal 0.1 --guidance 1.25 --batch-size 64 \
    --steps 2500 --lr 3e-4 --warmup 50 --ema 0.998 --ckpt-every 100 --teacher-dt 0.0625 --teacher-solver ab2 \
    --teacher-min-steps 8 --out "$OUT/mnist.safetensors"
  $FLOWMAP eval --model "$OUT/mnist.safetensors" --steps 1,2,4 --ode-steps 64
}
if [ "$ONLY" = mnist ]; then
  mnist
  exit 0
fi

$FLOWMAP train --data gmm8 --method fm --steps 6000 --ema 0.995 --out "$OUT/gmm8_fm.safetensors"
$FLOWMAP train --data gmm8 --method distill --teacher "$OUT/gmm8_fm.safetensors" --steps 8000 \
  --time-dist uniform --out "$OUT/gmm8.safetensors"
# digits: esd, then esdt from its weights (terminal self-consistency: good at 1 step, better with steps)
$FLOWMAP train --data digits --method esd --steps 8000 --ckpt-every 1000 --out "$OUT/digits_esd.safetensors"
$FLOWMAP train --data digits --method esdt --init "$OUT/digits_esd.safetensors" --steps 2500 --lr 2e-4 \
  --ema 0.998 --guidance 1.5 --warmup 50 --ckpt-every 1000 --out "$OUT/digits.safetensors"
# digits_uncond: the digits recipe without class labels and at half the steps, for reward steering (docs/steering.md)
$FLOWMAP train --data digits --method esd --labels drop --steps 4000 --ckpt-every 500 \
  --out "$OUT/digits_uncond.safetensors"

$FLOWMAP eval --model "$OUT/gmm8.safetensors" --steps 1,2,4
$FLOWMAP eval --model "$OUT/digits.safetensors" --steps 1,2,4
$FLOWMAP eval --model "$OUT/digits_uncond.safetensors" --steps 1,2,4 --per-class 1000  # unconditional: 1000 samples
mnist
