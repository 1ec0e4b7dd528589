"""Training-time augmentation for image chips: geometry moves image and mask together, photometry the image only.

Geometry (per chip): a left-right flip, an up-down flip and a quarter turn (0-3), i.e. the eight
symmetries of the square; the mask gets exactly the same operation, so every landslide pixel stays
under its image pixel.

Photometry (per chip, per band), on *normalised* inputs (``z = (x - p50) / (p90 - p10)``, see
:mod:`slidemap.compute.maps.image_norm`): each chip source stretches its imagery its own way, and the
robust normalisation removes only the linear part of that, so the network also sees

- brightness: ``z + b`` with ``b ~ U(-brightness, brightness)`` (one shift for all bands, plus a
  smaller per-band part, i.e. a colour cast);
- contrast: ``m + (z - m) * c`` around the chip's mean ``m``, ``c ~ exp(U(-log k, log k))``;
- gamma: a monotone curve ``u ** g`` on the chip's own range mapped to [0, 1],
  ``g ~ exp(U(-log k, log k))``.

Pixels that are no data (exactly 0 after normalisation with an ignored label) are left at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slidemap.compute.region.image_files import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    geometry: bool = True
    brightness: float = 0.25  # in normalised units (1 = the inter-decile range)
    band_brightness: float = 0.08
    contrast: float = 1.25  # factor range [1/k, k]
    gamma: float = 1.4  # exponent range [1/k, k]

    @property
    def photometric(self) -> bool:
        return self.brightness > 0 or self.band_brightness > 0 or self.contrast > 1 or self.gamma > 1

    def to_dict(self) -> dict[str, float | bool]:
        return {"geometry": self.geometry, "brightness": self.brightness, "band_brightness": self.band_brightness,
                "contrast": self.contrast, "gamma": self.gamma}


NONE = AugmentConfig(geometry=False, brightness=0.0, band_brightness=0.0, contrast=1.0, gamma=1.0)


def geometric(x: np.ndarray, y: np.ndarray, flip_lr: bool, flip_ud: bool, turns: int) -> tuple[np.ndarray, np.ndarray]:
    """One symmetry of the square applied to a chip ``[H, W, C]`` and its mask ``[H, W]`` alike."""
    if flip_lr:
        x, y = x[:, ::-1], y[:, ::-1]
    if flip_ud:
        x, y = x[::-1], y[::-1]
    if turns % 4:
        if x.shape[0] != x.shape[1]:
            turns = 2 * (turns % 2)  # a rectangle keeps its shape only under a half turn
        x, y = np.rot90(x, turns, axes=(0, 1)), np.rot90(y, turns, axes=(0, 1))
    return x, y


def photometric(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, nodata: np.ndarray | None = None) -> np.ndarray:
    """Brightness, contrast and gamma jitter of one normalised chip ``[H, W, C]`` (float32)."""
    out = x.astype(np.float32, order="C", copy=True)  # C order: the reshape below is then a view
    bands = out.shape[-1]
    holes = nodata is not None and bool(nodata.any())
    # [pixels, bands]: a view of the whole chip where it has no hole (most chips: copies through a
    # mask cost about a tenth of a detector's epoch), else a copy of its valid pixels, written back
    v = out[~nodata] if holes else out.reshape(-1, bands)
    if not len(v):
        return out
    if cfg.gamma > 1:
        g = np.exp(rng.uniform(-np.log(cfg.gamma), np.log(cfg.gamma), bands)).astype(np.float32)
        lo, hi = v.min(axis=0), v.max(axis=0)
        span = np.where(hi - lo > 1e-6, hi - lo, 1.0)
        u = np.clip((v - lo) / span, 0.0, 1.0)
        v[:] = lo + span * u**g
    if cfg.contrast > 1:
        c = np.exp(rng.uniform(-np.log(cfg.contrast), np.log(cfg.contrast), bands)).astype(np.float32)
        m = v.mean(axis=0)
        v[:] = m + (v - m) * c
    if cfg.brightness > 0 or cfg.band_brightness > 0:
        b = rng.uniform(-cfg.brightness, cfg.brightness) + rng.uniform(-cfg.band_brightness, cfg.band_brightness, bands)
        v += b.astype(np.float32)
    if holes:
        out[~nodata] = v  # the holes keep their 0
    return out


def augment_batch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Augment a batch ``x [N, H, W, C]`` (normalised), ``y [N, H, W]`` chip by chip."""
    xs, ys = [], []
    for xi, yi in zip(x, y, strict=True):
        if cfg.geometry:
            xi, yi = geometric(xi, yi, bool(rng.integers(2)), bool(rng.integers(2)), int(rng.integers(4)))
        if cfg.photometric:
            nodata = (yi == IGNORE) & np.all(xi == 0, axis=-1)
            xi = photometric(xi, rng, cfg, nodata)
        xs.append(np.ascontiguousarray(xi))
        ys.append(np.ascontiguousarray(yi))
    return np.stack(xs).astype(np.float32), np.stack(ys)
