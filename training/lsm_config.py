"""Susceptibility training settings: one pydantic model, four presets, validated ``--set`` overrides.

Presets (``slidemap train lsm --preset NAME``):

* ``quick`` -- tests and smoke runs: tiny networks, few epochs, few samples.
* ``demo`` -- the README's main job on the demo region, a few minutes on 2 cores: the multi-scale
  3D-CNN and the scikit-learn peers, trained properly (early stopping on an inner spatial validation
  split, warm-up + cosine learning rate, augmentation) on a capped sample.
* ``default`` -- recommended for real work: every network (small, medium, large, multi-scale) and
  peer, all usable samples, a three-seed ensemble of each network.
* ``paper`` -- replication of Zhang et al. 2024 Table 5 (Adam, lr 0.01, batch 64, 25 epochs, 32/64
  filters, dense 64, no augmentation, no early stopping), evaluated with the same leak-free protocol.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from slidemap.errors import InputError

WINDOW_MODELS: dict[str, tuple[int, ...]] = {
    "small": (12,),
    "medium": (17,),
    "large": (22,),
    "multiscale": (12, 17, 22),
}
BASELINES: tuple[str, ...] = ("gbdt_lr", "logreg", "random_forest")
ALL_MODELS: tuple[str, ...] = (*WINDOW_MODELS, *BASELINES)
REFERENCE = "multiscale"


class LsmConfig(BaseModel):
    """Every setting of one ``train lsm`` run; presets fill it, ``--set key=value`` overrides any."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: str = "custom"
    models: tuple[str, ...] = (REFERENCE, *BASELINES)
    # samples
    per_polygon_cap: int | None = Field(20, ge=1, description="landslide cells kept per inventory polygon (None: all)")
    max_samples: int | None = Field(None, ge=50, description="cap on landslide + non-landslide samples")
    neg_ratio: float = Field(1.0, gt=0, description="non-landslide samples per landslide sample")
    negatives: Literal["terrain", "anywhere"] = "terrain"
    compare_anywhere: bool = Field(True, description="also train and score the models with negatives from anywhere")
    anywhere_networks: bool = Field(True, description="the 3D-CNNs too in that comparison (else only the peers)")
    neg_buffer: float = Field(3.0, ge=0, description="cells between a sampled negative and any landslide cell")
    use_detected: bool = True
    # evaluation
    block_size: int | None = Field(None, ge=4, description="blocked-split block side in cells (None: from the variogram)")
    split_buffer: int | None = Field(None, ge=0, description="cells dropped around test blocks (None: the largest window's reach)")
    cv_below: int = Field(2000, ge=0, description="repeated spatial k-fold CV when there are fewer samples than this")
    cv_folds: int = Field(5, ge=2)
    cv_repeats: int = Field(3, ge=1)
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for single-split intervals")
    # networks
    epochs: int = Field(40, ge=1, description="maximum epochs (early stopping ends sooner)")
    patience: int = Field(6, ge=0, description="epochs without a better validation ROC-AUC before stopping (0: off)")
    warmup_epochs: int = Field(1, ge=0)
    batch: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    widths: tuple[int, int] = (8, 16)
    dense_units: int = Field(32, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    window_classes: bool = Field(False, description="categorical one-hot channels in the windows too (not only at the centre)")
    centre_linear: bool = Field(True, description="a linear path from the centre values to the logit, started at a logistic regression of the training fold")
    augment: bool = True
    jitter: int = Field(1, ge=0, le=2, description="random shift of the window centre, cells")
    ensemble: int = Field(1, ge=1, le=8, description="networks per model, averaged (different seeds)")
    # the fast form (distilled dense network) of the window models
    distil: bool = True
    fast_width: int = Field(24, ge=4)
    fast_dense: int = Field(48, ge=4)
    fast_steps: int = Field(600, ge=10, description="optimiser steps of the distillation")
    fast_cells: int = Field(60000, ge=100, description="valid cells whose window-model probability the distillation learns from")
    agreement_cells: int = Field(5000, ge=100, description="cells outside the distillation crops on which the agreement is measured")
    fast_patch: int = Field(24, ge=8, description="output cells per side of a distillation crop")
    fast_batch: int = Field(8, ge=1, description="crops per distillation step (many small crops beat a few large ones)")
    fast_lr: float = Field(5e-3, gt=0, description="peak learning rate of the distillation (cosine decay)")
    fast_agreement: float = Field(0.97, gt=0, le=1, description="Pearson r needed to serve tiles from the fast form")
    # baselines
    gbdt_trees: int = Field(150, ge=1)
    rf_trees: int = Field(300, ge=1)
    # maps and classes
    area_sample: int = Field(20000, ge=100)
    seed: int = Field(0, ge=0)

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in models if m not in ALL_MODELS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {', '.join(ALL_MODELS)}")
        if not models:
            raise ValueError("name at least one model")
        return tuple(dict.fromkeys(models))

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, widths: tuple[int, int]) -> tuple[int, int]:
        if min(widths) < 1:
            raise ValueError("give two positive filter counts, e.g. widths=32,64")
        return widths

    @property
    def window_models(self) -> list[str]:
        return [m for m in self.models if m in WINDOW_MODELS]


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(
        models=("multiscale", "logreg", "random_forest"), max_samples=500, epochs=4, patience=3, batch=32,
        widths=(4, 8), dense_units=16, gbdt_trees=30, rf_trees=60, area_sample=1500, cv_repeats=1,
        cv_folds=3, fast_width=8, fast_dense=16, fast_steps=60, fast_patch=24, fast_batch=4, fast_cells=2000,
        agreement_cells=1000, bootstrap=200,
        compare_anywhere=False,
    ),
    "demo": dict(
        models=("multiscale", *BASELINES), max_samples=2400, epochs=8, patience=3, batch=64,
        widths=(8, 16), dense_units=32, area_sample=4000, fast_steps=1500, fast_cells=12000,
        fast_width=16, fast_dense=32, agreement_cells=3000, anywhere_networks=False,
    ),
    "default": dict(
        models=ALL_MODELS, max_samples=None, epochs=60, patience=8, batch=64, widths=(16, 32),
        dense_units=64, window_classes=True, ensemble=3, fast_steps=1500, fast_width=32, fast_dense=64,
        gbdt_trees=200, rf_trees=500,
    ),
    # the paper's Table 5 for the networks; the evaluation protocol stays leak-free
    "paper": dict(
        models=ALL_MODELS, max_samples=None, per_polygon_cap=None, epochs=25, patience=0, warmup_epochs=0,
        batch=64, lr=0.01, schedule="constant", widths=(32, 64), dense_units=64, window_classes=True,
        centre_linear=False, augment=False, jitter=0, ensemble=1, fast_steps=1500, fast_width=32, fast_dense=64,
        gbdt_trees=200, rf_trees=500,
    ),
}


