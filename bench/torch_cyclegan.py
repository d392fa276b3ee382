"""PyTorch peer for `apunet gan bench`: the same ResNet CycleGAN iteration at batch 1.

Architecture and losses follow Zhu et al.'s public pytorch-CycleGAN-and-pix2pix code
(ResnetGenerator, NLayerDiscriminator n_layers=3, LSGAN, cycle L1 lambda 10, identity 0.5,
image pool of 50, Adam 2e-4 betas (0.5, 0.999)), one channel per domain as in apunet, and
instance norm with affine parameters as burn's InstanceNorm has them, so parameter counts match.

    python3 bench/torch_cyclegan.py --sizes 128,256 --steps 3 --warmup 1 [--device cuda]
"""
import argparse
import json
import random
import resource
import time

import torch
import torch.nn as nn


def init_weights(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        nn.init.zeros_(m.bias)


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c, affine=True), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c, affine=True),
        )

    def forward(self, x):
        return x + self.body(x)


def generator(c_in, c_out, base, blocks):
    b1, b2, b4 = base, base * 2, base * 4
    layers = [nn.ReflectionPad2d(3), nn.Conv2d(c_in, b1, 7), nn.InstanceNorm2d(b1, affine=True), nn.ReLU(True)]
    for ci, co in [(b1, b2), (b2, b4)]:
        layers += [nn.Conv2d(ci, co, 3, stride=2, padding=1), nn.InstanceNorm2d(co, affine=True), nn.ReLU(True)]
    layers += [ResBlock(b4) for _ in range(blocks)]
    for ci, co in [(b4, b2), (b2, b1)]:
        layers += [nn.ConvTranspose2d(ci, co, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(co, affine=True), nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(b1, c_out, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(c_in, base):
    widths = [base, base * 2, base * 4, base * 8]
    layers, prev = [], c_in
    for i, w in enumerate(widths):
        layers.append(nn.Conv2d(prev, w, 4, stride=2 if i < 3 else 1, padding=1))
        if i > 0:
            layers.append(nn.InstanceNorm2d(w, affine=True))
        layers.append(nn.LeakyReLU(0.2, True))
        prev = w
    layers.append(nn.Conv2d(prev, 1, 4, stride=1, padding=1))
    return nn.Sequential(*layers)


class Pool:
    def __init__(self, size=50):
        self.size, self.items = size, []

    def query(self, x):
        x = x.detach()
        if len(self.items) < self.size:
            self.items.append(x)
            return x
        if random.random() < 0.5:
            i = random.randrange(self.size)
            old, self.items[i] = self.items[i], x
            return old
        return x


def lsgan(scores, target):
    return ((scores - target) ** 2).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    random.seed(0)
    l1 = nn.L1Loss()
    rows = []
    for s in [int(v) for v in a.sizes.split(",")]:
        g_ab, g_ba = generator(1, 1, a.base, a.blocks).to(dev), generator(1, 1, a.base, a.blocks).to(dev)
        d_a, d_b = discriminator(1, a.base).to(dev), discriminator(1, a.base).to(dev)
        for m in (g_ab, g_ba, d_a, d_b):
            m.apply(init_weights)
        params = sum(p.numel() for m in (g_ab, g_ba, d_a, d_b) for p in m.parameters())
        opt_g = torch.optim.Adam(list(g_ab.parameters()) + list(g_ba.parameters()), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(list(d_a.parameters()) + list(d_b.parameters()), lr=2e-4, betas=(0.5, 0.999))
        pool_a, pool_b = Pool(), Pool()
        ra = torch.randn(1, 1, s, s, device=dev).clamp(-1, 1)
        rb = torch.tanh(0.5 * torch.randn(1, 1, s, s, device=dev))

        def step():
            for d in (d_a, d_b):
                d.requires_grad_(False)
            opt_g.zero_grad()
            fake_b, fake_a = g_ab(ra), g_ba(rb)
            cyc = l1(g_ba(fake_b), ra) + l1(g_ab(fake_a), rb)
            idt = l1(g_ab(rb), rb) + l1(g_ba(ra), ra)
            adv = lsgan(d_b(fake_b), 1.0) + lsgan(d_a(fake_a), 1.0)
            loss_g = adv + 10.0 * cyc + 5.0 * idt
            loss_g.backward()
            opt_g.step()
            for d in (d_a, d_b):
                d.requires_grad_(True)
            opt_d.zero_grad()
            fb, fa = pool_b.query(fake_b), pool_a.query(fake_a)
            loss_d = 0.5 * (lsgan(d_b(rb), 1.0) + lsgan(d_b(fb), 0.0)) + 0.5 * (lsgan(d_a(ra), 1.0) + lsgan(d_a(fa), 0.0))
            loss_d.backward()
            opt_d.step()
            # Reading the losses back waits for the device, as apunet's step does.
            return loss_g.item(), loss_d.item()

        times = []
        for i in range(a.warmup + a.steps):
            t = time.perf_counter()
            step()
            dt = time.perf_counter() - t
            print(f"torch gan {s}x{s} step {i}: {dt:.3f} s{' (warm-up)' if i < a.warmup else ''}", flush=True)
            if i >= a.warmup:
                times.append(dt)
        times.sort()
        rows.append({"size": s, "iterations_per_s": a.steps / sum(times), "iteration_s_median": times[len(times) // 2],
                     "params": params})
    print(json.dumps({
        "impl": f"pytorch {torch.__version__}",
        "device": a.device,
        "batch_size": 1,
        "base": a.base,
        "residual_blocks": a.blocks,
        "results": rows,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
