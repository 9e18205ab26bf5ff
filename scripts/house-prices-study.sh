#!/usr/bin/env bash
# The book's exercise 5 (DenseNet chapter): dense connectivity for the house-price MLP.
# 5-fold log-RMSE on the Ames houses of three nets with one recipe (variants/*.json: Adam,
# lr 0.001, batch 64, 100 epochs): dense-mlp, plain-mlp (the same parameter count) and
# linear-regression (the book's baseline); the same folds and weights seed per run, three seeds.
# Then scripts/summarise_house_prices.py tabulates them.
#
#   scripts/ames-to-csv.sh data/ames.csv     # Debian's r-cran-modeldata
#   cargo build --release
#   scripts/house-prices-study.sh            # 9 runs, a few minutes each on 2 cores
#
# Environment: BIN (the binary), DATA (data/ames.csv), OUT (docs/house-prices: each run's
# cross_validation.json is committed, its model.safetensors ignored), SEEDS ("0 1 2"),
# VARIANTS. Finished runs are skipped, so a killed study continues where it stopped.
set -euo pipefail
BIN=${BIN:-target/release/densenet-zoo}
DATA=${DATA:-data/ames.csv}
OUT=${OUT:-docs/house-prices}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"dense-mlp plain-mlp linear-regression"}

for seed in $SEEDS; do
  for variant in $VARIANTS; do
    dir="$OUT/$variant-seed$seed"
    if [ -f "$dir/cross_validation.json" ]; then
      echo "$dir: done"
      continue
    fi
    "$BIN" train --variant "$variant" --data "$DATA" --target Sale_Price --folds 5 \
      --seed "$seed" --out "$dir"
  done
done
python3 "$(dirname "$0")/summarise_house_prices.py" "$OUT"
