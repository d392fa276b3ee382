#!/usr/bin/env python3
"""Trains bench/torch_hpunet.py's HPU-Net the way DeepMind's code trains it, on the same npz
files and the same data pipeline as `apunet train`, then samples the test crops so that
`apunet metrics` scores both models alike (issue 27: does the PyTorch HPU-Net mark lesions where
apunet's does not?).

    python3 bench/torch_hpunet_train.py --train /tmp/abl27/train.npz --test /tmp/abl27/test.npz \\
        --out /tmp/thpu/seed1 --seed 1 --epochs 200 --topk 0.1
    apunet metrics --samples /tmp/thpu/seed1/samples.npz --labels /tmp/abl27/test.npz \\
        --out /tmp/thpu/seed1/eval

As DeepMind's reference (../shared/notes/hpunet-reference.md): orthogonal weights and biases from
a normal of 0.001 truncated at two deviations; top-k cross-entropy over the whole batch, chosen by
log(xe / sum xe) + Gumbel without a gradient; GECO with C = EMA_0.99(rec) - kappa * pixels kept,
the forward using the EMA and the gradient going to this step's term, lambda = softplus(x)^2
from 1, and x trained by the same Adam as the network on the negated gradient times `rate`.
(apunet steps x by its own Adam at step size `rate`, src/train/objective.rs.)

As `apunet train`: each epoch shuffles the crops into batches (a lone last example joins the
batch before it), one random expert per example, one of the 8 flips and quarter turns, a patch
placed over a pixel some expert marked with probability 0.33, Adam at --lr; test crops are
sampled whole from the prior.
"""
import argparse, json, math, os, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_hpunet import HPUNet


def reference_init(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.orthogonal_(m.weight)
            nn.init.trunc_normal_(m.bias, std=1e-3, a=-2e-3, b=2e-3)


def dihedral(a, k, flip):
    """One of the 8 symmetries of the last two axes."""
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


def batch(images, masks, idx, patch, foreground, rng):
    h, w = images.shape[1:]
    xs, ys = [], []
    for i in idx:
        k, flip = rng.integers(4), rng.integers(2) == 1
        img = dihedral(images[i], k, flip)
        experts = dihedral(masks[i], k, flip)
        y = experts[rng.integers(masks.shape[1])]
        oy, ox = rng.integers(h - patch + 1), rng.integers(w - patch + 1)
        if rng.random() < foreground:
            marked = np.argwhere(experts.max(0) > 0)
            if len(marked):
                py, px = marked[rng.integers(len(marked))]
                oy = rng.integers(max(py + 1 - patch, 0), min(py, h - patch) + 1)
                ox = rng.integers(max(px + 1 - patch, 0), min(px, w - patch) + 1)
        xs.append(img[oy : oy + patch, ox : ox + patch])
        ys.append(y[oy : oy + patch, ox : ox + patch])
    to = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a))[:, None].astype(np.float32))
    return to(xs), to(ys)


def epoch_batches(n, size, rng):
    order = rng.permutation(n)
    out = [order[i : i + size] for i in range(0, n, size)]
    if len(out) > 1 and len(out[-1]) == 1:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


class Geco(nn.Module):
    """sonnet's LagrangeMultiplier as the HPU-Net uses it: a parameter that the network's
    optimiser ascends, its gradient negated and scaled by `rate`."""

    def __init__(self, kappa, rate):
        super().__init__()
        self.x = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
        self.kappa, self.rate, self.ema = kappa, rate, None

    def forward(self, rec, kept, kl):
        r = rec.detach()
        self.ema = r if self.ema is None else 0.99 * self.ema + 0.01 * r
        c = rec + (self.ema - r) - self.kappa * kept  # forward: the EMA; gradient: this step's rec
        lam = F.softplus(FlipGrad.apply(self.x, self.rate)) ** 2
        return lam * c + kl, lam.detach()


class FlipGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rate):
        ctx.rate = rate
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.rate * g, None


