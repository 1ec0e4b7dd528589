"""Versioned model artefacts: a folder with the weights, a JSON card and a SHA-256.

``REGION/models/<kind>/<name>-<version>/`` holds ``model.keras`` (or ``model.joblib``),
``card.json`` and ``weights.sha256``. The version is the first 12 hex digits of the weights'
SHA-256, so a retrained model is a new version and caches keyed by it never go stale.
Loading refuses an artefact whose weights no longer match their hash.

"Newest" is decided by the card's ``sequence``: one more than the largest sequence already under
the same models root, taken at save time (a wall-clock stamp to the second ties when two models are
saved in the same second). ``created_ns`` breaks the rare tie of two concurrent saves.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import time
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.region.raster_io import sha256_file, write_json_atomic
from slidemap.errors import ModelError

WEIGHT_FILES = ("model.keras", "model.joblib")
CARD = "card.json"
HASH = "weights.sha256"
VERSION_DIGITS = 12
_LIBRARIES = ("slidemap", "numpy", "tensorflow", "tensorflow-cpu", "keras", "scikit-learn", "rasterio")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    version: str
    path: Path
    card: dict[str, Any]

    def to_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "path": str(self.path.resolve()),
            "metrics": self.card.get("metrics", {}),
            "created": self.card.get("created"),
            "sequence": self.card.get("sequence"),
            "synthetic": self.card.get("synthetic"),
            "skill": self.card.get("skill"),
        }


def new_run_id() -> str:
    """The one run-id format, for training and inventory runs alike: UTC time to the second, then
    4 random hex digits so that two runs started in one second stay apart; sorts by time as text."""
    import secrets

    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def save_artefact(
    root: str | Path,
    kind: str,
    name: str,
    card: dict[str, Any],
    write_weights: Callable[[Path], None],
    weights_file: str = "model.keras",
    out_dir: str | Path | None = None,
) -> Path:
    """Write an artefact atomically and return its folder.

    ``write_weights(path)`` writes the weights file (e.g. ``model.save``); the card gets
    ``name, kind, version, created, libraries`` filled in. With ``out_dir`` the artefact goes
    exactly there; otherwise to ``root/<kind>/<name>-<version>/``.
    """
    if weights_file not in WEIGHT_FILES:
        raise ValueError(f"weights file must be one of {WEIGHT_FILES}")
    root = Path(root)
    sequence = next_sequence(root)
    staging_parent = Path(out_dir).parent if out_dir else root / kind
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=staging_parent))
    try:
        weights = staging / weights_file
        write_weights(weights)
        digest = sha256_file(weights)
        version = digest[:VERSION_DIGITS]
        full_card = {
            **card,
            "name": name,
            "kind": kind,
            "version": version,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "created_ns": time.time_ns(),
            "sequence": sequence,
            "weights": weights_file,
            "libraries": library_versions(),
        }
        write_json_atomic(staging / CARD, full_card)
        (staging / HASH).write_text(f"{digest}  {weights_file}\n")
        target = Path(out_dir) if out_dir else root / kind / f"{name}-{version}"
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; a model folder is readable like any other
        if target.exists():
            shutil.rmtree(target)  # same weights hash: identical model, replace its card
        os.replace(staging, target)
        return target
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _order_key(card: dict[str, Any]) -> tuple[int, int, str]:
    return (int(card.get("sequence") or 0), int(card.get("created_ns") or 0), str(card.get("created") or ""))


def next_sequence(models_root: Path) -> int:
    """One more than the largest ``sequence`` of any card under ``models_root/<kind>/*/``."""
    largest = 0
    if models_root.is_dir():
        for card_path in models_root.glob(f"*/*/{CARD}"):
            try:
                largest = max(largest, int(json.loads(card_path.read_text()).get("sequence") or 0))
            except (OSError, ValueError, TypeError):
                continue
    return largest + 1


def read_card(path: str | Path) -> dict[str, Any]:
    card_path = Path(path) / CARD
    if not card_path.is_file():
        raise ModelError(f"{path}: not a slidemap model folder (no {CARD}); train one with `slidemap train`")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{card_path}: unreadable model card ({exc.msg}); retrain the model") from exc


def verify(path: str | Path) -> dict[str, Any]:
    """Return the card after checking the weights against their SHA-256; raise ModelError if not."""
    path = Path(path)
    card = read_card(path)
    weights = path / card.get("weights", "model.keras")
    hash_file = path / HASH
    if not weights.is_file():
        raise ModelError(f"{weights}: model weights missing; retrain or restore the artefact")
    if not hash_file.is_file():
        raise ModelError(f"{hash_file}: hash file missing; the artefact cannot be trusted, retrain it")
    expected = hash_file.read_text().split()[0]
    actual = sha256_file(weights)
    if actual != expected:
        raise ModelError(
            f"{weights}: SHA-256 {actual[:12]} does not match the recorded {expected[:12]}; "
            "the weights were changed or corrupted, retrain or restore the artefact"
        )
    return card


def list_models(region_dir: str | Path, kind: str | None = None) -> list[ModelInfo]:
    """Every artefact under ``REGION/models``, newest first."""
    models_root = RegionLayout.of(region_dir).models
    infos: list[ModelInfo] = []
    if not models_root.is_dir():
        return infos
    kinds = [kind] if kind else sorted(p.name for p in models_root.iterdir() if p.is_dir())
    for k in kinds:
        kind_dir = models_root / k
        if not kind_dir.is_dir():
            continue
        for folder in kind_dir.iterdir():
            if folder.name.startswith(".") or not (folder / CARD).is_file():
                continue
            try:
                card = read_card(folder)
            except ModelError:
                continue
            infos.append(ModelInfo(card.get("name", folder.name), k, card.get("version", ""), folder, card))
    infos.sort(key=lambda m: _order_key(m.card), reverse=True)
    return infos


def latest_model(region_dir: str | Path, kind: str, names: tuple[str, ...] = ()) -> ModelInfo | None:
    """The newest artefact of ``kind``; with ``names``, the newest of the first name that has one."""
    models = list_models(region_dir, kind)
    if not names:
        return models[0] if models else None
    for name in names:
        for info in models:
            if info.name == name:
                return info
    return None


def update_card(path: str | Path, updates: dict[str, Any]) -> dict[str, Any]:
    """Merge ``updates`` into an artefact's card (atomically) and return the new card.

    The card is not part of the version hash, so facts learnt after saving (the model's rank in
    its run, its fast form) can be added without making it a different model.
    """
    card = read_card(path)
    card.update(updates)
    write_json_atomic(Path(path) / CARD, card)
    return card
