"""Weights to and from PyTorch: `apunet export` loaded by bench/torch_peer.py gives the same
mean mask and samples for the same latents, and a PyTorch model's weights make an apunet run
that samples what PyTorch computes. Skipped, with the reason, where torch or safetensors is
not installed (CI's venv has neither: the check runs where a user has PyTorch)."""
import sys

import numpy as np
import pytest

from conftest import ROOT, cli
import apunet

torch = pytest.importorskip("torch", reason="PyTorch is not installed: pip install torch safetensors to check exported weights against PyTorch")
pytest.importorskip("safetensors", reason="safetensors is not installed: pip install safetensors to check exported weights against PyTorch")
sys.path.insert(0, str(ROOT / "bench"))
import torch_peer  # noqa: E402


def same_outputs(model, run, images, n=6, seed=5):
    """apunet's samples, mean and noise for `images` [N,C,H,W] against the PyTorch model's
    logits for that noise: the mean to 1e-4, and every sample whose logit is not within 1e-3
    of the threshold (float rounding may tip those) identical."""
    samples, mean, noise = run.sample(images, n=n, seed=seed, return_noise=True)
    assert noise.shape == (len(images), n, model.cfg["latent_dim"])
    logits = model.decode(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(noise)).numpy()
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    err = np.abs(probs.mean(1) - mean).max()
    assert err < 1e-4, f"mean masks differ by {err}"
    clear = np.abs(logits) > 1e-3
    assert clear.mean() > 0.99
    assert np.array_equal((logits > 0)[clear], samples.astype(bool)[clear])
    return mean


def test_exported_run_gives_the_same_masks_in_pytorch(trained, tmp_path):
    out = tmp_path / "model.safetensors"
    said = cli("export", "--run", str(trained["run"]), "--out", str(out)).stdout
    assert "bench/torch_peer.py" in said
    model, config = torch_peer.load(str(out))
    assert config["model"]["filters"] == [8, 16]
    images = trained["images"][:4, None]
    mean = same_outputs(model, apunet.load_run(trained["run"]), images)
    assert np.ptp(mean) > 1e-3, "a constant output would compare nothing"


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_pytorch_weights_make_a_run_that_samples_the_same(tmp_path, norm):
    # Transformers at every level over 144x144 inputs: windowed attention at level 0 (72x72
    # tokens, 8x8 windows) and shifted windows with their mask at level 1 (36x36, 9x9 windows).
    torch.manual_seed(0)
    model = torch_peer.ProbUNet({"filters": [4, 8, 8], "transformer_levels": "all", "norm": norm, "latent_dim": 3, "fcomb_layers": 2})
    images = np.random.default_rng(1).random((2, 1, 144, 144), dtype=np.float32)
    # Weights whose output depends on every layer (checked: full instead of windowed attention
    # moves the mean mask by 0.06 for each norm): nonzero biases and norm scales, convs without
    # a norm scaled up, and batch norm's running statistics those of the images.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.3, 0.3)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
            elif norm == "none" and p.dim() == 4:
                p.mul_(2.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()
        model.decode(torch.from_numpy(images), torch.zeros(2, 1, 3))
    model.eval()
    weights = tmp_path / "torch.safetensors"
    torch_peer.save(model, str(weights), size=144)
    cli("import-weights", "--weights", str(weights), "--out", str(tmp_path / "run"))
    run = apunet.load_run(tmp_path / "run")
    assert 'transformer_levels = "all"' in run.config
    same_outputs(model, run, images, n=4)
    # And back: the run's export is the file PyTorch wrote, tensor for tensor.
    again = tmp_path / "again.safetensors"
    cli("export", "--run", str(tmp_path / "run"), "--out", str(again))
    from safetensors.torch import load_file

    a, b = load_file(str(weights)), load_file(str(again))
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_import_weights_refuses_a_file_that_does_not_fit(tmp_path):
    model = torch_peer.ProbUNet({"filters": [4, 8]})
    weights = tmp_path / "w.safetensors"
    torch_peer.save(model, str(weights), size=32)
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state.pop("fcomb.out.bias")
    state["unet.decoder.0.block.convs.0.weight"] = torch.zeros(4, 3, 3, 3)
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
    save_file(state, str(weights), metadata=meta)
    out = cli("import-weights", "--weights", str(weights), "--out", str(tmp_path / "run"), check=False)
    assert out.returncode != 0
    assert "fcomb.out.bias" in out.stderr and "wrong shape" in out.stderr, out.stderr
    assert not (tmp_path / "run" / "config.toml").exists()
