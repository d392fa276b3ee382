"""The timing shared by the PyTorch peers of `apunet bench` (torch_peer.py, torch_hpunet.py):
the same flags, inputs, Adam step and JSON report, and the encoder both models share, so that
only the rest of the model differs."""
import argparse, json, resource, time

import torch


def encode_levels(levels, x):
    """Each encoder level's output, with 2x2 average pooling before every level but the first:
    the encoder of both apunet models."""
    outs = []
    for i, level in enumerate(levels):
        if i > 0:
            x = torch.nn.functional.avg_pool2d(x, 2)
        x = level(x)
        outs.append(x)
    return outs


def parser(doc, filters_help):
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--filters", default=None, help=filters_help)
    return ap


def run(a, make_model, filters, extra=None):
    """Times `a.steps` training steps (`model.loss(x, y)`, backward, Adam at 1e-4) and sampling
    (`model.sample(x, a.samples)`) after `a.warmup` of each, printing a line per step as it ends
    and then the JSON report."""
    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    b = a.batch_size or (32 if gpu else 8)
    torch.manual_seed(0)
    m = make_model(filters).to(dev)
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    x = (0.1 + 0.05 * torch.randn(b, 1, a.size, a.size)).to(dev)
    y = (torch.arange(a.size) > a.size // 2).float().expand(b, 1, a.size, a.size).contiguous().to(dev)
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    def timed(label, step_fn):
        times = []
        for step in range(a.warmup + a.steps):
            t = time.perf_counter()
            step_fn()
            sync()
            dt = time.perf_counter() - t
            print(f"{label} step {step}: {dt:.3f} s{' (warm-up)' if step < a.warmup else ''}", flush=True)
            if step >= a.warmup:
                times.append(dt)
        return times

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = m.loss(x, y)
        loss.backward()
        opt.step()
        loss.item()

    m.train()
    times = timed("train", train_step)
    m.eval()
    stimes = timed("sample", lambda: m.sample(x, a.samples).cpu())
    rep = {
        "impl": f"pytorch {torch.__version__} eager fp32",
        "device": a.device,
        **(extra or {}),
        "batch_size": b,
        "size": a.size,
        "filters": filters,
        "params": sum(p.numel() for p in m.parameters()),
        "train_images_per_s": a.steps * b / sum(times),
        "train_step_s_median": sorted(times)[len(times) // 2],
        "samples_per_image": a.samples,
        "sampled_masks_per_s": a.steps * b * a.samples / sum(stimes),
        "sample_batch_s_median": sorted(stimes)[len(stimes) // 2],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(rep, indent=2))
