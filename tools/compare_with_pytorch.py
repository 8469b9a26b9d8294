#!/usr/bin/env python3
"""Runs the PyTorch twin of fedseg's U-Net on the input dumped by the `dump_logits` example,
with the same weights, and compares the logits. Needs torch and safetensors.

    cargo run --release -p site-agent --example dump_logits -- W.safetensors /tmp/dump.safetensors
    python3 tools/compare_with_pytorch.py W.safetensors /tmp/dump.safetensors
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pytorch_unet_bench import UNet


def main():
    weights, dump = sys.argv[1], sys.argv[2]
    with safe_open(weights, "pt") as f:
        arch = json.loads(f.metadata()["fedseg.unet"])
    model = UNet(arch["levels"], arch["base_channels"], arch["max_channels"], arch["deep_supervision"])
    model.load_state_dict(load_file(weights), strict=True)
    model.eval()
    d = load_file(dump)
    with torch.no_grad():
        ours = model(d["input"])[0]
    diff = (ours - d["logits"]).abs()
    agree = (ours.argmax(1) == d["logits"].argmax(1)).float().mean().item()
    print(
        f"logits {tuple(ours.shape)}: max |burn - pytorch| = {diff.max().item():.2e}, "
        f"mean = {diff.mean().item():.2e}, argmax agreement = {agree * 100:.3f}%"
    )
    sys.exit(0 if diff.max().item() < 1e-3 else 1)


if __name__ == "__main__":
    main()
