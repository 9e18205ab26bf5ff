#!/usr/bin/env bash
# The book's exercise 1 (DenseNet chapter): why average pooling in the transitions, not max?
# Trains the book's net on Fashion-MNIST at 32x32 with the book's recipe (the d2l variant's:
# SGD, lr 0.1, batch 256) for 10 epochs, three seeds, with each pooling, then summarises the
# runs (mean and spread of the final and best test accuracy and of the training loss, and the
# curves) with scripts/summarise_pooling_study.py.
#
#   cargo build --release
#   scripts/transition-pooling-study.sh            # about 6 runs x 10 epochs
#
# Environment: BIN (the binary), OUT (docs/pooling-study: each run's metrics are committed,
# its checkpoints ignored), SEEDS ("0 1 2"), EPOCHS (10), DATA (the
# data set folder; Debian's dataset-fashion-mnist by default). A killed study resumes where it
# stopped: finished runs are skipped, an unfinished one resumes from its last checkpoint.
set -euo pipefail
BIN=${BIN:-target/release/densenet-zoo}
OUT=${OUT:-docs/pooling-study}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-10}
DATA=${DATA:-}

for seed in $SEEDS; do
  for pool in avg max; do
    dir="$OUT/$pool-seed$seed"
    done_epochs=0
    if [ -f "$dir/metrics.jsonl" ]; then done_epochs=$(wc -l < "$dir/metrics.jsonl"); fi
    if [ "$done_epochs" -ge "$EPOCHS" ]; then
      echo "$dir: done ($done_epochs epochs)"
      continue
    fi
    if [ -f "$dir/last.safetensors" ]; then
      "$BIN" train --resume --epochs "$EPOCHS" --out "$dir"
    else
      "$BIN" train --variant d2l --image-size 32 --epochs "$EPOCHS" --seed "$seed" \
        --transition-pool "$pool" ${DATA:+--data "$DATA"} --out "$dir"
    fi
  done
done
python3 "$(dirname "$0")/summarise_pooling_study.py" "$OUT"
