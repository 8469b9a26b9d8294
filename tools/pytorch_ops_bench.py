#!/usr/bin/env python3
"""PyTorch twin of site-agent/benches/ops.rs: the U-Net's operations other than convolutions,
one at a time at the `cpu` U-Net's largest activation (batch 8, 16 maps, 128 px), forward and
forward + backward of sum(output * up), median ms. Usage:

    python3 tools/pytorch_ops_bench.py [--repeats 20] [--threads 2]
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def median_ms(repeats, f):
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 16, 128, 128)
    up = torch.randn(8, 16, 128, 128)
    logits = torch.randn(8, 3, 128, 128)
    norm = nn.InstanceNorm2d(16, affine=True)
    ops = [
        ("leaky_relu", x, lambda t: F.leaky_relu(t, 0.01)),
        ("instance_norm", x, lambda t: norm(t)),
        ("norm+leaky", x, lambda t: F.leaky_relu(norm(t), 0.01)),
        ("cat (2×16 maps)", x, lambda t: torch.cat([t, t], 1)[:, :16]),
        ("max_pool2d", x, lambda t: F.max_pool2d(t, 2)),
        ("add", x, lambda t: t + t),
        ("softmax (3 classes)", logits, lambda t: torch.softmax(t, 1)),
        ("log_softmax (3 classes)", logits, lambda t: torch.log_softmax(t, 1)),
    ]
    print(f"op                        forward ms   forward+backward ms   (median of {args.repeats})")
    for name, inp, op in ops:
        with torch.no_grad():
            forward = median_ms(args.repeats, lambda: op(inp))

        def both():
            t = inp.clone().requires_grad_(True)
            y = op(t)
            u = up if y.shape == up.shape else y.detach()
            (y * u).sum().backward()

        print(f"{name:<26} {forward:>10.2f} {median_ms(args.repeats, both):>21.2f}")


if __name__ == "__main__":
    main()
