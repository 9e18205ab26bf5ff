"""densenet-zoo next to PyTorch (eager) and ONNX Runtime, on the same machine, in one run.

Each measurement runs in a fresh process, so that its peak memory is its own: PyTorch and ONNX
Runtime through this script's worker mode, densenet-zoo through `densenet-zoo bench --json`.
All use the same protocol: random-init models, `--warmup` untimed iterations, then `--iters`
timed ones; the median examples/s is reported with the minimum and maximum. Each row runs
`--rounds` times, interleaved (densenet-zoo, peers, densenet-zoo, peers, ...), and each side
keeps its best median, since single runs on a shared machine move by tens of percent. The CPU
run ends with the rows as a Markdown table (the README's).

    python3 -m venv /opt/torchenv
    /opt/torchenv/bin/pip install torch==2.15.0 torchvision==0.29.2 onnxruntime onnx onnxscript
    cargo build --release
    /opt/torchenv/bin/python benches/side_by_side.py                 # CPU rows
    /opt/torchenv/bin/python benches/side_by_side.py --memory        # DenseNet-121 training memory rows
    /opt/torchenv/bin/python benches/side_by_side.py --device cuda --binary ./densenet-zoo   # GPU rows

Ratios are densenet-zoo's examples/s over the peer's (> 1: densenet-zoo is faster) and, for
memory, the peer's peak over densenet-zoo's (> 1: densenet-zoo needs less). The memory rows run
both training modes of each: densenet-zoo's `--memory-efficient` against torchvision's
`memory_efficient=True`, and the default against the default.
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (row name, variant, mode, batch, size, peers); densenet-zoo runs as `ZOO` and is compared
# with every peer.
ZOO = {"densenet-zoo": ([], None)}
CPU_ROWS = [
    ("DenseNet-121 inference, batch 1, 224", "121", "infer", 1, 224, ["torch", "ort"]),
    ("DenseNet-121 inference, batch 16, 224", "121", "infer", 16, 224, ["torch", "ort"]),
    ("DenseNet-121 training step, batch 16, 224", "121", "train", 16, 224, ["torch"]),
    ("book net training, 96x96, batch 64", "d2l", "train", 64, 96, ["torch"]),
    ("book net training, 96x96, batch 256", "d2l", "train", 256, 96, ["torch"]),
    ("book net training, 32x32, batch 256", "d2l", "train", 256, 32, ["torch"]),
    ("DenseNet-BC-100 (k=12) training, 32x32, batch 64", "bc-100-12", "train", 64, 32, ["torch"]),
] + [
    # Reported without a goal: the other ImageNet variants at inference.
    (f"DenseNet-{v} inference, batch {b}, 224", v, "infer", b, 224, ["ort"])
    for v in ["169", "201", "161", "264"] for b in [1, 16]
]
MEMORY_ROWS = [
    ("DenseNet-121 training step, batch 16, 224", "121", "train", 16, 224, ["torch", "torch-memory-efficient"]),
    ("DenseNet-121 training step, batch 32, 224", "121", "train", 32, 224, ["torch", "torch-memory-efficient"]),
]
# The memory rows run densenet-zoo in both modes, each compared with PyTorch's same mode.
ZOO_MEMORY = {
    "densenet-zoo": ([], "torch"),
    "densenet-zoo-memory-efficient": (["--memory-efficient"], "torch-memory-efficient"),
}
CUDA_ROWS = [
    ("book net training, 96x96, batch 256", "d2l", "train", 256, 96, ["torch"]),
    ("DenseNet-121 inference, batch 1, 224", "121", "infer", 1, 224, ["torch"]),
    ("DenseNet-121 inference, batch 64, 224", "121", "infer", 64, 224, ["torch"]),
    ("DenseNet-121 training step, batch 64, 224", "121", "train", 64, 224, ["torch"]),
]


# ---------------------------------------------------------------- worker side (one measurement)

def torch_model(variant, memory_efficient):
    import torchvision
    if variant in ("121", "169", "201", "161"):
        build = getattr(torchvision.models, f"densenet{variant}")
        return build(memory_efficient=memory_efficient), 3, 1000
    if variant == "264":  # the paper's Table 1; torchvision has no builder for it
        return torchvision.models.DenseNet(32, (6, 12, 64, 48), 64, memory_efficient=memory_efficient), 3, 1000
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    if variant == "bc-100-12":  # the paper's CIFAR stem, from torchvision's own parts
        from make_fixtures import CifarDenseNet
        return CifarDenseNet(12, (16, 16, 16), 24, 4, 10), 3, 10
    from make_fixtures import book_densenet  # the book's own nn.Sequential
    return book_densenet(), 1, 10


def worker_torch(cfg):
    import torch
    device = torch.device(cfg["device"])
    model, channels, classes = torch_model(cfg["variant"], cfg["peer"] == "torch-memory-efficient")
    model = model.to(device)
    x = torch.randn(cfg["batch"], channels, cfg["size"], cfg["size"], device=device)
    y = torch.randint(0, classes, (cfg["batch"],), device=device)
    if cfg["mode"] == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    return timed(step, sync, cfg)


def worker_ort(cfg):
    import onnxruntime as ort
    import numpy as np
    import torch
    model, channels, _ = torch_model(cfg["variant"], False)
    model.eval()
    path = pathlib.Path(tempfile.mkdtemp()) / "model.onnx"
    x = torch.randn(cfg["batch"], channels, cfg["size"], cfg["size"])
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy().astype(np.float32)}
    return timed(lambda: session.run(None, feed), lambda: None, cfg)


def timed(step, sync, cfg):
    for _ in range(cfg["warmup"]):
        step()
    sync()
    rates = []
    for _ in range(cfg["iters"]):
        start = time.perf_counter()
        step()
        sync()
        rates.append(cfg["batch"] / (time.perf_counter() - start))
    # The median as `densenet-zoo bench` takes it: of the times, the upper middle one for an
    # even count (the lower middle rate), so that both sides use the same rule.
    return {
        "examples_per_s": sorted(rates, reverse=True)[len(rates) // 2],
        "examples_per_s_min": min(rates),
        "examples_per_s_max": max(rates),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------- driver side

class GpuMemory:
    """Samples a process's GPU memory (nvidia-smi, every 50 ms) while it runs; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, 0, False
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def poll(self):
        while not self.done:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, used = (v.strip() for v in line.split(","))
                if pid == str(self.pid):
                    self.peak = max(self.peak, int(used))
            time.sleep(0.05)

    def stop(self):
        self.done = True
        self.thread.join()
        return self.peak


