"""Models for the server tests: fakes with the interfaces of ``docs/ARCHITECTURE.md`` (real spatial
context, so halos matter) and a real scikit-learn susceptibility artefact that any process can load.

The fakes are saved as artefacts in a region's registry (card with a ``skill`` block, a run id and
class breaks), so names, versions, hashes, defaults and ``?model=`` work as with trained models.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from slidemap.compute.models.store import read_card, save_artefact

_RUN = itertools.count(1)


def nan_mean(x: np.ndarray, size: int) -> np.ndarray:
    out = uniform_filter(np.nan_to_num(x, nan=0.0), size=size, mode="constant")
    bad = uniform_filter(np.isnan(x).astype(float), size=size, mode="constant") > 0
    out[bad] = np.nan
    return out


class FakeDetector:
    bands = ["B2", "B3", "B4", "B8"]
    halo = 4

    def __init__(self, card, calls, gate):
        self.version = card["version"]
        self.shift = float(card["hyperparameters"]["shift"])
        self.calls, self.gate = calls, gate

    def predict(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(image.shape)
        if self.gate is not None:
            self.gate.wait(20)
        ndvi = (image[3] - image[2]) / (image[3] + image[2] + 1e-6)
        smooth = nan_mean(ndvi, 2 * self.halo + 1)
        return (1 / (1 + np.exp(-10 * (smooth - self.shift)))).astype(np.float32)


class FakeSusceptibility:
    factor_names = ["slope", "altitude"]
    halo = 2

    def __init__(self, card, calls):
        self.version = card["version"]
        self.calls = calls

    def predict_block(self, stack: np.ndarray) -> np.ndarray:
        self.calls.append(stack.shape)
        h = self.halo
        out = np.clip(nan_mean(stack[0], 2 * h + 1) / 45.0, 0, 1)
        return out[h:-h, h:-h].astype(np.float32)


def skill_block(value: float = 0.8, has_skill: bool = True, metric: str = "roc_auc") -> dict:
    return {"metric": metric, "value": value, "ci95": [value - 0.05, value + 0.05], "chance": 0.5,
            "method": "test", "has_skill": has_skill, "rank": 1}


def add_fake_model(region: Path, kind: str, name: str, shift: float = 0.3, skill: bool = True,
                   breaks: list[float] | None = None) -> str:
    """Save a fake artefact as a training run of its own (so it becomes the default when skilled)."""

    def write(path: Path) -> None:
        path.write_bytes(f"fake {kind} {name} {shift} {skill}".encode())

    run_id = f"test-run-{next(_RUN):04d}"
    card = {"synthetic": True, "hyperparameters": {"shift": shift}, "halo": 4, "inputs": {}, "run_id": run_id,
            "skill": {**skill_block(0.8 if skill else 0.52, skill, "roc_auc" if kind == "lsm" else "f1"), "run_id": run_id}}
    if kind == "lsm":
        card["class_breaks"] = breaks or [0.1, 0.2, 0.35, 0.5, 1.0]
    folder = save_artefact(region / "models", kind, name, card, write)
    return read_card(folder)["version"]


def make_loaders(calls: dict, gate: threading.Event | None = None) -> dict:
    return {
        "unet": lambda path: FakeDetector(read_card(path), calls.setdefault("unet", []), gate),
        "lsm": lambda path: FakeSusceptibility(read_card(path), calls.setdefault("lsm", [])),
    }


def add_sklearn_lsm(region: Path, name: str = "logistic", seed: int = 0) -> str:
    """A real (tiny) scikit-learn susceptibility artefact that ``load_susceptibility`` loads in any
    process: logistic regression on the region's normalised factors against a slope threshold."""
    import joblib
    import rasterio
    from sklearn.linear_model import LogisticRegression

    from slidemap.compute.terrain.factors import Encoding, load_normalisation

    build = region / "build"
    norm = load_normalisation(build)
    with rasterio.open(build / "factors.tif") as src:
        stack = src.read().astype(np.float32)
        names = list(src.descriptions)
    encoding = Encoding.build(norm.subset(names))
    x = encoding.encode(stack).reshape(len(encoding), -1).T
    y = (stack[names.index("slope")].ravel() > np.nanmedian(stack[names.index("slope")])).astype(int)
    ok = np.isfinite(stack).all(axis=0).ravel()
    rng = np.random.default_rng(seed)
    pick = rng.choice(np.flatnonzero(ok), size=min(2000, int(ok.sum())), replace=False)
    model = LogisticRegression(max_iter=200).fit(x[pick], y[pick])
    run_id = f"test-run-{next(_RUN):04d}"
    card = {"synthetic": True, "factor_names": names, "normalisation": norm.subset(names).to_list(), "halo": 0,
            "encoding": encoding.to_dict(), "centre_channels": list(range(len(encoding))),
            "architecture": "centre-cell logistic_regression", "run_id": run_id,
            "class_breaks": [0.2, 0.4, 0.6, 0.8, 1.0], "skill": {**skill_block(0.9), "run_id": run_id}}
    folder = save_artefact(region / "models", "lsm", name, card, lambda p: joblib.dump(model, p),
                           weights_file="model.joblib")
    return read_card(folder)["version"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free loopback port; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