def _coerce(key: str, raw: str, current: Any) -> Any:
    """``--set`` text -> the field's type (pydantic validates the value afterwards)."""
    text = raw.strip()
    if text.lower() in ("none", "null", "") and key in ("per_polygon_cap", "max_samples", "block_size", "split_buffer"):
        return None
    if key in ("widths", "models"):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return tuple(int(p) for p in parts) if key == "widths" else tuple(parts)
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("write true or false")
    return text  # pydantic parses numbers and literals


def make_config(preset: str, overrides: dict[str, str] | None = None) -> LsmConfig:
    """The preset's settings with ``overrides`` applied; every mistake is one clear ``InputError``."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        cfg = LsmConfig(preset=preset, **PRESETS[preset])
    except ValidationError as exc:  # a broken preset is a bug, but say which
        raise InputError(f"preset {preset!r} is invalid: {exc.errors()[0]['msg']}") from exc
    known = sorted(k for k in LsmConfig.model_fields if k != "preset")
    for key, raw in (overrides or {}).items():
        if key not in LsmConfig.model_fields or key == "preset":
            raise InputError(f"--set {key}=...: no such setting; known: {', '.join(known)}")
        try:
            setattr(cfg, key, _coerce(key, raw, getattr(cfg, key)))
        except (ValueError, ValidationError) as exc:
            msg = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise InputError(f"--set {key}={raw}: {msg}") from exc
    return cfg
