"""The Python API against the command line, over arrays as notebooks hold them."""
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

import apunet
from conftest import ROOT, cli


def test_train_reports_each_epoch_and_sample_gives_the_clis_bits(trained):
    assert trained["summary"]["epochs_run"] == 2
    assert [m["epoch"] for m in trained["seen"]] == [1, 2]
    assert all(np.isfinite(m["loss"]) for m in trained["seen"])
    out = trained["dir"] / "cli_samples.npz"
    cli("sample", "--run", str(trained["run"]), "--data", str(trained["data"]), "--out", str(out), "--n", "4", "--seed", "3")
    with np.load(out) as f:
        want_s, want_m = f["samples"], f["mean"]
    run = apunet.load_run(trained["run"])
    samples, mean = run.sample(trained["images"], n=4, seed=3)
    assert samples.dtype == np.uint8 and samples.shape == want_s.shape
    assert mean.dtype == np.float32 and mean.shape == want_m.shape
    assert np.array_equal(samples, want_s) and np.array_equal(mean, want_m)


def test_any_memory_order_and_safe_dtypes_give_the_same_bits(trained):
    run = apunet.load_run(trained["run"])
    images = trained["images"]
    want = run.sample(images, n=2, seed=1)
    wide = np.repeat(images, 2, axis=0)[::2]            # non-contiguous rows
    assert not wide.flags.c_contiguous
    for x in (np.asfortranarray(images), wide, images.astype(np.float64)):
        got = run.sample(x, n=2, seed=1)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # uint8 images read as /255, as apunet reads uint8 npz images.
    u8 = (images * 255).round().astype(np.uint8)
    a, b = run.sample(u8, n=2, seed=1), run.sample(u8.astype(np.float32) / np.float32(255), n=2, seed=1)
    assert np.array_equal(a[0], b[0])
    # One [H,W] image: [n,H,W] and [H,W].
    s, m = run.sample(images[0], n=3, seed=0)
    assert s.shape == (3, 32, 32) and m.shape == (32, 32)


def test_wrong_input_raises_the_clis_message(trained):
    run = apunet.load_run(trained["run"])
    with pytest.raises(ValueError, match=r"expected \[H,W\] or \[N,H,W\] or \[N,C,H,W\]"):
        run.sample(np.zeros((1, 1, 1, 32, 32), np.float32))
    with pytest.raises(TypeError, match="float .* or uint8"):
        run.sample(np.zeros((2, 32, 32), np.int32))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        run.sample(np.full((2, 32, 32), 3.0, np.float32))
    with pytest.raises(ValueError, match="2-channel images but run .* takes 1"):
        run.sample(np.zeros((2, 2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="holds no run|config.toml"):
        apunet.load_run(trained["dir"] / "nowhere")
    with pytest.raises(ValueError, match="checkpoint must be"):
        apunet.load_run(trained["run"], checkpoint="newest")


def test_predict_arrays_and_files(trained, tmp_path):
    run = apunet.load_run(trained["run"])
    big = np.tile(trained["images"][0], (2, 3))[:50, :70]
    samples, mean = run.predict(big, n=3, seed=0)
    assert samples.shape == (3, 50, 70) and mean.shape == (50, 70)
    png = tmp_path / "x.png"
    import zlib, struct  # a grayscale PNG without extra packages
    raw = b"".join(b"\0" + bytes((np.asarray(big) * 255).astype(np.uint8)[y]) for y in range(50))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 70, 50, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    [report] = run.predict(png, out=tmp_path / "pred", n=3, seed=0)
    assert report["name"] == "x" and report["samples"].shape == (1, 3, 50, 70)
    assert "intensities" in report["applied"]
    with pytest.raises(ValueError, match="give out="):
        run.predict(png)


def test_metrics_match_the_cli(trained, tmp_path):
    run = apunet.load_run(trained["run"])
    samples, _ = run.sample(trained["images"], n=4, seed=0)
    got = apunet.metrics(samples, trained["masks"])
    np.savez(tmp_path / "s.npz", samples=samples)
    cli("metrics", "--samples", str(tmp_path / "s.npz"), "--labels", str(trained["data"]), "--out", str(tmp_path / "m"), "--quiet")
    want = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert got["ged"] == want["metrics"]["ged"]["mean"] and got["hm_iou"] == want["metrics"]["hm_iou"]["mean"]
    assert got["dice"] == want["metrics"]["dice_majority"]["mean"] and got["ece"] == want["ece"]
    with pytest.raises(TypeError, match="binary masks"):
        apunet.metrics(samples.astype(np.float32), trained["masks"])
    with pytest.raises(ValueError, match=r"binary \(0 or 1\), found values in \[2, 2\]"):
        apunet.metrics(np.full_like(samples, 2), trained["masks"])


def test_read_scan_gives_hu_and_spacing():
    shared = Path(os.environ.get("APUNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
    hu, spacing, units = apunet.read_scan(shared / "ct" / "CT_small.dcm")
    assert hu.shape == (1, 128, 128) and hu.dtype == np.float32 and units == "hu"
    assert spacing is not None and all(s > 0 for s in spacing)
    assert hu.min() < -500 and hu.max() > 500
    with pytest.raises(ValueError, match="does not exist"):
        apunet.read_scan(shared / "nope.dcm")


def test_ctrl_c_stops_training_and_the_run_resumes(trained, tmp_path):
    out = tmp_path / "run"
    def interrupt(m):
        if m["epoch"] == 1:
            signal.raise_signal(signal.SIGINT)
    # Python's own Ctrl-C handler for the test: a shell that starts the tests in the background
    # (`.ci/run &`) leaves SIGINT ignored, and Python then installs none.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            apunet.train(trained["data"], out, progress=interrupt, epochs=4, filters=[8, 16], batch_size=4, val_fraction=0,
                         figure_every=100000, quiet=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1, "stopped during epoch 2: the run holds epoch 1"
    summary = apunet.train(None, out, resume=out, epochs=4, quiet=True)
    assert summary["epochs_run"] == 3 and summary["target_epochs"] == 4


def test_the_notebook_in_docs_runs(tmp_path, monkeypatch):
    """docs/python.md's python code blocks, run in order as a notebook would (its PyTorch block,
    fenced `py`, needs torch: tests/python/test_torch.py makes the same calls)."""
    text = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/python.md has python blocks"
    monkeypatch.chdir(tmp_path)
    scope = {}
    for b in blocks:
        exec(compile(b, "docs/python.md", "exec"), scope)


def test_the_gil_is_released_while_sampling(trained):
    """Another Python thread runs in the middle of a sampling call (it could not, were the GIL held)."""
    import threading
    import time
    run = apunet.load_run(trained["run"])
    images = np.repeat(trained["images"], 4, axis=0)
    stamps, done = [], threading.Event()

    def count():
        k = 0
        while not done.is_set():
            k += 1
            if k % 100 == 0:
                stamps.append(time.perf_counter())

    t = threading.Thread(target=count)
    t.start()
    start = time.perf_counter()
    run.sample(images, n=16, seed=0)
    end = time.perf_counter()
    done.set()
    t.join()
    middle = [s for s in stamps if start + 0.25 * (end - start) < s < end - 0.25 * (end - start)]
    assert len(middle) > 10, f"{len(middle)} ticks of the other thread in the middle half of {end - start:.2f} s of sampling"
