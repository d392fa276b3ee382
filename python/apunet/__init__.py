"""apunet from Python: load a trained run and sample it, predict scans, train, score.

The same library as the `apunet` command line, over numpy arrays::

    import apunet
    run = apunet.load_run("runs/a")
    samples, mean = run.sample(images, n=16, seed=0)   # uint8 [N,n,H,W], float32 [N,H,W]

Images are network input: intensities in [0, 1] (float, or uint8 scaled by 1/255), shaped
[H,W], [N,H,W] or [N,C,H,W], in any memory order. A wrong shape or dtype raises TypeError or
ValueError with the command line's message; the GIL is released while apunet computes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _apunet

__all__ = ["Run", "load_run", "train", "metrics", "read_scan"]

PathLike = Union[str, "os.PathLike[str]"]


def _images(x: Any, name: str, dims: Sequence[int]) -> np.ndarray:
    """float32 in any memory order; uint8 scaled to [0, 1] as apunet reads uint8 npz images."""
    a = np.asarray(x)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255.0)
    elif a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    else:
        raise TypeError(f"{name} must be float (intensities in [0, 1]) or uint8, got dtype {a.dtype}")
    if a.ndim not in dims:
        shapes = {2: "[H,W]", 3: "[N,H,W]" if 4 in dims else "[C,H,W]", 4: "[N,C,H,W]"}
        want = " or ".join(shapes[d] for d in dims)
        raise ValueError(f"{name} has shape {list(a.shape)}; expected {want}")
    return a


def _masks(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype != np.bool_ and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be binary masks (bool, or integers 0 and 1), got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name} must be binary (0 or 1), found values in [{a.min()}, {a.max()}]")
    a = a.astype(np.uint8, copy=False)
    if a.ndim != 4:
        raise ValueError(f"{name} has shape {list(a.shape)}; expected [N, n, H, W]")
    return a


class Run:
    """A trained run directory (config.toml and checkpoints)."""

    def __init__(self, path: PathLike, checkpoint: str = "best", device: str = "cpu", allow_mismatch: bool = False):
        self.path = os.fspath(path)
        self._run = _apunet.Run(self.path, checkpoint, device, allow_mismatch)

    def __repr__(self) -> str:
        return f"apunet.Run({self.path!r})"

    @property
    def config(self) -> str:
        """The run's config.toml."""
        return self._run.config()

    def sample(self, images: Any, n: int = 16, seed: int = 0, batch_size: int = 8, return_noise: bool = False) -> Tuple[np.ndarray, ...]:
        """n masks from the prior per image, as `apunet sample`: samples uint8 [N,n,H,W] and the
        mean probability float32 [N,H,W] (for one [H,W] image: [n,H,W] and [H,W]).

        `return_noise`: also the standard normals eps float32 [N,n,L] behind the samples (each
        sample's latent is the prior's mu + sigma * eps), e.g. for the same samples in PyTorch
        (bench/torch_peer.py, `decode`)."""
        a = _images(images, "images", (2, 3, 4))
        single = a.ndim == 2
        a = a.reshape((1, 1) + a.shape) if single else (a[:, None] if a.ndim == 3 else a)
        out = self._run.sample(a, n, seed, batch_size)
        out = tuple(o[0] for o in out) if single else out
        return out if return_noise else out[:2]

    def predict(
        self,
        source: Any,
        out: Optional[PathLike] = None,
        n: int = 16,
        seed: int = 0,
        batch_size: int = 8,
        overlap: float = 0.5,
        window: Optional[str] = None,
    ) -> Union[Tuple[np.ndarray, np.ndarray], List[Dict[str, Any]]]:
        """As `apunet predict`, patch by patch over an image of any size.

        An array ([H,W] or [C,H,W] in [0, 1]) gives (samples uint8 [n,H,W], mean float32 [H,W]).
        A path (a scan, a DICOM series folder, a folder of scans) is preprocessed as the run was
        trained and written into `out` (required): one report per scan, with its samples and
        mean read back from the scan's samples.npz."""
        if isinstance(source, (str, os.PathLike)):
            if out is None:
                raise ValueError("predict on a path writes its outputs: give out=FOLDER")
            reports = json.loads(self._run.predict_path(os.fspath(source), os.fspath(out), n, seed, batch_size, overlap, window))
            for r in reports:
                npz = os.path.join(r["dir"], "samples.npz")
                if os.path.exists(npz):
                    with np.load(npz) as f:
                        r["samples"], r["mean"] = f["samples"], f["mean"]
            return reports
        if window is not None:
            raise ValueError("window applies to scans in HU given by path; an array is network input already")
        a = _images(source, "image", (2, 3))
        a = a[None] if a.ndim == 2 else a
        return self._run.predict_array(a, n, seed, batch_size, overlap)


def load_run(path: PathLike, checkpoint: str = "best", device: str = "cpu", allow_mismatch: bool = False) -> Run:
    """Opens a trained run (`checkpoint`: "best" or "last")."""
    return Run(path, checkpoint, device, allow_mismatch)


def _flag(key: str, value: Any) -> List[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    return [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]


def train(data: Optional[PathLike], out: PathLike, progress: Optional[Callable[[Dict[str, Any]], None]] = None, **settings: Any) -> Dict[str, Any]:
    """Trains as `apunet train --data DATA --out OUT --KEY VALUE ...` does, with the same
    settings and defaults (epochs=60, lr=5e-4, ...; True for a flag alone). `progress` is called
    with each finished epoch's metrics. Ctrl-C stops between steps and raises
    KeyboardInterrupt; the run resumes with train(None, out, resume=out)."""
    argv = ["train", "--out", os.fspath(out)] + (["--data", os.fspath(data)] if data is not None else [])
    if settings.get("resume") is not None and not isinstance(settings["resume"], bool):
        argv = ["train", "--resume", os.fspath(settings.pop("resume"))] + (["--data", os.fspath(data)] if data is not None else [])
    for key, value in settings.items():
        argv += _flag(key, value)
    return _apunet.train(argv, progress)


def metrics(samples: Any, labels: Any, seed: int = 0) -> Dict[str, Any]:
    """Scores samples [N,n,H,W] against the experts' labels [N,A,H,W] as `apunet metrics`:
    GED, Hungarian-matched IoU (n a multiple of A), Dice of the mean mask against the majority,
    ECE; "report" holds everything metrics.json holds."""
    report = json.loads(_apunet.metrics(_masks(samples, "samples"), _masks(labels, "labels"), seed))
    m = report["metrics"]
    return {
        "ged": m["ged"]["mean"],
        "hm_iou": m["hm_iou"]["mean"],
        "dice": m["dice_majority"]["mean"],
        "ece": report["ece"],
        "report": report,
    }


def read_scan(path: PathLike, units: Optional[str] = None) -> Tuple[np.ndarray, Optional[Tuple[float, float]], str]:
    """A scan (DICOM file or series folder, NIfTI, PNG/TIFF) as float32 [D,H,W] (HU for CT), its
    in-plane spacing (rows, columns) in mm where the file states one, and its units ("hu" or
    "unit"; `units` states them for an ambiguous NIfTI)."""
    return _apunet.read_scan(os.fspath(path), units)
