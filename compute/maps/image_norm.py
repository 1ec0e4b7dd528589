"""Imagery normalisation for the segmentation network: one implementation for training and detection.

Two methods, recorded in the model card's ``normalisation`` block so ``detect`` applies exactly
what training applied:

``robust`` (new models)
    per band ``z = (x - p50) / (p90 - p10)`` with the percentiles taken over the valid pixels of
    one *image*; NaN (no data) becomes 0. The image is the whole scene (``scope: "scene"``: a
    region's imagery, a GeoTIFF given to ``detect``) or each chip on its own (``scope: "chip"``:
    chip folders such as Landslide4Sense, whose PNGs were stretched one by one). The median and
    the inter-decile range sit inside the common ground cover, so they barely move with the share
    of water, towns or landslides in a scene (the 2nd/98th percentiles do), and the result does not
    depend on how the values were scaled (DN, reflectance, 8-bit display): a Sentinel-2 scene in
    DN and the same scene in reflectance give the same network input. The card also keeps the
    training scene's statistics (``reference``), used when a caller hands the detector bare arrays
    with no scene around them (the tile server's blocks).
``standardise`` (cards written before the robust method)
    ``(x - mean) / std`` with per-band constants fitted on the training chips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ROBUST = "robust"
STANDARDISE = "standardise"
PERCENTILES = (10.0, 50.0, 90.0)  # low, centre, high
MAX_SAMPLE = 1_000_000  # pixels used for a scene's percentiles (a regular subsample beyond that)
SCOPES = ("scene", "chip")


@dataclass(frozen=True)
class BandStats:
    """Per-band centre and scale: ``z = (x - centre) / scale``."""

    centre: tuple[float, ...]
    scale: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"centre": [float(v) for v in self.centre], "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BandStats:
        return cls(tuple(float(v) for v in data["centre"]), tuple(float(v) for v in data["scale"]))


def valid_pixels(image: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Pixels ``[n, C]`` where every band is finite (NaN = no data)."""
    flat = np.moveaxis(np.asarray(image), channel_axis, -1).reshape(-1, np.shape(image)[channel_axis])
    return flat[np.isfinite(flat).all(axis=1)]


def image_stats(image: np.ndarray, channel_axis: int = 0, max_pixels: int = MAX_SAMPLE) -> BandStats:
    """Robust per-band statistics of one image (bands on ``channel_axis``; NaN = no data).

    An image with no valid pixel gets centre 0 and scale 1 (its output is all zeros anyway).
    """
    pixels = valid_pixels(image, channel_axis)
    bands = np.shape(image)[channel_axis]
    if len(pixels) == 0:
        return BandStats((0.0,) * bands, (1.0,) * bands)
    if len(pixels) > max_pixels:  # a regular subsample: deterministic, and plenty for three percentiles
        pixels = pixels[:: int(np.ceil(len(pixels) / max_pixels))]
    lo, mid, hi = np.percentile(pixels.astype(np.float64), PERCENTILES, axis=0)
    spread = hi - lo
    # a flat band (constant, or nearly so in a small chip): its absolute level, else 1
    fallback = np.where(np.abs(mid) > 1e-9, np.abs(mid), 1.0)
    scale = np.where(spread > 1e-9, spread, fallback)
    return BandStats(tuple(float(v) for v in mid), tuple(float(v) for v in scale))


def apply_stats(image: np.ndarray, stats: BandStats, channel_axis: int = -1) -> np.ndarray:
    """``(x - centre) / scale`` per band, NaN -> 0, float32."""
    shape = [1] * np.ndim(image)
    shape[channel_axis] = -1
    centre = np.asarray(stats.centre, dtype=np.float32).reshape(shape)
    scale = np.asarray(stats.scale, dtype=np.float32).reshape(shape)
    out = (np.asarray(image, dtype=np.float32) - centre) / scale
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def robust_spec(bands: list[str], scope: str, reference: BandStats, units: str) -> dict[str, Any]:
    """The card's ``normalisation`` block for the robust method."""
    if scope not in SCOPES:
        raise ValueError(f"normalisation scope {scope!r} unknown; use one of {SCOPES}")
    return {
        "method": ROBUST,
        "scope": scope,
        "percentiles": list(PERCENTILES),
        "formula": "(x - p50) / (p90 - p10) per band over the image's valid pixels; NaN -> 0",
        "bands": list(bands),
        "reference": reference.to_dict(),
        "units": units,
        "applied": (
            "each input scene's own percentiles (detect, inventory); the reference (training scene) "
            "for bare arrays" if scope == "scene" else "each chip's own percentiles (each image for detect)"
        ),
    }


def standardise_stats(spec: dict[str, Any]) -> BandStats:
    return BandStats(tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"]))


def stats_for(spec: dict[str, Any], image: np.ndarray | None = None, channel_axis: int = 0,
              scene: BandStats | None = None) -> BandStats:
    """The statistics ``spec`` prescribes for ``image``.

    ``standardise``: the card's constants. ``robust`` + ``chip``: the image's own percentiles.
    ``robust`` + ``scene``: ``scene`` when the caller knows the scene the image comes from, else the
    training scene's reference.
    """
    method = spec.get("method", STANDARDISE)
    if method == STANDARDISE:
        return standardise_stats(spec)
    if method != ROBUST:
        raise ValueError(f"normalisation method {method!r} unknown")
    if scene is not None:
        return scene
    if spec.get("scope") == "chip" and image is not None:
        return image_stats(image, channel_axis)
    return BandStats.from_dict(spec["reference"])


def normalise(image: np.ndarray, spec: dict[str, Any], channel_axis: int = -1,
              scene: BandStats | None = None) -> np.ndarray:
    """Normalise ``image`` (bands on ``channel_axis``) as ``spec`` says; NaN -> 0, float32."""
    return apply_stats(image, stats_for(spec, image, channel_axis, scene), channel_axis)
