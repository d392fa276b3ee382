#!/usr/bin/env python3
"""PyTorch peer for `apunet bench --model hpunet`: the same Hierarchical Probabilistic U-Net
(DeepMind's reference as apunet builds it: residual blocks of 3 convs at half width with 1x1
projections, no norm layers, 2x2 average pooling, nearest x2 upsampling, per-pixel Gaussian
latents of 1 channel at the 4 coarsest decoder scales, separate prior and posterior nets, a
stitching decoder on the prior's features), timed the same way: a training step is the
posterior-driven forward, BCE summed per image + KL, backward and Adam; sampling encodes once
and decodes n prior samples per image. Prints JSON like `apunet bench`.

    python3 bench/torch_hpunet.py --size 128                                   # 8 levels
    python3 bench/torch_hpunet.py --size 64 --filters 24,48,96,192,192,192,192  # the ablation's
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import peer_bench


class ResBlock(nn.Module):
    def __init__(self, cin, cout, n=3):
        super().__init__()
        inner = max(cout // 2, 1)
        self.convs = nn.ModuleList([nn.Conv2d(cin if i == 0 else inner, inner, 3, padding=1) for i in range(n)])
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.project = nn.Conv2d(inner, cout, 1) if inner != cout else None

    def forward(self, x):
        skip = self.skip(x) if self.skip is not None else x
        r = x
        for c in self.convs:
            r = c(F.relu(r))
        if self.project is not None:
            r = self.project(r)
        return skip + r


def res_stack(cin, cout, n=3):
    return nn.Sequential(*[ResBlock(cin if i == 0 else cout, cout) for i in range(n)])


def nearest2x(x):
    return F.interpolate(x, scale_factor=2, mode="nearest")


class DecoderStep(nn.Module):
    def __init__(self, f, level, g_channels, extra):
        super().__init__()
        self.block = res_stack(g_channels + extra + f[level], f[level])

    def forward(self, g, z, skip):
        if z is not None:
            g = torch.cat([g, z], 1)
        return self.block(torch.cat([nearest2x(g), skip], 1))


class Core(nn.Module):
    """The prior or posterior net: residual encoder and the decoder levels with latents."""

    def __init__(self, f, cin, scales, lc):
        super().__init__()
        d = len(f)
        self.encoder = nn.ModuleList([res_stack(cin if i == 0 else f[i - 1], f[i]) for i in range(d)])
        self.heads = nn.ModuleList([nn.Conv2d(f[d - 1 - s], 2 * lc, 1) for s in range(scales)])
        self.decoder = nn.ModuleList([DecoderStep(f, d - 2 - s, f[d - 1 - s], lc) for s in range(scales)])
        self.lc = lc

    def encode(self, x):
        return peer_bench.encode_levels(self.encoder, x)

    def decode(self, skips, pick):
        d = len(skips)
        g = skips[-1]
        dists, latents = [], []
        for s, (head, step) in enumerate(zip(self.heads, self.decoder)):
            stats = head(g)
            mu, log_sigma = stats[:, : self.lc], stats[:, self.lc :].clamp(-8.0, 4.0)
            z = pick(s, mu, log_sigma)
            g = step(g, z, skips[d - 2 - s])
            dists.append((mu, log_sigma))
            latents.append(z)
        return dists, latents, g


class HPUNet(nn.Module):
    def __init__(self, f, scales=4, lc=1):
        super().__init__()
        self.prior, self.posterior = Core(f, 1, scales, lc), Core(f, 2, scales, lc)
        first = len(f) - 1 - scales
        self.stitch = nn.ModuleList([DecoderStep(f, l, f[l + 1], 0) for l in reversed(range(first))])
        self.out = nn.Conv2d(f[0], 1, 1)

    def stitcher(self, g, skips):
        first = len(self.stitch)
        for i, step in enumerate(self.stitch):
            g = step(g, None, skips[first - 1 - i])
        return self.out(g)

    def posterior_pass(self, x, y, randn=torch.randn_like):
        """Logits with latents from the posterior (noise drawn by `randn(mu)`) and KL per image."""
        q_skips = self.posterior.encode(torch.cat([x, y], 1))
        q, q_lat, _ = self.posterior.decode(q_skips, lambda s, mu, ls: mu + ls.exp() * randn(mu))
        p_skips = self.prior.encode(x)
        p, _, g = self.prior.decode(p_skips, lambda s, mu, ls: q_lat[s])
        logits = self.stitcher(g, p_skips)
        kl = 0
        for (mq, lq), (mp, lp) in zip(q, p):
            kl = kl + (lp - lq + ((2 * lq).exp() + (mq - mp) ** 2) / (2 * (2 * lp).exp()) - 0.5).flatten(1).sum(1)
        return logits, kl

    def loss(self, x, y):
        logits, kl = self.posterior_pass(x, y)
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / x.shape[0]
        return bce + kl.mean()

    @torch.inference_mode()
    def sample(self, x, n):
        skips = [s.repeat_interleave(n, 0) for s in self.prior.encode(x)]
        _, _, g = self.prior.decode(skips, lambda s, mu, ls: mu + ls.exp() * torch.randn_like(mu))
        return self.stitcher(g, skips) > 0


def main():
    a = peer_bench.parser(__doc__, "as apunet bench --filters (default: the reference for --size)").parse_args()
    if a.filters:
        filters = [int(f) for f in a.filters.split(",")]
    else:
        levels = a.size.bit_length()  # 128 px: 8 levels, down to 1 px
        filters = ([24, 48, 96] + [192] * levels)[:levels]
    peer_bench.run(a, HPUNet, filters, {"model": "hpunet"})


if __name__ == "__main__":
    main()
