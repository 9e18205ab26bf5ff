#!/usr/bin/env python3
"""The training input pipeline side by side: densenet-zoo's loader against torchvision's
ImageFolder + DataLoader, on the same folder of JPEG photos, with the same recipe.

    /opt/torchenv/bin/python benches/make_photo_folder.py /tmp/photos
    /opt/torchenv/bin/python benches/data_side_by_side.py /tmp/photos [--workers 1 2] [--batch 64]

For each worker count, each side runs twice, interleaved (ours, torchvision, ours,
torchvision), each run in a fresh process; each side's best median is kept and the ratio
(ours / torchvision, images per second) printed, as a Markdown table. The recipe is
torchvision's ImageNet training transform at 224: RandomResizedCrop, RandomHorizontalFlip,
ToTensor, Normalize. Both time the gap between consecutive batches after the warmup ones.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchvision_run(data: Path, workers: int, batch: int, iters: int, warmup: int) -> float:
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.set_num_threads(1)
    tf = T.Compose([
        T.RandomResizedCrop(224),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = torchvision.datasets.ImageFolder(str(data / "train"), tf)
    needed = (iters + warmup) * batch
    indices = [i % len(ds) for i in range(needed)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, indices), batch_size=batch, shuffle=False,
        num_workers=workers, prefetch_factor=3 if workers > 0 else None,
    )
    times, last = [], time.perf_counter()
    for i, _ in enumerate(loader):
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - last)
        last = now
    return batch / statistics.median(times)


def ours_run(binary: str, data: Path, workers: int, batch: int, iters: int, warmup: int) -> float:
    out = subprocess.run(
        [binary, "bench", "--variant", "121", "--mode", "data", "--data", str(data), "--augment", "imagenet",
         "--workers", str(workers), "--batch", str(batch), "--iters", str(iters), "--warmup", str(warmup),
         "--device", "cpu", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["examples_per_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data", type=Path)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "densenet-zoo"))
    p.add_argument("--torch-run", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_run is not None:
        print(torchvision_run(a.data, a.torch_run, a.batch, a.iters, a.warmup))
        return
    print("| workers | densenet-zoo (img/s) | torchvision (img/s) | ratio |")
    print("|---|---|---|---|")
    for n in a.workers:
        ours, theirs = 0.0, 0.0
        for _ in range(2):
            ours = max(ours, ours_run(a.binary, a.data, n, a.batch, a.iters, a.warmup))
            theirs = max(theirs, float(subprocess.run(
                [sys.executable, __file__, str(a.data), "--torch-run", str(n), "--batch", str(a.batch),
                 "--iters", str(a.iters), "--warmup", str(a.warmup)],
                check=True, capture_output=True, text=True).stdout))
        print(f"| {n} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
