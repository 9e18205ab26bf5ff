#!/usr/bin/env python3
"""Writes weights/examples/: the first Fashion-MNIST test image of each class, as 28x28 PNG.

Standard library only. Reads Debian's dataset-fashion-mnist files (MIT, (c) Zalando SE).
    python3 weights/make_examples.py
"""
import gzip
import os
import struct
import zlib

SRC = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")
CLASSES = ["t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def png_gray(width, height, pixels):
    rows = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main():
    images = gzip.open(os.path.join(SRC, "t10k-images-idx3-ubyte.gz")).read()[16:]
    labels = gzip.open(os.path.join(SRC, "t10k-labels-idx1-ubyte.gz")).read()[8:]
    os.makedirs(OUT, exist_ok=True)
    seen = set()
    for i, label in enumerate(labels):
        if label in seen:
            continue
        seen.add(label)
        with open(os.path.join(OUT, f"t10k-{i:05d}-{CLASSES[label]}.png"), "wb") as f:
            f.write(png_gray(28, 28, images[i * 784:(i + 1) * 784]))
        if len(seen) == 10:
            break


if __name__ == "__main__":
    main()
