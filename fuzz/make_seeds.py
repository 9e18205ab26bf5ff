"""Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/: small valid inputs
of every format the target reads, from which libFuzzer mutates.

Run with torch, safetensors, numpy and pillow (the fixtures' virtual environment):
    /opt/torchenv/bin/python fuzz/make_seeds.py
"""

import gzip
import io
import json
import pathlib
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save as save_safetensors

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

# A DenseNet small enough that its whole checkpoint is a few hundred bytes.
TINY = {
    "name": "fuzz_tiny",
    "in_channels": 1,
    "num_classes": 2,
    "stem": "imagenet",
    "stem_features": 2,
    "growth_rate": 1,
    "block_config": [1],
    "layer": {"kind": "plain"},
    "compression": 0.5,
    "conv_bias": False,
    "drop_rate": 0.0,
    "input_size": 32,
    "preprocess": {"resize": 32, "crop": 32, "mean": [0.5], "std": [0.25]},
}


def tiny_state():
    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    state = {"features.conv0.weight": f(2, 1, 7, 7)}
    for prefix, c in [("features.norm0", 2), ("features.denseblock1.denselayer1.norm1", 2), ("features.norm5", 3)]:
        state[f"{prefix}.weight"] = f(c)
        state[f"{prefix}.bias"] = f(c)
        state[f"{prefix}.running_mean"] = f(c)
        state[f"{prefix}.running_var"] = np.abs(f(c)) + 0.5
        state[f"{prefix}.num_batches_tracked"] = np.array(3, dtype=np.int64)
    state["features.denseblock1.denselayer1.conv1.weight"] = f(1, 2, 3, 3)
    state["classifier.weight"] = f(2, 3)
    state["classifier.bias"] = f(2)
    return state


def write(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    state = tiny_state()
    metadata = {"format": "pt", "densenet_zoo.spec": json.dumps(TINY)}
    write("checkpoint", "tiny-with-spec.safetensors", save_safetensors(state, metadata=metadata))
    write("checkpoint", "tiny-no-metadata.safetensors", save_safetensors(state))
    legacy = {k.replace("denselayer1.norm1", "denselayer1.norm.1"): v for k, v in state.items()}
    write("checkpoint", "tiny-legacy-names.safetensors", save_safetensors(legacy, metadata=metadata))

    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    for name, obj in [("tiny.pth", tensors), ("tiny-nested.pth", {"state_dict": tensors, "epoch": 3})]:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        write("pth", name, buffer.getvalue())
    # PyTorch's legacy stream (torch.save before 1.6, or _use_new_zipfile_serialization=False):
    # torchvision's legacy names, a nested dict, float16, and tensors sharing one storage.
    flat = torch.cat([t.flatten() for t in tensors.values() if t.is_floating_point()])
    shared, at = {}, 0
    for k, t in tensors.items():
        if t.is_floating_point():
            shared[k] = flat[at:at + t.numel()].view(t.shape)
            at += t.numel()
        else:
            shared[k] = t
    legacy_tensors = {k: torch.from_numpy(v) for k, v in legacy.items()}
    for name, obj in [
        ("legacy-names.pth", legacy_tensors),
        ("legacy-nested.pth", {"state_dict": tensors, "epoch": 3}),
        ("legacy-half.pth", {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}),
        ("legacy-shared.pth", shared),
    ]:
        buffer = io.BytesIO()
        torch.save(obj, buffer, _use_new_zipfile_serialization=False)
        write("pth_legacy", name, buffer.getvalue())

    for name in ["d2l", "densenet121", "densenet161", "bc-100-12"]:
        write("spec", f"{name}.json", (ROOT / "variants" / f"{name}.json").read_bytes())
    write("spec", "tiny.json", json.dumps(TINY).encode())

    images = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3]) + bytes(range(18))
    labels = bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 1])
    write("idx", "images-idx3-ubyte", images)
    write("idx", "labels-idx1-ubyte", labels)
    write("idx", "images-idx3-ubyte.gz", gzip.compress(images, mtime=0))

    pixels = bytes((i * 7) % 256 for i in range(3 * 32 * 32))
    write("cifar", "cifar10-record.bin", bytes([3]) + pixels)
    write("cifar", "cifar100-record.bin", bytes([2, 41]) + pixels)

    gradient = np.add.outer(np.arange(8), np.arange(8)).astype(np.uint8) * 16
    rgb = Image.fromarray(np.stack([gradient, gradient.T, 255 - gradient], axis=-1))
    for name, image, fmt in [
        ("rgb.png", rgb, "PNG"),
        ("gray.png", rgb.convert("L"), "PNG"),
        ("rgba.png", rgb.convert("RGBA"), "PNG"),
        ("rgb.jpg", rgb, "JPEG"),
        ("rgb.bmp", rgb, "BMP"),
        ("rgb.gif", rgb, "GIF"),
        ("rgb.webp", rgb, "WEBP"),
        ("rgb.tiff", rgb, "TIFF"),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        write("image", name, buffer.getvalue())


if __name__ == "__main__":
    main()