def measure(command, gpu):
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = GpuMemory(proc.pid) if gpu else None
    out, err = proc.communicate()
    peak_gpu = sampler.stop() if sampler else None
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    if gpu:
        result["peak_gpu_mib"] = peak_gpu
    return result


def best(kept, new):
    """The run with the higher median examples/s (an error only when both are)."""
    if kept is None or "error" in kept:
        return new
    if "error" in new or new["examples_per_s"] <= kept["examples_per_s"]:
        return kept
    return new


def markdown(results, zoo):
    """The rows as the README's table: each side's examples/s and densenet-zoo's ratios."""
    names = {"torch": "PyTorch", "ort": "ONNX Runtime"}
    lines = ["| row | PyTorch | ONNX Runtime | densenet-zoo | ratio |", "|---|---|---|---|---|"]
    for row in results:
        ours = row[zoo]
        cells, ratios = [], []
        for peer in ["torch", "ort"]:
            r = row.get(peer)
            if r is None or "error" in r:
                cells.append("–" if r is None else "error")
                continue
            cells.append(f"{r['examples_per_s']:.2f}")
            if "error" not in ours:
                ratios.append(f"{ours['examples_per_s'] / r['examples_per_s']:.2f}× {names[peer]}")
        mine = "error" if "error" in ours else f"{ours['examples_per_s']:.2f}"
        lines.append(f"| {row['row']} | {cells[0]} | {cells[1]} | {mine} | {', '.join(ratios)} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every side runs (default: cpu)")
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "densenet-zoo"),
                   help="the densenet-zoo binary (default: target/release/densenet-zoo; cargo build --release)")
    p.add_argument("--memory", action="store_true", help="the DenseNet-121 training memory rows instead")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per measurement (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before them (default: 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved runs of each side per row; the best median is kept (default: 2)")
    p.add_argument("--only", help="run only the row of this name, or else the rows whose name contains it")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        cfg = json.loads(args.worker)
        result = worker_ort(cfg) if cfg["peer"] == "ort" else worker_torch(cfg)
        print(json.dumps(result))
        return

    if args.iters < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--iters and --rounds must be at least 1, --warmup at least 0")
    if not pathlib.Path(args.binary).is_file():
        p.error(f"{args.binary} does not exist: build it first (cargo build --release) or pass --binary")
    import torch
    rows = CUDA_ROWS if args.device == "cuda" else MEMORY_ROWS if args.memory else CPU_ROWS
    if args.only:
        exact = [r for r in rows if r[0] == args.only]
        matching = exact or [r for r in rows if args.only in r[0]]
        if not matching:
            p.error(f"no row matches --only {args.only!r}; the rows:\n  " + "\n  ".join(r[0] for r in rows))
        rows = matching
    gpu = args.device == "cuda"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
          + (f", {torch.cuda.get_device_name(0)}" if gpu else ""))
    print(f"# {subprocess.run([args.binary, '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"{args.warmup} warm-up + {args.iters} timed iterations, median examples/s, "
          f"best of {args.rounds} interleaved runs")
    results = []
    for name, variant, mode, batch, size, peers in rows:
        cfg = {"variant": variant, "mode": mode, "batch": batch, "size": size, "device": args.device,
               "iters": args.iters, "warmup": args.warmup}
        row = {"row": name}
        zoo = ZOO_MEMORY if args.memory and not gpu else ZOO
        commands = {label: [args.binary, "bench", "--variant", variant, "--mode", mode, "--batch", str(batch),
                            "--size", str(size), "--iters", str(args.iters), "--warmup", str(args.warmup),
                            "--device", args.device, "--json", *extra]
                    for label, (extra, _) in zoo.items()}
        for peer in peers:
            commands[peer] = [sys.executable, __file__, "--worker", json.dumps({**cfg, "peer": peer})]
        for _ in range(args.rounds):
            for label, command in commands.items():
                row[label] = best(row.get(label), measure(command, gpu))
        results.append(row)
        key = "peak_gpu_mib" if gpu else "peak_rss_mib"
        lines = []
        for label in peers + list(zoo):
            r = row[label]
            if "error" in r:
                lines.append(f"{label}: error ({r['error']})")
                continue
            memory = f"{r[key]:.0f} MiB GPU" if gpu else f"{r[key]:.0f} MiB"
            lines.append(f"{label}: {r['examples_per_s']:.2f}/s "
                         f"[{r['examples_per_s_min']:.2f}-{r['examples_per_s_max']:.2f}] {memory}")
        for label, (_, against) in zoo.items():
            ours = row[label]
            for peer in [against] if against else peers:
                r = row[peer]
                if "error" in r or "error" in ours:
                    continue
                lines.append(f"{label} vs {peer}: {ours['examples_per_s'] / r['examples_per_s']:.2f}x speed, "
                             f"{r[key] / max(ours[key], 1e-9):.2f}x memory")
        if len(zoo) == 2 and not any("error" in row[label] for label in zoo):
            plain, efficient = (row[label] for label in zoo)
            lines.append(f"memory-efficient vs default: {efficient['examples_per_s'] / plain['examples_per_s']:.2f}x speed, "
                         f"{efficient[key] / plain[key]:.2f}x memory")
        print(f"{name}\n  " + "\n  ".join(lines), flush=True)
    if not args.memory and not gpu:
        print(markdown(results, "densenet-zoo"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
