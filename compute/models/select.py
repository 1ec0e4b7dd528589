"""Which model: by name, by version hash, or the region's default.

The one owner of the rule "which model answers when none is named". Every trainer ranks its run's
models by their blocked score and records the best model *with skill* as the region's default for
its role (:func:`record_default`, ``REGION/models/defaults.json``); ``map``, ``detect``,
``inventory``, ``serve``, ``seed``, ``/point``, TileJSON, WMTS and the dashboard all ask
:func:`default_model`. A model with no skill is never the default (:func:`has_skill`).

A card's ``skill`` block, written by the trainers, is what ranking reads::

    "skill": {"metric": "roc_auc", "value": 0.91, "ci95": [0.88, 0.94], "chance": 0.5,
              "method": "5-fold x 3 spatial CV" | "blocked test, bootstrap CI",
              "has_skill": true, "rank": 1, "run_id": "..."}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.region.raster_io import write_json_atomic
from slidemap.compute.models.store import ModelInfo, list_models, read_card
from slidemap.errors import BuildError, ModelError

ROLES: dict[str, str] = {"susceptibility": "lsm", "detection": "unet"}
DEFAULTS_FILE = "defaults.json"
VERSION_RE = re.compile(r"^[0-9a-f]{6,64}$")


def role_of(kind: str) -> str:
    for role, k in ROLES.items():
        if k == kind:
            return role
    raise ValueError(f"unknown model kind {kind!r}; known: {sorted(ROLES.values())}")


def skill_of(card: dict[str, Any]) -> dict[str, Any]:
    skill = card.get("skill")
    return skill if isinstance(skill, dict) else {}


def has_skill(card: dict[str, Any]) -> bool:
    """True unless the card records no skill. Cards older than the ``skill`` block count as
    skilled only when their blocked ROC-AUC / F1 is clearly above chance."""
    skill = skill_of(card)
    if "has_skill" in skill:
        return bool(skill["has_skill"])
    metrics = card.get("metrics") or {}
    blocked = metrics.get("blocked") if isinstance(metrics.get("blocked"), dict) else {}
    if card.get("kind") == "lsm":
        return float(blocked.get("roc_auc") or 0.0) > 0.6
    return float(blocked.get("f1") or 0.0) > 0.1


def score_of(card: dict[str, Any]) -> float:
    skill = skill_of(card)
    if "value" in skill and skill["value"] is not None:
        return float(skill["value"])
    blocked = (card.get("metrics") or {}).get("blocked") or {}
    return float(blocked.get("roc_auc" if card.get("kind") == "lsm" else "f1") or float("-inf"))


def skill_note(card: dict[str, Any]) -> str:
    """A short human label, e.g. ``ROC-AUC 0.912 [0.88, 0.94]`` or ``NO SKILL (ROC-AUC 0.52 [0.41, 0.63])``."""
    skill = skill_of(card)
    metric = str(skill.get("metric") or ("roc_auc" if card.get("kind") == "lsm" else "f1"))
    label = {"roc_auc": "ROC-AUC", "f1": "F1", "pr_auc": "PR-AUC"}.get(metric, metric)
    value = score_of(card)
    text = f"{label} {value:.3f}" if value != float("-inf") else f"{label} unknown"
    ci = skill.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{float(ci[0]):.2f}, {float(ci[1]):.2f}]"
    return text if has_skill(card) else f"NO SKILL ({text})"


def best_model(candidates: list[ModelInfo]) -> ModelInfo | None:
    """The highest-scoring candidate with skill (ties: the newest), or None."""
    skilled = [m for m in candidates if has_skill(m.card)]
    if not skilled:
        return None
    # candidates arrive newest first; max() keeps the first of equal scores
    return max(skilled, key=lambda m: score_of(m.card))


def _defaults_path(region_dir: str | Path) -> Path:
    return RegionLayout.of(region_dir).models / DEFAULTS_FILE


def read_defaults(region_dir: str | Path) -> dict[str, Any]:
    path = _defaults_path(region_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def record_default(region_dir: str | Path, role: str, info: ModelInfo | None, reason: str) -> None:
    """Record ``info`` as the region's default model for ``role`` (None: no model has skill)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {sorted(ROLES)}")
    data = read_defaults(region_dir)
    if info is None:
        data[role] = {"name": None, "version": None, "reason": reason}
    else:
        data[role] = {
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "folder": info.path.name,
            "score": score_of(info.card),
            "metric": skill_of(info.card).get("metric"),
            "reason": reason,
        }
    write_json_atomic(_defaults_path(region_dir), data)


