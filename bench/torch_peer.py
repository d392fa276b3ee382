#!/usr/bin/env python3
"""PyTorch peer for `apunet bench`: the same Probabilistic Attention U-Net (3 convs per block,
filters 32-64-128-192, GroupNorm(8), attention gates, one transformer block at the coarsest decoder
level, latent 6, fcomb 4 convs), timed the same way. Prints JSON like `apunet bench`.

    python3 bench/torch_peer.py --device cpu --batch-size 8 --steps 5 --warmup 2
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import peer_bench


def conv_block(cin, cout, n=3):
    layers = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, cin, filters):
        super().__init__()
        self.blocks = nn.ModuleList()
        for f in filters:
            self.blocks.append(conv_block(cin, f))
            cin = f

    def forward(self, x):
        return peer_bench.encode_levels(self.blocks, x)


class Gate(nn.Module):
    def __init__(self, cx, cg):
        super().__init__()
        ci = max(cx // 2, 1)
        self.wx = nn.Conv2d(cx, ci, 2, stride=2, bias=False)
        self.wg = nn.Conv2d(cg, ci, 1)
        self.psi = nn.Conv2d(ci, 1, 1)

    def forward(self, x, g):
        a = torch.sigmoid(self.psi(F.relu(self.wx(x) + self.wg(g))))
        return x * F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False)


def pos_enc(h, w, c, device):
    half = c // 2
    out = torch.zeros(h * w, c)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for pos, off, width in ((ys.flatten(), 0, half), (xs.flatten(), half, c - half)):
        for i in range(width):
            freq = 1.0 / 10000 ** ((2 * (i // 2)) / width)
            out[:, off + i] = torch.sin(pos * freq) if i % 2 == 0 else torch.cos(pos * freq)
    return out.to(device)


class Transformer(nn.Module):
    def __init__(self, c, heads=4):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.pe = None

    def forward(self, x):
        b, c, h, w = x.shape
        if self.pe is None or self.pe.shape[0] != h * w:
            self.pe = pos_enc(h, w, c, x.device)
        t = x.flatten(2).transpose(1, 2) + self.pe
        q = self.n1(t)
        t = t + self.attn(q, q, q, need_weights=False)[0]
        t = t + self.fc2(F.gelu(self.fc1(self.n2(t))))
        return t.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, filters):
        super().__init__()
        self.enc = Encoder(1, filters)
        d = len(filters)
        self.levels = list(range(d - 2, -1, -1))
        self.tr = nn.ModuleDict({str(d - 2): Transformer(filters[d - 1])})
        self.gates = nn.ModuleList([Gate(filters[l], filters[l + 1]) for l in self.levels])
        self.blocks = nn.ModuleList([conv_block(filters[l] + filters[l + 1], filters[l]) for l in self.levels])

    def forward(self, x):
        skips = self.enc(x)
        g = skips.pop()
        for l, gate, block in zip(self.levels, self.gates, self.blocks):
            s = skips.pop()
            if str(l) in self.tr:
                g = self.tr[str(l)](g)
            s = gate(s, g)
            g = block(torch.cat([F.interpolate(g, size=s.shape[2:], mode="bilinear", align_corners=False), s], 1))
        return g


class Gaussian(nn.Module):
    def __init__(self, cin, filters, latent):
        super().__init__()
        self.enc = Encoder(cin, filters)
        self.head = nn.Conv2d(filters[-1], 2 * latent, 1)
        self.latent = latent

    def forward(self, x):
        f = self.enc(x)[-1].mean(dim=(2, 3), keepdim=True)
        out = self.head(f).flatten(1)
        return out[:, : self.latent], out[:, self.latent:].clamp(-8, 4)


class ProbUNet(nn.Module):
    def __init__(self, filters=(32, 64, 128, 192), latent=6):
        super().__init__()
        self.unet = UNet(list(filters))
        self.prior = Gaussian(1, list(filters), latent)
        self.post = Gaussian(2, list(filters), latent)
        c = filters[0]
        self.fcomb = nn.Sequential(nn.Conv2d(c + latent, c, 1), nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(),
                                   nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))
        self.latent = latent

    def comb(self, f, z):
        z = z[:, :, None, None].expand(-1, -1, f.shape[2], f.shape[3])
        return self.fcomb(torch.cat([f, z], 1))

    def loss(self, x, y):
        f = self.unet(x)
        mp, lp = self.prior(x)
        mq, lq = self.post(torch.cat([x, y], 1))
        z = mq + lq.exp() * torch.randn_like(mq)
        logits = self.comb(f, z)
        rec = F.binary_cross_entropy_with_logits(logits, y, reduction="none").flatten(1).sum(1).mean()
        kl = (lp - lq + ((2 * lq).exp() + (mq - mp) ** 2) / (2 * (2 * lp).exp()) - 0.5).sum(1).mean()
        return rec + kl

    @torch.no_grad()
    def sample(self, x, n):
        f = self.unet(x)
        mp, lp = self.prior(x)
        b, c, h, w = f.shape
        mu = mp.repeat_interleave(n, 0)
        z = mu + lp.repeat_interleave(n, 0).exp() * torch.randn_like(mu)
        return self.comb(f.repeat_interleave(n, 0), z) > 0


def main():
    a = peer_bench.parser(__doc__, "as apunet bench --filters (default 32,64,128,192)").parse_args()
    filters = [int(f) for f in (a.filters or "32,64,128,192").split(",")]
    peer_bench.run(a, ProbUNet, filters)


if __name__ == "__main__":
    main()
