#!/usr/bin/env python3
"""apunet's Probabilistic Attention U-Net in PyTorch, layer for layer: the peer of `apunet bench`
(the same default model, timed the same way, JSON like `apunet bench`) and the loader of the
weights `apunet export` writes (docs/python.md, "Weights to and from PyTorch").

    python3 bench/torch_peer.py --device cpu --batch-size 8 --steps 5 --warmup 2

    import torch_peer                                     # with bench/ on sys.path
    model, config = torch_peer.load("model.safetensors")  # apunet export --run RUN --out ...
    logits = model.decode(images, noise)                  # [N,n,H,W] for eps [N,n,L]
    torch_peer.save(model, "mine.safetensors", size=128)  # apunet import-weights --weights ...

The module tree mirrors apunet's (src/model): every state_dict key is apunet's tensor path, so a
file moves between the two with no renaming. Needs torch (and safetensors to load or save).
"""

import math
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import peer_bench

CONFIG_KEY = "apunet_config"
# Maps with more tokens than this attend within (shifted) windows (src/model/transformer.rs).
FULL_ATTENTION_TOKENS = 1024
# apunet's [model] defaults (src/model/config.rs), for what a config leaves out.
DEFAULTS = dict(kind="punet", in_channels=1, filters=[32, 64, 128, 192], convs_per_block=3, norm="group",
                attention_gates=True, transformer_levels="coarsest", transformer_heads=4, latent_dim=6,
                fcomb_layers=3, log_sigma_min=-8.0, log_sigma_max=4.0)


def model_config(**settings):
    """apunet's [model] settings with its defaults for the rest."""
    unknown = set(settings) - set(DEFAULTS) - {"latent_scales", "latent_channels", "res_blocks"}
    if unknown:
        raise ValueError(f"unknown [model] settings: {sorted(unknown)}")
    return {**DEFAULTS, **settings}


def transformer_levels(spec, depth):
    if isinstance(spec, list):
        return spec
    return {"coarsest": [depth - 2] if depth >= 2 else [], "none": [], "all": list(range(depth - 1))}[spec]


def group_count(c):
    return next(g for g in range(8, 0, -1) if c % g == 0)


def make_norm(kind, c):
    return {"group": lambda: nn.GroupNorm(group_count(c), c), "batch": lambda: nn.BatchNorm2d(c), "none": nn.Identity}[kind]()


def resize(x, h, w):
    """Bilinear, align_corners=False: apunet's `resample` (identity at the same size)."""
    return x if x.shape[2:] == (h, w) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


class ConvBlock(nn.Module):
    """n x (conv3x3 + norm + ReLU); the conv has a bias only without a norm."""

    def __init__(self, cin, cout, n, norm):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=norm == "none") for i in range(n))
        self.norms = nn.ModuleList(make_norm(norm, cout) for _ in range(n))

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return x


class Encoder(nn.Module):
    def __init__(self, cin, cfg):
        super().__init__()
        chans = [cin] + cfg["filters"]
        self.blocks = nn.ModuleList(ConvBlock(a, b, cfg["convs_per_block"], cfg["norm"]) for a, b in zip(chans, chans[1:]))

    def forward(self, x):
        return peer_bench.encode_levels(self.blocks, x)