def loss_parts(model, x, y, topk, gen):
    """Top-k reconstruction summed per image (and pixels kept per image) and the KL."""
    logits, kl = model.posterior_pass(x, y, lambda mu: torch.randn(mu.shape, generator=gen))
    xe = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    b = x.shape[0]
    if topk < 1.0:
        flat = xe.detach().flatten()
        k = max(1, int(math.floor(topk * flat.numel())))
        u = torch.rand(flat.shape, generator=gen).clamp_min(1e-30)
        scores = (flat / flat.sum().clamp_min(1e-30)).clamp_min(1e-30).log() - (-u.log()).log()
        mask = torch.zeros_like(flat)
        mask[scores.topk(k).indices] = 1.0
        return (xe.flatten() * mask).sum() / b, k / b, kl.mean()
    return xe.sum() / b, xe[0].numel(), kl.mean()


@torch.inference_mode()
def sample(model, images, n, gen):
    out = []
    for img in images:
        x = torch.from_numpy(img)[None, None].float()
        skips = [s.repeat_interleave(n, 0) for s in model.prior.encode(x)]
        _, _, g = model.prior.decode(skips, lambda s, mu, ls: mu + ls.exp() * torch.randn(mu.shape, generator=gen))
        out.append((model.stitcher(g, skips) > 0)[:, 0].numpy().astype(np.uint8))
    return np.stack(out)


def save_npz(path, **arrays):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--foreground", type=float, default=0.33)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--filters", default="24,48,96,192,192,192,192")
    ap.add_argument("--scales", type=int, default=4)
    ap.add_argument("--loss", choices=["geco", "elbo"], default="geco")
    ap.add_argument("--topk", type=float, default=0.02)
    ap.add_argument("--kappa", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=1e-2)
    ap.add_argument("--init", choices=["reference", "pytorch"], default="reference")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--out-bias", type=float, default=None,
                    help="start the output logit here (apunet starts at logit(0.05) = -2.944)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    tr, te = np.load(a.train), np.load(a.test)
    images, masks = tr["images"].astype(np.float32), tr["masks"]
    model = HPUNet([int(f) for f in a.filters.split(",")], scales=a.scales)
    if a.init == "reference":
        reference_init(model)
    if a.out_bias is not None:
        with torch.no_grad():
            model.out.bias.fill_(a.out_bias)
    geco = Geco(a.kappa, a.rate)
    opt = torch.optim.Adam(list(model.parameters()) + list(geco.parameters()), lr=a.lr)
    log = open(os.path.join(a.out, "metrics.csv"), "w")
    log.write("epoch,loss,rec,kl,lambda,seconds\n")
    start = time.time()
    for epoch in range(1, a.epochs + 1):
        sums = np.zeros(4)
        plan = epoch_batches(len(images), a.batch_size, rng)
        for idx in plan:
            x, y = batch(images, masks, idx, a.patch, a.foreground, rng)
            rec, kept, kl = loss_parts(model, x, y, a.topk if a.loss == "geco" else 1.0, gen)
            if a.loss == "geco":
                loss, lam = geco(rec, kept, kl)
            else:
                loss, lam = rec + kl, torch.tensor(1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), rec.item(), kl.item(), lam.item()]
        m = sums / len(plan)
        log.write(f"{epoch},{m[0]:.4f},{m[1]:.4f},{m[2]:.4f},{m[3]:.4f},{time.time() - start:.1f}\n")
        log.flush()
        if epoch % 20 == 0 or epoch == a.epochs:
            print(f"epoch {epoch}: loss {m[0]:.2f} rec {m[1]:.2f} kl {m[2]:.3f} lambda {m[3]:.3f}", flush=True)
    model.eval()
    samples = sample(model, te["images"].astype(np.float32), a.samples, gen)
    save_npz(os.path.join(a.out, "samples.npz"), samples=samples)
    json.dump({"train_seconds": time.time() - start, **vars(a)}, open(os.path.join(a.out, "run.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
