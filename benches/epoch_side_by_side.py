"""The whole first epoch of the book's Fashion-MNIST run, densenet-zoo against a PyTorch script
that does the same, each timed as a whole process (start-up, data, training, evaluation and the
checkpoint write), on the same machine.

Both sides: the book's net (Dive into Deep Learning 8.7, `make_fixtures.book_densenet`), its
recipe (SGD, lr 0.1, no momentum or weight decay, batch 256, reshuffled each epoch), the 60,000
training images resized from 28x28 to 32x32, then the 10,000 test images evaluated, then the
weights written. PyTorch reads the files with torchvision's `FashionMNIST` (as the book's
`d2l.load_data_fashion_mnist(256, resize=32)` does, `--torch-workers` loader processes, the
book's 4 by default) and writes them with `torch.save`; densenet-zoo runs `densenet-zoo train
--variant d2l --image-size 32 --epochs 1`. The pair runs `--rounds` times interleaved, and each
side keeps its best (shortest) wall time.

    /opt/torchenv/bin/python benches/epoch_side_by_side.py     # Debian's dataset-fashion-mnist
"""

import argparse
import gzip
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def torch_epoch(root: pathlib.Path, workers: int, out: pathlib.Path):
    """The PyTorch side, in its own process: one epoch, evaluation, torch.save."""
    import torch
    import torchvision
    from torchvision import transforms
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_fixtures import book_densenet

    torch.manual_seed(0)
    trans = transforms.Compose([transforms.Resize(32), transforms.ToTensor()])
    train = torchvision.datasets.FashionMNIST(root=str(root), train=True, transform=trans, download=False)
    test = torchvision.datasets.FashionMNIST(root=str(root), train=False, transform=trans, download=False)
    train_iter = torch.utils.data.DataLoader(train, 256, shuffle=True, num_workers=workers)
    test_iter = torch.utils.data.DataLoader(test, 256, shuffle=False, num_workers=workers)
    net = book_densenet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = torch.nn.CrossEntropyLoss()
    net.train()
    for x, y in train_iter:
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in test_iter:
            correct += (net(x).argmax(1) == y).sum().item()
    torch.save(net.state_dict(), out / "last.pt")
    print(f"test accuracy {correct / len(test):.3f}")


def torchvision_root(data: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
    """A folder laid out as torchvision's FashionMNIST reads it (FashionMNIST/raw/, unpacked)."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        with gzip.open(data / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return scratch


def timed(command) -> float:
    """The command's wall time; its last line of output is shown, to see that it trained."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{command[0]} failed:\n{result.stderr[-2000:]}")
    lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
    print(f"  {pathlib.Path(command[0]).name}: {lines[-1] if lines else '(no output)'}")
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--binary", default=str(ROOT / "target" / "release" / "densenet-zoo"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--torch-workers", type=int, default=4)
    p.add_argument("--torch-run", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_run:
        torch_epoch(pathlib.Path(args.torch_run[0]), args.torch_workers, pathlib.Path(args.torch_run[1]))
        return
    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        root = torchvision_root(args.data, scratch / "torchvision")
        best = {"densenet-zoo": float("inf"), "torch": float("inf")}
        for r in range(args.rounds):
            out = scratch / f"zoo-{r}"
            ours = [args.binary, "train", "--variant", "d2l", "--data", str(args.data), "--image-size", "32",
                    "--epochs", "1", "--seed", "0", "--out", str(out)]
            best["densenet-zoo"] = min(best["densenet-zoo"], timed(ours))
            out = scratch / f"torch-{r}"
            out.mkdir()
            theirs = [sys.executable, __file__, "--torch-workers", str(args.torch_workers),
                      "--torch-run", str(root), str(out)]
            best["torch"] = min(best["torch"], timed(theirs))
            print(f"round {r + 1}: densenet-zoo {best['densenet-zoo']:.1f} s, PyTorch {best['torch']:.1f} s (best so far)")
        ratio = best["torch"] / best["densenet-zoo"]
        print("| row | PyTorch | densenet-zoo | ratio |")
        print("|---|---|---|---|")
        print(f"| the book's Fashion-MNIST run at 32x32, first epoch, wall time (s) | {best['torch']:.1f} | "
              f"{best['densenet-zoo']:.1f} | {ratio:.2f}× PyTorch |")


if __name__ == "__main__":
    main()
