#!/usr/bin/env bash
# The Ames housing data (De Cock 2011: 2,930 houses sold in Ames, Iowa, 2006-2010; the source
# of Kaggle's House Prices) as a CSV file, from Debian's r-cran-modeldata (MIT licence), whose
# data frame `ames` is read with R and written with a header row, one house per line, the
# target `Sale_Price` in dollars.
#
#   sudo apt-get install --no-install-recommends r-cran-modeldata   # pulls in r-base-core
#   scripts/ames-to-csv.sh data/ames.csv
set -euo pipefail
OUT=${1:-data/ames.csv}
command -v Rscript > /dev/null || {
  echo "Rscript not found: apt-get install --no-install-recommends r-cran-modeldata" >&2
  exit 1
}
mkdir -p "$(dirname "$OUT")"
TMP="$OUT.tmp-$$"
Rscript -e 'data(ames, package = "modeldata"); args <- commandArgs(TRUE);
  write.csv(ames, args[1], row.names = FALSE, na = "")' "$TMP"
mv "$TMP" "$OUT"
echo "$OUT: $(($(wc -l < "$OUT") - 1)) houses, $(head -1 "$OUT" | tr ',' '\n' | wc -l) columns" >&2
