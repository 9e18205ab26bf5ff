#!/usr/bin/env python3
"""Parameters and multiply-adds per stage of torchvision's ResNet-50 and DenseNet-121/169/201,
for the README's answer to the book's exercise 2 (why DenseNet has fewer parameters than
ResNet). Counts come from the modules themselves (parameters) and from forward hooks on every
convolution and linear layer at 224×224 (multiply-adds); ImageNet accuracies and torchvision's
own counts from each weight enum's metadata (no download). Writes resnet_vs_densenet.json
beside itself.

    ~/.venvs/densenet-fixtures/bin/python docs/parameters/resnet_vs_densenet.py
"""
import json
import os

import torch
import torchvision
from torchvision import models


def stages(name, model):
    """(stage name, modules) in forward order."""
    if name.startswith("resnet"):
        return [
            ("stem", [model.conv1, model.bn1]),
            ("layer1", [model.layer1]),
            ("layer2", [model.layer2]),
            ("layer3", [model.layer3]),
            ("layer4", [model.layer4]),
            ("classifier", [model.fc]),
        ]
    f = model.features
    out = [("stem", [f.conv0, f.norm0])]
    blocks = [n for n, _ in f.named_children() if n.startswith("denseblock")]
    for i, b in enumerate(blocks, 1):
        mods = [getattr(f, b)]
        if hasattr(f, f"transition{i}"):
            mods.append(getattr(f, f"transition{i}"))
        if i == len(blocks):
            mods.append(f.norm5)
        out.append((f"block{i}" + (f"+transition{i}" if hasattr(f, f"transition{i}") else "+norm5"), mods))
    out.append(("classifier", [model.classifier]))
    return out


def macs_by_module(model):
    macs = {}

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs[module] = output.numel() * k
        elif isinstance(module, torch.nn.Linear):
            macs[module] = module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for h in handles:
        h.remove()
    return macs


def main():
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "nets": {}}
    for name, weights in [
        ("resnet50", models.ResNet50_Weights.IMAGENET1K_V1),
        ("densenet121", models.DenseNet121_Weights.IMAGENET1K_V1),
        ("densenet169", models.DenseNet169_Weights.IMAGENET1K_V1),
        ("densenet201", models.DenseNet201_Weights.IMAGENET1K_V1),
    ]:
        model = getattr(models, name)().eval()
        macs = macs_by_module(model)
        rows = []
        for stage, mods in stages(name, model):
            params = sum(p.numel() for m in mods for p in m.parameters())
            stage_macs = sum(v for m in mods for sub in m.modules() for k, v in macs.items() if k is sub)
            rows.append({"stage": stage, "params": params, "macs": stage_macs})
        total = sum(p.numel() for p in model.parameters())
        assert total == sum(r["params"] for r in rows), name
        meta = weights.meta
        out["nets"][name] = {
            "stages": rows,
            "params": total,
            "macs": sum(macs.values()),
            "top1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
            "top5": meta["_metrics"]["ImageNet-1K"]["acc@5"],
            "torchvision_gflops": meta["_ops"],
        }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet_vs_densenet.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for name, net in out["nets"].items():
        print(f"{name}: {net['params'] / 1e6:.2f} M params, {net['macs'] / 1e9:.2f} GMACs, top-1 {net['top1']}")
        for r in net["stages"]:
            print(f"  {r['stage']:<22} {r['params'] / 1e6:8.3f} M  {r['macs'] / 1e6:9.1f} MMACs")


if __name__ == "__main__":
    main()
