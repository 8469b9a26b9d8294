#!/usr/bin/env python3
"""PyTorch twin of fedseg's U-Net training step, for side-by-side speed and memory numbers.

Same network as site-agent/src/model/unet.rs (per level conv3x3 + InstanceNorm(affine) +
LeakyReLU(0.01) twice, max-pool down, 2x2 transposed conv up, skip concat, 1x1 deep-supervision
heads), same loss (CE + soft Dice over classes 1..C, heads weighted 1, 1/2, ... normalised),
Adam lr 1e-3. Usage:

    python3 tools/pytorch_unet_bench.py --levels 5 --base 16 --max 256 --ds 2 \
        --size 128 --batch 8 --steps 10 --threads 2 [--device cuda]
"""
import argparse
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(cout, affine=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x):
        x = F.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        return F.leaky_relu(self.norm2(self.conv2(x)), 0.01)


class Decoder(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.block = ConvBlock(2 * cout, cout)


class UNet(nn.Module):
    def __init__(self, levels, base, cap, ds, classes=3):
        super().__init__()
        ch = [min(base << i, cap) for i in range(levels)]
        self.enc = nn.ModuleList([ConvBlock(1 if i == 0 else ch[i - 1], ch[i]) for i in range(levels)])
        self.dec = nn.ModuleList([Decoder(ch[i + 1], ch[i]) for i in range(levels - 1)])
        self.ds = nn.ModuleList([nn.Conv2d(ch[i], classes, 1) for i in range(1, ds + 1)])
        self.head = nn.Conv2d(ch[0], classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        ds_out = {}
        for i in reversed(range(len(self.dec))):
            d = self.dec[i]
            x = d.block(torch.cat([d.up(x), skips.pop()], 1))
            if 1 <= i <= len(self.ds):
                ds_out[i] = self.ds[i - 1](x)
        return [self.head(x)] + [ds_out[i] for i in sorted(ds_out)]


def head_loss(logits, target):
    b, c, h, w = logits.shape
    ce = -(F.log_softmax(logits, 1) * target).sum() / (b * h * w)
    p = F.softmax(logits, 1)
    inter = (p * target).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + target.sum((0, 2, 3))
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + 1 - dice[1:].mean()


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--levels", type=int, default=5)
    a.add_argument("--base", type=int, default=16)
    a.add_argument("--max", type=int, default=256)
    a.add_argument("--ds", type=int, default=2)
    a.add_argument("--size", type=int, default=128)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--steps", type=int, default=10)
    a.add_argument("--warmup", type=int, default=2)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--device", default="cpu")
    args = a.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = UNet(args.levels, args.base, args.max, args.ds).to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(args.batch, 1, args.size, args.size, device=dev)
    labels = torch.randint(0, 3, (args.batch, args.size, args.size), device=dev)
    heads = 1 + args.ds
    targets = []
    for level in range(heads):
        f = 1 << level
        l = labels[:, f // 2 :: f, f // 2 :: f]
        targets.append(F.one_hot(l, 3).permute(0, 3, 1, 2).float())
    weights = [0.5**i for i in range(heads)]
    weights = [w / sum(weights) for w in weights]
    times = []
    for step in range(args.warmup + args.steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        opt.zero_grad()
        outs = model(x)
        loss = sum(w * head_loss(o, tg) for w, o, tg in zip(weights, outs, targets))
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    extra = ""
    if dev.type == "cuda":
        extra = f" peak_gpu_mib={torch.cuda.max_memory_allocated() / 2**20:.0f}"
    print(
        f"pytorch {torch.__version__} params={params} batch={args.batch} size={args.size} "
        f"step_min={times[0]:.3f}s step_median={med:.3f}s slices_per_s={args.batch / med:.1f} "
        f"peak_rss_mib={rss:.0f}{extra}"
    )


if __name__ == "__main__":
    main()
