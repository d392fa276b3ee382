"""Finds the apunet package for pytest: the installed one (pip install .), else the extension
that `cargo build -p apunet-python` left in target/ (what .ci/run builds, sharing the test
build), copied beside a copy of python/apunet in a temporary folder."""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _extension():
    env = os.environ.get("APUNET_EXTENSION")
    if env:
        return Path(env)
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "lib_apunet.so"
        if p.exists():
            return p
    return None


if importlib.util.find_spec("apunet") is None or os.environ.get("APUNET_EXTENSION"):
    ext = _extension()
    if ext is None:
        raise RuntimeError("no apunet package: pip install . (or cargo build -p apunet-python)")
    where = Path(tempfile.mkdtemp(prefix="apunet-py-"))
    shutil.copytree(ROOT / "python" / "apunet", where / "apunet")
    shutil.copy(ext, where / "apunet" / "_apunet.abi3.so")
    sys.path.insert(0, str(where))

import apunet  # noqa: E402


def cli(*args, check=True):
    """The apunet command line, run by the same package (its console script's entry point)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from apunet._cli import main; sys.argv[0] = 'apunet'; main()", *args],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if check and out.returncode != 0:
        raise AssertionError(f"apunet {' '.join(args)}: {out.stderr}")
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny run on synthetic crops, trained through the Python API with a progress callback."""
    d = tmp_path_factory.mktemp("run")
    data = d / "data.npz"
    cli("synth", "--out", str(data), "--count", "12", "--size", "32", "--seed", "1")
    seen = []
    summary = apunet.train(data, d / "run", progress=seen.append, epochs=2, filters=[8, 16], batch_size=4,
                           val_fraction=0, figure_every=100000, quiet=True, seed=3)
    return {"dir": d, "data": data, "run": d / "run", "summary": summary, "seen": seen,
            "images": np.load(data)["images"], "masks": np.load(data)["masks"]}
