"""The conditioning factors: names, units, and the one (0, 1) normalisation every model uses.

``prepare`` records each factor's range and encoding in ``build/factors.json``; training and
serving both normalise through :func:`normalise`, so they can never disagree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.errors import BuildError

# The paper's 14 factors, in the band order of build/factors.tif (those present).
FACTOR_ORDER: tuple[str, ...] = (
    "altitude",
    "slope",
    "aspect",
    "plan_curvature",
    "profile_curvature",
    "roughness",
    "rainfall",
    "twi",
    "ndvi",
    "distance_to_roads",
    "distance_to_rivers",
    "landcover",
    "soil",
    "lithology",
)
TERRAIN_FACTORS = ("altitude", "slope", "aspect", "plan_curvature", "profile_curvature", "roughness", "twi")
CATEGORICAL_FACTORS = ("landcover", "soil", "lithology")

UNITS: dict[str, str] = {
    "altitude": "m",
    "slope": "degrees",
    "aspect": "degrees clockwise from north (-1 = flat)",
    "plan_curvature": "1/100 m (ArcGIS)",
    "profile_curvature": "1/100 m (ArcGIS)",
    "roughness": "surface-area ratio",
    "rainfall": "mm/yr",
    "twi": "ln(m)",
    "ndvi": "ratio",
    "distance_to_roads": "m",
    "distance_to_rivers": "m",
    "landcover": "class",
    "soil": "class",
    "lithology": "class",
}

FACTORS_JSON = "factors.json"


@dataclass(frozen=True)
class FactorSpec:
    name: str
    kind: str  # "continuous" | "categorical"
    units: str
    min: float
    max: float
    source: str
    native: str | None = None
    classes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "kind": self.kind,
            "units": self.units,
            "min": self.min,
            "max": self.max,
            "source": self.source,
            "native": self.native,
        }
        if self.classes:
            data["classes"] = self.classes
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorSpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            units=data.get("units", UNITS.get(data["name"], "")),
            min=float(data["min"]),
            max=float(data["max"]),
            source=data.get("source", ""),
            native=data.get("native"),
            classes={str(k): str(v) for k, v in (data.get("classes") or {}).items()},
        )


@dataclass(frozen=True)
class Normalisation:
    """Per-factor ranges, in band order."""

    factors: tuple[FactorSpec, ...]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.factors]

    def subset(self, names: list[str] | tuple[str, ...]) -> Normalisation:
        by_name = {f.name: f for f in self.factors}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise BuildError(f"factors {missing} are not in this region's stack {self.names}; retrain the model on this region")
        return Normalisation(tuple(by_name[n] for n in names))

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.factors]

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> Normalisation:
        return cls(tuple(FactorSpec.from_dict(d) for d in items))


def load_normalisation(build_dir: str | Path) -> Normalisation:
    path = Path(build_dir) / FACTORS_JSON
    if not path.is_file():
        raise BuildError(f"{path}: not built; run `slidemap prepare {Path(build_dir).parent}` first")
    data = json.loads(path.read_text())
    return Normalisation.from_list(data["factors"])


def normalise(stack: np.ndarray, spec: Normalisation, out: np.ndarray | None = None) -> np.ndarray:
    """Map a ``[c, ...]`` stack in physical units to float32 in [0, 1]; NaN (nodata) becomes 0.

    Categorical codes are scaled the same way (ordinal stand-ins, as in the paper).
    """
    if stack.shape[0] != len(spec.factors):
        raise ValueError(f"stack has {stack.shape[0]} bands, normalisation has {len(spec.factors)}")
    if out is None:
        out = np.empty(stack.shape, dtype=np.float32)
    for i, f in enumerate(spec.factors):
        span = f.max - f.min
        scale = 1.0 / span if span > 0 else 0.0
        band = (stack[i].astype(np.float32, copy=False) - np.float32(f.min)) * np.float32(scale)
        np.clip(band, 0.0, 1.0, out=band)
        np.nan_to_num(band, copy=False, nan=0.0)
        out[i] = band
    return out
