"""`slidemap status`: what is built for a region, with absolute paths.

JSON keys (a contract other tools rely on): ``name, synthetic, grid, factors, factor_names,
imagery, labels, models, default_models, reports, caches, device`` (later features add keys, never
rename them). ``default_models`` is ``{"susceptibility": {name, version, path, score, ...} | null,
"detection": ...}`` from :mod:`slidemap.compute.models.select`. ``device`` is
:func:`slidemap.compute.models.runtime.device_summary`: where TensorFlow actually places ops
(``"GPU"``/``"CPU"``), the installed build, and the memory, XLA and precision set-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute import provenance
from slidemap.compute.region.manifest import load_manifest


def _abs(path: Path) -> str | None:
    return str(path.resolve()) if path.exists() else None


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class GridSummary(BaseModel):
    crs: str
    resolution: list[float] | None = None
    shape: list[int]
    bounds: list[float] | None = None
    transform: list[float] | None = None


class CacheEntry(BaseModel):
    name: str
    path: str
    bytes: int


class RegionStatus(BaseModel):
    """What ``slidemap status --json`` prints (paths absolute; None where a file is not built)."""

    name: str
    synthetic: bool
    root: str
    built: bool
    grid: GridSummary | None
    factors: str | None
    factor_names: list[str]
    normalisation: str | None
    imagery: str | None
    labels: str | None
    labels_imagery: str | None
    exclusion: str | None
    inventory: str | None
    models: list[dict[str, Any]] = Field(description="every model artefact: kind, name, version, path, card keys")
    default_models: dict[str, dict[str, Any] | None] = Field(description="per role: the default by blocked skill, or None")
    reports: list[str]
    caches: list[CacheEntry]
    maps: list[str]
    device: dict[str, Any] = Field(description="runtime.device_summary(): where TensorFlow places ops")


def region_status(region_dir: str | Path) -> RegionStatus:
    root, manifest = load_manifest(region_dir)
    layout = RegionLayout(root)
    factors_json = layout.factors_json
    grid: dict[str, Any] | None = None
    factor_names: list[str] = []
    if factors_json.is_file():
        data = json.loads(factors_json.read_text())
        g = data["grid"]
        grid = {
            "crs": g["crs"],
            "resolution": g.get("resolution"),
            "shape": g.get("shape", [g["height"], g["width"]]),
            "bounds": g.get("bounds"),
            "transform": g.get("transform"),
        }
        factor_names = [f["name"] for f in data["factors"]]
    from slidemap.compute.models.runtime import device_summary
    from slidemap.compute.models.select import default_models_status
    from slidemap.compute.models.store import list_models

    models = [m.to_status() for m in list_models(root)]
    reports_root = layout.reports
    reports = sorted(str(p.resolve()) for p in reports_root.rglob("report.json")) if reports_root.is_dir() else []
    caches_root = layout.cache
    caches = []
    if caches_root.is_dir():
        for entry in sorted(caches_root.iterdir()):
            if entry.is_dir():
                caches.append({"name": entry.name, "path": str(entry.resolve()), "bytes": _dir_size(entry)})
            elif entry.is_file():
                caches.append({"name": entry.name, "path": str(entry.resolve()), "bytes": entry.stat().st_size})
    maps_root = layout.maps
    maps = sorted(str(p.resolve()) for p in maps_root.glob("*.tif")) if maps_root.is_dir() else []
    return RegionStatus(**{
        "name": manifest.region.name,
        "synthetic": manifest.region.synthetic,
        "root": str(root),
        "built": factors_json.is_file(),
        "grid": grid,
        "factors": _abs(layout.factors_tif),
        "factor_names": factor_names,
        "normalisation": _abs(factors_json),
        "imagery": _abs(layout.imagery_tif),
        "labels": _abs(layout.labels_tif),
        "labels_imagery": _abs(layout.labels_imagery_tif),
        "exclusion": _abs(layout.exclusion_imagery_tif),
        "inventory": _abs(layout.inventory_gpkg),
        "models": models,
        "default_models": default_models_status(root),
        "reports": reports,
        "caches": caches,
        "maps": maps,
        "device": device_summary(),
    })


def format_status(status: RegionStatus | dict[str, Any]) -> str:
    """The status as a person reads it (a dict as ``--json`` printed it is read back first)."""
    status = (status if isinstance(status, RegionStatus) else RegionStatus.model_validate(status)).model_dump()
    lines = [f"region {status['name']}" + provenance.suffix(status["synthetic"])]
    lines.append(f"  folder      {status['root']}")
    if not status["built"]:
        lines.append(f"  not prepared: run `slidemap prepare {status['root']}`")
    else:
        g = status["grid"]
        lines.append(f"  grid        {g['crs']}  {g['shape'][1]} x {g['shape'][0]} cells of {g['resolution'][0]:g} m")
        lines.append(f"  factors     {status['factors']}")
        lines.append(f"              {', '.join(status['factor_names'])}")
        for key in ("imagery", "labels", "labels_imagery", "exclusion", "inventory"):
            if status.get(key):
                lines.append(f"  {key:<11} {status[key]}")
    lines.append(f"  models      {len(status['models'])}")
    for role, d in (status.get("default_models") or {}).items():
        lines.append(f"    default {role}: " + (f"{d['name']} {d['version']} ({d['metric']} {d['score']:.3f})" if d else "none with skill"))
    for m in status["models"]:
        lines.append(f"    {m['kind']}/{m['name']} {m['version']}  {m['path']}")
    lines.append(f"  reports     {len(status['reports'])}")
    for r in status["reports"]:
        lines.append(f"    {r}")
    if status.get("maps"):
        lines.append(f"  maps        {len(status['maps'])}")
        for m in status["maps"]:
            lines.append(f"    {m}")
    device = status.get("device")
    if device:
        where = f"{device['device']} ({', '.join(device['gpu_names'] or device['gpus'])})" if device["gpus"] else device["device"]
        lines.append(f"  device      TensorFlow {device['tensorflow']} on {where}")
        lines.extend(f"    warning: {w}" for w in device.get("warnings", []))
    if status["caches"]:
        lines.append("  caches")
        for c in status["caches"]:
            lines.append(f"    {c['name']:<20} {c['bytes'] / 1e6:8.1f} MB  {c['path']}")
    return "\n".join(lines)
