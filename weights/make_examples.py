#!/usr/bin/env python3
"""Writes weights/examples/: one real Fashion-MNIST test image per class, as 28x28 PNG.

Standard library only; reads Debian's dataset-fashion-mnist files (MIT, (c) Zalando SE).
For each class it takes the first test image that the shipped model classifies correctly,
asking the built binary (`cargo build` first), and prints the images it passed over:

    python3 weights/make_examples.py [target/debug/densenet-zoo]

The model gets about 89 % of the test set right, so a few first images are wrong; the tests
then check that the embedded model still gets every shipped image right, which fails if the
weights or the preprocessing change.
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile
import struct
import zlib

SRC = "/usr/share/datasets/fashion-mnist"
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "examples")
CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def png_gray(width, height, pixels):
    rows = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "target", "debug", "densenet-zoo")
    images = gzip.open(os.path.join(SRC, "t10k-images-idx3-ubyte.gz")).read()[16:]
    labels = gzip.open(os.path.join(SRC, "t10k-labels-idx1-ubyte.gz")).read()[8:]
    candidates = tempfile.mkdtemp()
    per_class = {c: [] for c in range(10)}
    for i, label in enumerate(labels):
        if len(per_class[label]) < 5:
            name = f"t10k-{i:05d}-{CLASSES[label]}.png"
            with open(os.path.join(candidates, name), "wb") as f:
                f.write(png_gray(28, 28, images[i * 784:(i + 1) * 784]))
            per_class[label].append(name)
    result = subprocess.run([binary, "infer", candidates, "--json", "--topk", "1"], capture_output=True, text=True)
    predicted = {}
    for line in result.stdout.splitlines():
        entry = json.loads(line)
        predicted[os.path.basename(entry["path"])] = entry["top"][0]["index"]
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))
    for label, names in per_class.items():
        chosen = next(n for n in names if predicted[n] == label)
        for n in names[:names.index(chosen)]:
            print(f"passed over {n}: classified as {CLASSES[predicted[n]]}")
        os.replace(os.path.join(candidates, chosen), os.path.join(OUT, chosen))


if __name__ == "__main__":
    main()