def default_model(region_dir: str | Path, role: str) -> ModelInfo | None:
    """The region's default model for ``role``: the recorded one if it is still there and has skill,
    else the best with skill among the artefacts of the newest training run, else None."""
    kind = ROLES[role]
    models = list_models(region_dir, kind)
    recorded = read_defaults(region_dir).get(role) or {}
    if recorded.get("version"):
        for info in models:
            if info.version == recorded["version"] and info.name == recorded.get("name"):
                return info if has_skill(info.card) else None
    elif role in read_defaults(region_dir):
        return None  # the latest run recorded that no model has skill
    newest_run = next((m.card.get("run_id") for m in models if m.card.get("run_id")), None)
    pool = [m for m in models if m.card.get("run_id") == newest_run] if newest_run else models
    # one artefact per name: the newest
    seen: set[str] = set()
    latest = [m for m in pool if not (m.name in seen or seen.add(m.name))]
    return best_model(latest)


def resolve_model(
    region_dir: str | Path, role: str, spec: str | None = None, allow_path: bool = False
) -> ModelInfo:
    """The model ``spec`` names: None -> the default; a version hash (or a unique prefix of at least
    6 hex digits); a name -> its newest version; a folder (only with ``allow_path``, i.e. the CLI)."""
    kind = ROLES[role]
    models = list_models(region_dir, kind)
    where = RegionLayout.of(region_dir).models / kind
    if spec is None or spec == "":
        info = default_model(region_dir, role)
        if info is not None:
            return info
        if not models:
            cmd = "lsm" if kind == "lsm" else "unet"
            raise BuildError(f"{where}: no {role} model yet; run `slidemap train {cmd} {region_dir}` first")
        raise ModelError(
            f"{where}: no {role} model has skill on its blocked test, so there is no default; "
            f"name one to use it anyway ({', '.join(sorted({m.name for m in models}))})"
        )
    if allow_path and ("/" in spec or spec.startswith(".")) and Path(spec).is_dir():
        card = read_card(spec)
        if card.get("kind") != kind:
            raise ModelError(f"{spec}: a {card.get('kind')!r} model, not a {role} ({kind}) model")
        return ModelInfo(card.get("name", Path(spec).name), kind, card.get("version", ""), Path(spec), card)
    for info in models:  # newest first
        if info.name == spec:
            return info
    if VERSION_RE.match(spec):
        hits = [m for m in models if m.version.startswith(spec)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ModelError(f"model version {spec!r} is ambiguous ({len(hits)} models); give more digits")
    names = sorted({m.name for m in models})
    known = f"names: {', '.join(names)}" if names else f"none trained; run `slidemap train` on {region_dir}"
    raise ModelError(f"no {role} model {spec!r} in {where}; give a name or a version hash ({known})")


def default_models_status(region_dir: str | Path) -> dict[str, dict[str, Any] | None]:
    """``slidemap status --json``'s ``default_models``: per role name, version, path, score (or None)."""
    out: dict[str, dict[str, Any] | None] = {}
    for role in ROLES:
        info = default_model(region_dir, role)
        if info is None:
            out[role] = None
            continue
        skill = skill_of(info.card)
        out[role] = {
            "name": info.name,
            "version": info.version,
            "path": str(info.path.resolve()),
            "score": score_of(info.card),
            "metric": skill.get("metric"),
            "ci95": skill.get("ci95"),
        }
    return out
