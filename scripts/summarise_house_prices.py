#!/usr/bin/env python3
"""Tabulates scripts/house-prices-study.sh's runs: per net, its parameters and the 5-fold
log-RMSE on held-out houses, as the mean and sample standard deviation over seeds of each run's
mean over folds, and over every (seed, fold) score; and each net's score less dense-mlp's on
the same fold (the same held-out houses), paired. Markdown on stdout, for the README.

    python3 scripts/summarise_house_prices.py [docs/house-prices]
"""
import json
import statistics
import sys
from pathlib import Path


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/house-prices")
    runs = {}
    for path in sorted(root.glob("*-seed*/cross_validation.json")):
        report = json.loads(path.read_text())
        runs.setdefault(report["variant"], []).append(report)
    if not runs:
        sys.exit(f"no runs in {root}")
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")
    # Each (seed, fold) score of dense-mlp, to pair with the other nets' on the same fold.
    dense = {(r["seed"], f["fold"]): f["valid_log_rmse"] for r in runs.get("dense-mlp", []) for f in r["folds"]}
    print("| net | parameters | seeds | 5-fold log-RMSE, mean ± sd over seeds | over all folds "
          "| this − dense-mlp, same fold | train log-RMSE |")
    print("|---|---|---|---|---|---|---|")
    for variant in ["dense-mlp", "plain-mlp", "linear-regression"] + sorted(runs):
        reports = runs.pop(variant, None)
        if not reports:
            continue
        means = [r["log_rmse_mean"] for r in reports]
        folds = [f["valid_log_rmse"] for r in reports for f in r["folds"]]
        train = [f["train_log_rmse"] for r in reports for f in r["folds"]]
        paired = [f["valid_log_rmse"] - dense[(r["seed"], f["fold"])]
                  for r in reports for f in r["folds"] if (r["seed"], f["fold"]) in dense]
        versus = "—" if variant == "dense-mlp" or not paired else \
            f"{statistics.mean(paired):+.4f} ± {sd(paired):.4f} ({sum(d > 0 for d in paired)}/{len(paired)} worse)"
        print(
            f"| {variant} | {reports[0]['parameters']:,} | {len(reports)} "
            f"| {statistics.mean(means):.4f} ± {sd(means):.4f} "
            f"| {statistics.mean(folds):.4f} ± {sd(folds):.4f} "
            f"| {versus} | {statistics.mean(train):.4f} |"
        )


if __name__ == "__main__":
    main()
