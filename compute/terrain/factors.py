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


# ---- model input channels -----------------------------------------------------------------------

ENCODING_SCHEME = "channels-v2"


@dataclass(frozen=True)
class Channel:
    """One model input channel made from one factor.

    ``kind``: ``scaled`` ((x - min) / (max - min) clipped to [0, 1]), ``sin`` / ``cos`` (of the
    aspect, in [-1, 1], 0 where flat), ``flat`` (1 where the aspect is -1), ``onehot`` (1 where the
    factor equals ``code``). Nodata (NaN) gives 0 in every channel, the value cells beyond a
    region's edge read as, so an edge window and an interior one follow one rule.
    """

    name: str
    factor: str
    kind: str
    code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "factor": self.factor, "kind": self.kind}
        if self.code is not None:
            out["code"] = self.code
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Channel:
        code = data.get("code")
        return cls(str(data["name"]), str(data["factor"]), str(data["kind"]), None if code is None else int(code))


@dataclass(frozen=True)
class Encoding:
    """How a stack of factors in physical units becomes a model's input channels.

    Continuous factors are scaled to [0, 1] with the training region's ranges; the aspect becomes
    its sine and cosine plus a flat flag (so 359 and 1 degrees are neighbours and a rotation of the
    terrain is a rotation of the vector); categorical factors become one channel per class
    (one-hot; over a resampled window, the class fractions) -- never an averaged class code.
    """

    normalisation: Normalisation
    channels: tuple[Channel, ...]

    @property
    def factor_names(self) -> list[str]:
        return self.normalisation.names

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    def __len__(self) -> int:
        return len(self.channels)

    def indices(self, kind: str, factor: str | None = None) -> list[int]:
        return [i for i, c in enumerate(self.channels) if c.kind == kind and (factor is None or c.factor == factor)]

    def channels_of(self, factors: set[str] | frozenset[str]) -> list[int]:
        return [i for i, c in enumerate(self.channels) if c.factor in factors]

    @classmethod
    def build(cls, normalisation: Normalisation, class_codes: dict[str, list[int]] | None = None) -> Encoding:
        """Channels for ``normalisation``'s factors; ``class_codes`` lists, per categorical factor,
        the codes to give a channel (by default every code of the factor's class table)."""
        channels: list[Channel] = []
        for f in normalisation.factors:
            if f.name == "aspect":
                channels += [Channel("aspect_sin", "aspect", "sin"), Channel("aspect_cos", "aspect", "cos"),
                             Channel("aspect_flat", "aspect", "flat")]
            elif f.kind == "categorical":
                codes = (class_codes or {}).get(f.name)
                if codes is None:
                    codes = sorted(int(k) for k in f.classes) or list(range(int(f.min), int(f.max) + 1))
                for code in sorted(set(int(c) for c in codes)):
                    label = f.classes.get(str(code), str(code))
                    channels.append(Channel(f"{f.name}={label}", f.name, "onehot", code))
            else:
                channels.append(Channel(f.name, f.name, "scaled"))
        return cls(normalisation, tuple(channels))

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": ENCODING_SCHEME, "factors": self.normalisation.to_list(),
                "channels": [c.to_dict() for c in self.channels]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Encoding:
        if data.get("scheme") != ENCODING_SCHEME:
            raise BuildError(f"model input encoding {data.get('scheme')!r} is not {ENCODING_SCHEME!r}; retrain the model")
        return cls(Normalisation.from_list(data["factors"]), tuple(Channel.from_dict(c) for c in data["channels"]))

    def encode(self, stack: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[factors, ...]`` in physical units (NaN = nodata) -> float32 ``[channels, ...]``."""
        factors = self.normalisation.factors
        if stack.shape[0] != len(factors):
            raise ValueError(f"stack has {stack.shape[0]} bands, the encoding has {len(factors)} factors")
        if out is None:
            out = np.empty((len(self.channels), *stack.shape[1:]), dtype=np.float32)
        index = {f.name: i for i, f in enumerate(factors)}
        for k, ch in enumerate(self.channels):
            f = factors[index[ch.factor]]
            band = stack[index[ch.factor]].astype(np.float32, copy=False)
            known = np.isfinite(band)
            if ch.kind == "scaled":
                span = f.max - f.min
                value = (band - np.float32(f.min)) * np.float32(1.0 / span if span > 0 else 0.0)
                np.clip(value, 0.0, 1.0, out=value)
            elif ch.kind in ("sin", "cos"):
                rad = np.deg2rad(band)
                value = (np.sin(rad) if ch.kind == "sin" else np.cos(rad)).astype(np.float32)
                value[band < 0] = 0.0  # flat: no direction
            elif ch.kind == "flat":
                value = (band < 0).astype(np.float32)
            elif ch.kind == "onehot":
                value = (np.rint(band) == ch.code).astype(np.float32)
            else:
                raise BuildError(f"unknown channel kind {ch.kind!r}; retrain the model")
            value[~known] = 0.0
            out[k] = value
        return out


def class_codes_present(stack: np.ndarray, normalisation: Normalisation, valid: np.ndarray) -> dict[str, list[int]]:
    """Per categorical factor, the codes that occur on ``valid`` cells (channels for absent
    classes would only carry zeros)."""
    codes: dict[str, list[int]] = {}
    for i, f in enumerate(normalisation.factors):
        if f.kind == "categorical":
            values = stack[i][valid]
            values = values[np.isfinite(values)]
            codes[f.name] = sorted(int(v) for v in np.unique(np.rint(values)))
    return codes