class AttentionGate(nn.Module):
    def __init__(self, cx, cg):
        super().__init__()
        ci = max(cx // 2, 1)
        self.w_x = nn.Conv2d(cx, ci, 2, stride=2, bias=False)
        self.w_g = nn.Conv2d(cg, ci, 1)
        self.psi = nn.Conv2d(ci, 1, 1)

    def coefficients(self, skip, g):
        theta = self.w_x(skip)
        phi = resize(self.w_g(g), *theta.shape[2:])
        return resize(torch.sigmoid(self.psi(F.relu(theta + phi))), *skip.shape[2:])


class Attention(nn.Module):
    """burn's MultiHeadAttention: separate query/key/value/output projections."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.output = (nn.Linear(c, c) for _ in range(4))

    def forward(self, t, blocked=None):
        """t [N,T,C]; blocked [N,T,T] true where a token may not attend."""
        n, tokens, c = t.shape
        split = lambda x: x.view(n, tokens, self.heads, c // self.heads).transpose(1, 2)
        allowed = None if blocked is None else ~blocked[:, None]
        ctx = F.scaled_dot_product_attention(split(self.query(t)), split(self.key(t)), split(self.value(t)), attn_mask=allowed)
        return self.output(ctx.transpose(1, 2).reshape(n, tokens, c))


def position_encoding(h, w, c):
    """[H*W, C] float32: the first half of the channels encodes the row, the second the column."""
    out = np.zeros((h * w, c), np.float32)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    half = c // 2
    for pos, off, width in ((ys.ravel(), 0, half), (xs.ravel(), half, c - half)):
        for i in range(width):
            freq = np.float32(1.0) / np.float32(10000.0) ** np.float32((2 * (i // 2)) / max(width, 1))
            a = pos.astype(np.float32) * freq
            out[:, off + i] = np.sin(a) if i % 2 == 0 else np.cos(a)
    return torch.from_numpy(out)


def window_side(n):
    return next((d for d in [*range(8, 17), *range(7, 1, -1)] if n % d == 0), n)


def partition(x, wh, ww):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // wh, wh, w // ww, ww).permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, c)


def unpartition(t, b, c, h, w, wh, ww):
    return t.reshape(b, h // wh, w // ww, wh, ww, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def shifted_window_mask(b, h, w, wh, ww, sh, sw):
    """Swin's mask: after the shift, pixels from opposite edges of the map share the far windows
    but may attend only within their own side."""
    region = lambda n, win, s: (torch.arange(n) >= n - win).long() + (torch.arange(n) >= n - s).long()
    labels = (region(h, wh, sh)[:, None] * 3 + region(w, ww, sw)[None, :]).float()[None, None]
    labels = partition(labels, wh, ww)[..., 0]
    blocked = labels[:, None, :] != labels[:, :, None]
    return blocked[None].expand(b, *blocked.shape).reshape(-1, wh * ww, wh * ww)


class Transformer(nn.Module):
    """Pre-norm self-attention and MLP over a map's pixels, with a fixed 2D position encoding;
    above FULL_ATTENTION_TOKENS tokens within windows, shifted by half on odd levels."""

    def __init__(self, c, heads, shifted):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn = Attention(c, heads)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.shifted = shifted
        self._pe = {}

    def tokens(self, t, blocked=None):
        t = t + self.attn(self.norm1(t), blocked)
        return t + self.fc2(F.gelu(self.fc1(self.norm2(t))))

    def forward(self, x):
        b, c, h, w = x.shape
        key = (h, w, c, x.device)
        if key not in self._pe:
            self._pe[key] = position_encoding(h, w, c).t().reshape(1, c, h, w).to(x.device)
        x = x + self._pe[key]
        if h * w <= FULL_ATTENTION_TOKENS:
            return self.tokens(x.reshape(b, c, h * w).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        wh, ww = window_side(h), window_side(w)
        sh, sw = (wh // 2, ww // 2) if self.shifted else (0, 0)
        x = torch.roll(x, shifts=(-sh, -sw), dims=(2, 3))
        blocked = shifted_window_mask(b, h, w, wh, ww, sh, sw).to(x.device) if (sh, sw) != (0, 0) else None
        x = unpartition(self.tokens(partition(x, wh, ww), blocked), b, c, h, w, wh, ww)
        return torch.roll(x, shifts=(sh, sw), dims=(2, 3))


class DecoderLevel(nn.Module):
    def __init__(self, cfg, level, with_transformer):
        super().__init__()
        f = cfg["filters"]
        self.transformer = Transformer(f[level + 1], cfg["transformer_heads"], level % 2 == 1) if with_transformer else None
        self.gate = AttentionGate(f[level], f[level + 1]) if cfg["attention_gates"] else None
        self.block = ConvBlock(f[level] + f[level + 1], f[level], cfg["convs_per_block"], cfg["norm"])


class AttentionUNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        depth = len(cfg["filters"])
        levels = transformer_levels(cfg["transformer_levels"], depth)
        self.encoder = Encoder(cfg["in_channels"], cfg)
        # Coarsest decoder level first, as apunet's `decoder`.
        self.decoder = nn.ModuleList(DecoderLevel(cfg, l, l in levels) for l in range(depth - 2, -1, -1))

    def forward(self, x):
        skips = self.encoder(x)
        g = skips.pop()
        for level in self.decoder:
            skip = skips.pop()
            if level.transformer is not None:
                g = level.transformer(g)
            if level.gate is not None:
                skip = skip * level.gate.coefficients(skip, g)
            g = level.block(torch.cat([resize(g, *skip.shape[2:]), skip], 1))
        return g


class GaussianEncoder(nn.Module):
    def __init__(self, cfg, extra_channels):
        super().__init__()
        self.encoder = Encoder(cfg["in_channels"] + extra_channels, cfg)
        self.head = nn.Conv2d(cfg["filters"][-1], 2 * cfg["latent_dim"], 1)
        self.latent, self.clamp = cfg["latent_dim"], (cfg["log_sigma_min"], cfg["log_sigma_max"])

    def forward(self, x):
        out = self.head(self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)).flatten(1)
        return out[:, : self.latent], out[:, self.latent:].clamp(*self.clamp)


class Fcomb(nn.Module):
    """1x1 convs over the features with z tiled over the image; the last gives logits."""

    def __init__(self, c, latent, hidden):
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(c + latent if i == 0 else c, c, 1) for i in range(hidden))
        self.out = nn.Conv2d(c if hidden else c + latent, 1, 1)

    def forward(self, features, z):
        """features [B,C,H,W], z [B*n,L] (n per image, image-major) -> logits [B*n,1,H,W]."""
        n = z.shape[0] // features.shape[0]
        f = features.repeat_interleave(n, 0)
        x = torch.cat([f, z[:, :, None, None].expand(-1, -1, *f.shape[2:])], 1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.out(x)


class ProbUNet(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        cfg = model_config(**(cfg or {}))
        if cfg["kind"] != "punet":
            raise ValueError(f"torch_peer builds the Probabilistic U-Net; this config is a {cfg['kind']}")
        self.cfg = cfg
        self.unet = AttentionUNet(cfg)
        self.prior = GaussianEncoder(cfg, 0)
        self.posterior = GaussianEncoder(cfg, 1)
        self.fcomb = Fcomb(cfg["filters"][0], cfg["latent_dim"], cfg["fcomb_layers"])

    def loss(self, x, y):
        f = self.unet(x)
        mp, lp = self.prior(x)
        mq, lq = self.posterior(torch.cat([x, y], 1))
        z = mq + lq.exp() * torch.randn_like(mq)
        logits = self.fcomb(f, z)
        rec = F.binary_cross_entropy_with_logits(logits, y, reduction="none").flatten(1).sum(1).mean()
        kl = (lp - lq + ((2 * lq).exp() + (mq - mp) ** 2) / (2 * (2 * lp).exp()) - 0.5).sum(1).mean()
        return rec + kl

    @torch.no_grad()
    def decode(self, x, eps):
        """Logits [N,n,H,W] for images x [N,C,H,W] and standard normals eps [N,n,L]: the prior's
        z = mu + sigma * eps, as apunet samples (`Run.sample(..., return_noise=True)` gives its eps)."""
        f = self.unet(x)
        mu, log_sigma = self.prior(x)
        b, n, latent = eps.shape
        z = (mu[:, None] + log_sigma.exp()[:, None] * eps).reshape(b * n, latent)
        return self.fcomb(f, z).reshape(b, n, *x.shape[2:])

    @torch.no_grad()
    def sample(self, x, n):
        return self.decode(x, torch.randn(x.shape[0], n, self.cfg["latent_dim"], device=x.device)) > 0


def load(path, device="cpu"):
    """A file `apunet export` wrote: (ProbUNet in eval mode, the run's config as a dict)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path} has no '{CONFIG_KEY}' metadata: not written by apunet export")
    config = tomllib.loads(meta[CONFIG_KEY])
    model = ProbUNet(config.get("model", {}))
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.to(device).eval(), config


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(float(v)) if isinstance(v, float) else str(v)


def save(model, path, size):
    """Writes `model` for `apunet import-weights`: its state_dict under apunet's names and, as
    metadata, its [model] settings and the crop side `size` it was trained on ([data])."""
    from safetensors.torch import save_file

    lines = ["[model]"] + [f"{k} = {_toml_value(v)}" for k, v in model.cfg.items()] + ["", "[data]", f"height = {size}", f"width = {size}"]
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, path, metadata={CONFIG_KEY: "\n".join(lines) + "\n", "format": "pt"})


def main():
    a = peer_bench.parser(__doc__, "as apunet bench --filters (default 32,64,128,192)").parse_args()
    filters = [int(f) for f in (a.filters or "32,64,128,192").split(",")]
    peer_bench.run(a, lambda f: ProbUNet({"filters": f}), filters)


if __name__ == "__main__":
    main()
