#!/usr/bin/env python3
"""Makes a folder of JPEG photos at ImageNet's typical size for the data-loader benchmark.

From the two CC0 photos in tests/fixtures/images (scikit-image's chelsea and coffee), it cuts
crops of 55-100 % of the area at random places, flips half of them, and resizes each to 500x375
(or 375x500, one in five), saved as JPEG quality 90: distinct files of the size and format of
ImageNet's, in torchvision's ImageFolder layout:

    DIR/train/{cat,coffee}/NNNN.jpg   (COUNT files in all)
    DIR/val/{cat,coffee}/NNNN.jpg     (8 files)

Usage: python3 benches/make_photo_folder.py DIR [COUNT]   (needs Pillow; COUNT defaults to 400)
"""
import random
import sys
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"cat": "chelsea.png", "coffee": "coffee.png"}


def make(out: Path, split: str, count: int, rng: random.Random):
    for k in range(count):
        cls = ["cat", "coffee"][k % 2]
        photo = Image.open(ROOT / "tests/fixtures/images" / PHOTOS[cls]).convert("RGB")
        w, h = photo.size
        frac = rng.uniform(0.55, 1.0) ** 0.5
        cw, ch = int(w * frac), int(h * frac)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        size = (375, 500) if k % 5 == 4 else (500, 375)
        img = img.resize(size, Image.BILINEAR)
        folder = out / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{k:04d}.jpg", quality=90)


def main():
    out = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    rng = random.Random(0)
    make(out, "train", count, rng)
    make(out, "val", 8, rng)
    print(f"{count} training photos in {out}/train")


if __name__ == "__main__":
    main()
