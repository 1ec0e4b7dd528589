"""Train the attention U-Net: presets, search, the model comparison, baselines, skill, artefacts.

One run (:func:`run`) on a region scene (:mod:`slidemap.training.scene`) or a chip folder
(:mod:`slidemap.training.chips`):

1. the splits (spatially blocked with buffers; the paper's random one where the preset asks), each
   with a fit part, a validation part and a test part (:mod:`slidemap.training.seg_data`);
2. the GP + EI search (:mod:`slidemap.training.search`) on the blocked split's fit and validation
   parts, never on a test pixel of any split; every trial is recorded with what proposed it;
3. each model of the run (the attention U-Net with the best set, or the paper's four-model
   comparison; optionally a plain U-Net with BCE and a per-pixel gradient-boosting baseline) trained
   to convergence (:mod:`slidemap.training.unet_fit`: warm-up + cosine rate, augmentation, early
   stopping on validation PR-AUC with the best weights restored), thresholded on the validation part,
   then optionally refitted on fit + validation for the epoch count early stopping found (keeping the
   threshold's operating point), and scored on the test part with a bootstrap interval over test chips;
4. every U-Net of the blocked split is saved with a card carrying its skill; the best with skill
   becomes the region's default detector (:func:`slidemap.compute.models.select.record_default`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from slidemap.compute.maps.detection import DEFAULT_OVERLAP, DEFAULT_TILE
from slidemap.compute.models.views import VIEWS, ViewAveraged
from slidemap.training.chip_augment import AugmentConfig
from slidemap.training.chips import ChipSet
from slidemap.training.scene import Scene
from slidemap.training.search import HyperParams, bayesian_search, seed_won
from slidemap.training.seg_data import Evaluation, SplitData, chip_split_data, scene_split_data
from slidemap.training.seg_metrics import (
    bootstrap_f1,
    chance_f1,
    carry_operating_point,
    choose_threshold,
    f1_from_counts,
    pr_auc,
    segmentation_metrics,
    threshold_rule,
)
from slidemap.training.unet_fit import FitConfig, FitResult, fit_network

log = logging.getLogger(__name__)
SPLITS = ("random", "blocked")
SKILL_FLOOR = 0.05  # an F1 interval reaching below this (or below chance) is no skill


@dataclass
class UnetConfig:
    preset: str = "demo"
    base_width: int = 16
    batch_size: int = 8
    chip: int = 128
    epoch_chips: int | None = None  # None: 64 random chips for a scene, one pass over the fit chips for a folder
    epochs: int = 24  # at most; early stopping decides
    min_epochs: int = 6
    patience: int = 6
    # A chip folder's epoch is one pass over its fit chips, and on the real L4S chips both networks
    # were still improving on validation at 30 epochs: a folder may get its own budget and patience
    # (None: as above).
    folder_epochs: int | None = None
    folder_patience: int | None = None
    # A folder's validation chips are a fifth of what it has: the model it ships is refitted on fit +
    # validation for the epoch count early stopping found (None: as ``refit``)
    folder_refit: bool | None = None
    # A region's scenes are refitted too when their training part holds fewer landslide areas than
    # this (None: ``refit`` alone decides; a refit the user gives, on or off, decides for every
    # source). Where landslides are few, the validation part's matter most: set where the refit lifted
    # blocked-test F1 by 0.04-0.24 on fresh 4-6 km regions with 19-48 training landslides and lost 0.05
    # on an 8 km one with 110; on six small regions drawn after, mean F1 +0.009 and PR-AUC +0.023 (weak
    # first fits up, strong ones -0.05 to +0.02: a refit is a second training with no validation part
    # to catch a worse run; reports/synthetic/detector_scene_refit.md). With more landslides, as in the
    # main job's 20 km region (566), the first fit ships.
    scene_refit_below_areas: int | None = None
    monitor: Literal["pr_auc", "f1"] = "pr_auc"
    warmup_epochs: int = 2
    ema_epochs: float = 0.0  # horizon of the weight average, epochs (training/unet_fit.py; 0: off)
    validate_every: int = 1  # epochs between validations (and early-stopping decisions); the last always
    refit: bool = True
    loss: Literal["focal", "focal+dice"] = "focal"
    dice_weight: float = 1.0
    search_iterations: int = 0
    search_epochs: int = 8
    search_space: Literal["focal", "paper"] = "focal"  # focal: alpha, gamma at the fixed optimizer and rate
    compare: bool = False
    compare_epochs: tuple[int, int] = (50, 100)
    baselines: bool = False
    splits: tuple[str, ...] = ("blocked",)
    buffer: int | None = None  # px (scenes; default 16) or index positions / px (chip folders)
    positive_share: float = 0.5
    normalisation: Literal["auto", "scene", "chip"] = "auto"  # auto: scene for regions, chip for chip folders
    augment: bool = True
    # the attention U-Net's deep-supervision head (Oktay et al.); the plain U-Net peer never has it
    side_outputs: bool = False
    # at most this many symmetric views averaged per window (compute/models/views.py): the count with
    # the best validation PR-AUC scores the test part and goes into the card, for every model of a run
    views: Literal[1, 2, 4, 8] = 4
    # the threshold: the median of the cuts whose validation F1 is within this share of the best
    # (training/seg_metrics.py choose_threshold; 1.0: the F1-maximising cut)
    threshold_plateau: Annotated[float, Field(gt=0, le=1)] = 0.9
    jit: bool = False
    bands: list[str] | None = None
    seed: int = 0
    # used as they are when the search is off, and as the fixed part of the focal search space
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = 1e-3
    alpha: float = 0.5
    gamma: float = 2.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compare_epochs"] = list(self.compare_epochs)
        out["splits"] = list(self.splits)
        return out

    def for_source(self, folder: bool) -> UnetConfig:
        """The budget for the data at hand: a chip folder's own epochs, patience and refit where the preset has them."""
        if not folder:
            return self
        refit = self.refit if self.folder_refit is None else self.folder_refit
        return replace(self, epochs=self.folder_epochs or self.epochs, patience=self.folder_patience or self.patience,
                       refit=refit, folder_epochs=None, folder_patience=None, folder_refit=None)

    def for_split(self, summary: dict[str, Any]) -> tuple[UnetConfig, str | None]:
        """The refit for one split of a region's scenes, by its training landslides, and why (None: no
        rule applied, a chip folder or a refit the user decided)."""
        limit, areas = self.scene_refit_below_areas, (summary.get("landslide_areas") or {}).get("train")
        if limit is None or areas is None:
            return self, None
        if self.refit:  # refit=true refits every source, whatever the count
            return self, f"on: refit=true ({areas} training landslide areas)"
        refit = areas < limit
        reason = (f"{'on' if refit else 'off'}: {areas} training landslide areas, "
                  f"{'fewer than' if refit else 'not fewer than'} {limit} (scene_refit_below_areas)")
        return replace(self, refit=refit), reason

    def fit_config(self, max_epochs: int | None = None, epoch_chips: int = 64, **changes: Any) -> FitConfig:
        return replace(FitConfig(
            base_width=self.base_width, batch_size=self.batch_size, epoch_chips=self.epoch_chips or epoch_chips,
            max_epochs=max_epochs or self.epochs, min_epochs=self.min_epochs, patience=self.patience,
            monitor=self.monitor, learning_rate=self.learning_rate, optimizer=self.optimizer,
            warmup_epochs=self.warmup_epochs, ema_epochs=self.ema_epochs, validate_every=self.validate_every,
            augment=AugmentConfig() if self.augment else None,
            jit=self.jit, seed=self.seed,
        ), **changes)


PRESETS: dict[str, UnetConfig] = {
    # tests and smoke runs: tiny widths, a few short epochs
    "quick": UnetConfig(
        preset="quick", base_width=4, batch_size=4, epoch_chips=16, epochs=3, min_epochs=1, patience=2,
        warmup_epochs=1, refit=False, search_iterations=0, search_epochs=1, compare_epochs=(1, 2), views=2,
    ),
    # the README's main job: a width that learns, trained to convergence (about 3-4 minutes on 2
    # cores). 60 epochs for a region's scenes: at 30 the validation PR-AUC was still rising on fresh
    # 8 km regions (best epochs 26-27; at 60 they stopped early at 48-55, validation PR-AUC 0.73-0.84
    # -> 0.82-0.93). A chip folder's model is refitted on fit + validation (a third more chips; on the
    # real L4S chips test PR-AUC 0.698 -> 0.724, reports/real/unet_real_data.md); a region's only when
    # its training part holds fewer than 100 landslide areas (see ``scene_refit_below_areas``).
    # Validation and early stopping see the weights averaged over about two epochs: on six fresh
    # 4-8 km regions the best validation PR-AUC went 0.670 -> 0.696 and no region
    # stopped on a lucky early epoch (reports/synthetic/detector_weight_average.md). With that average
    # spanning two epochs, validation every second epoch was level on five fresh regions and saves
    # 10-16 % of a run; epochs before min_epochs are warm-up and never the model (a 6 km region had
    # shipped its epoch 2, F1 0.29 -> 0.65; reports/synthetic/detector_validate_every.md)
    "demo": UnetConfig(
        preset="demo", base_width=16, batch_size=8, epoch_chips=None, epochs=60, min_epochs=8, patience=8,
        folder_epochs=60, folder_patience=12, folder_refit=True, scene_refit_below_areas=100,
        warmup_epochs=2, ema_epochs=2.0, validate_every=2, learning_rate=2e-3, refit=False, search_iterations=0,
        search_epochs=8,
    ),
    # the paper's settings: width 64, batch 4, patience 10, 30 search iterations over its space,
    # its four-model comparison, both splits
    "paper": UnetConfig(
        preset="paper", base_width=64, batch_size=4, epoch_chips=None, epochs=100, min_epochs=10, patience=10,
        warmup_epochs=3, refit=True, search_iterations=30, search_epochs=15, search_space="paper", compare=True,
        compare_epochs=(50, 100), splits=SPLITS, views=1,
    ),
}


def apply_settings(cfg: UnetConfig, settings: dict[str, str]) -> UnetConfig:
    """``--set key=value`` on top of a preset, validated by pydantic against :class:`UnetConfig`'s
    field types (numbers, true/false, the listed choices; comma lists for tuples and lists; none where
    a field may be empty). Raises ValueError naming the key and what it takes."""
    from pydantic import TypeAdapter, ValidationError

    known = sorted(f for f in cfg.__dataclass_fields__ if f not in ("preset", "extra"))
    values = cfg.to_dict()
    for key, raw in settings.items():
        if key not in known:
            raise ValueError(f"--set {key}=...: no such setting; known: {', '.join(known)}")
        text = raw.strip()
        current = getattr(cfg, key)
        if text.lower() in ("none", "null") and key in _OPTIONAL_SETTINGS:
            values[key] = None
        elif isinstance(current, (tuple, list)) or key in ("bands", "splits", "compare_epochs"):
            values[key] = [p.strip() for p in text.split(",") if p.strip()]
        else:
            values[key] = text
    values.update({k: None for k in _explicit_budget(settings) if k not in settings})
    try:
        return TypeAdapter(UnetConfig).validate_python(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        raise ValueError(f"--set {key}={settings.get(key, '')}: {err['msg']}") from None


_OPTIONAL_SETTINGS = ("epoch_chips", "buffer", "bands", "folder_epochs", "folder_patience", "folder_refit",
                      "scene_refit_below_areas")


def preset(name: str, **overrides: Any) -> UnetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **_explicit_budget(clean))


def _explicit_budget(values: dict[str, Any]) -> dict[str, Any]:
    """Epochs, patience or refit a user gives apply to every source: the preset's folder budget and its
    scene refit rule step aside."""
    out = dict(values)
    if "refit" in values and "folder_refit" not in values:
        out["folder_refit"] = None
    if "refit" in values and "scene_refit_below_areas" not in values:
        out["scene_refit_below_areas"] = None
    if "epochs" in values and "folder_epochs" not in values:
        out["folder_epochs"] = None
    if "patience" in values and "folder_patience" not in values:
        out["folder_patience"] = None
    return out


@dataclass
class ModelSpec:
    name: str
    loss: str  # focal | focal+dice | bce | pixel-hgb
    epochs: int
    attention: bool = True
    label: str = ""
    side_outputs: bool = False

    @property
    def network(self) -> bool:
        return self.loss != "pixel-hgb"


@dataclass
class TrainedModel:
    spec: ModelSpec
    split: str
    model: Any
    normalisation: dict[str, Any]
    threshold: float
    metrics: dict[str, Any]
    skill: dict[str, Any]
    history: dict[str, list[float]]
    hyperparameters: dict[str, Any]
    training: dict[str, Any]
    balance: dict[str, Any]
    seconds: float
    views: int = 1  # symmetric views averaged (chosen on validation; compute/models/views.py)
    test_counts: np.ndarray | None = field(default=None, repr=False)  # [test chips, 4] at the threshold


# ---- the per-pixel gradient-boosting baseline ----------------------------------------------
def pixel_features(x: np.ndarray) -> np.ndarray:
    """Per-pixel features for ``[N, H, W, C]`` normalised chips: bands, 3x3 and 9x9 means, 9x9 std, gradient."""
    from scipy import ndimage

    feats = [x]
    for size in (3, 9):
        feats.append(ndimage.uniform_filter(x, size=(1, size, size, 1), mode="reflect"))
    mean9 = feats[-1]
    sq9 = ndimage.uniform_filter(x * x, size=(1, 9, 9, 1), mode="reflect")
    feats.append(np.sqrt(np.maximum(sq9 - mean9 * mean9, 0)))
    gray = x.mean(axis=-1)
    gy = ndimage.sobel(gray, axis=1)
    gx = ndimage.sobel(gray, axis=2)
    feats.append(np.hypot(gx, gy)[..., None])
    return np.concatenate(feats, axis=-1).astype(np.float32)


class PixelGradientBoosting:
    """scikit-learn's HistGradientBoostingClassifier on :func:`pixel_features`, with the network's
    ``predict_on_batch`` interface so the same evaluation code scores it."""

    def __init__(self, seed: int = 0, max_pixels: int = 300_000) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed,
                                                  early_stopping=True)
        self.seed, self.max_pixels = seed, max_pixels

    def fit(self, x: np.ndarray, masks: np.ndarray) -> PixelGradientBoosting:
        y = masks.reshape(-1)
        keep = np.flatnonzero(y != 255)
        rng = np.random.default_rng(self.seed)
        if len(keep) > self.max_pixels:
            keep = np.sort(rng.choice(keep, self.max_pixels, replace=False))
        feats = []
        per_chip = int(np.prod(masks.shape[1:]))
        for i in np.unique(keep // per_chip):  # features chip by chip, only where pixels were drawn
            f = pixel_features(x[i : i + 1]).reshape(per_chip, -1)
            sel = keep[(keep // per_chip) == i] - i * per_chip
            feats.append(f[sel])
        self.clf.fit(np.concatenate(feats), y[keep])
        return self

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        f = pixel_features(np.asarray(x, dtype=np.float32))
        p = self.clf.predict_proba(f.reshape(-1, f.shape[-1]))[:, 1]
        return p.reshape(f.shape[:3] + (1,)).astype(np.float32)


# ---- skill -----------------------------------------------------------------------------------
def detection_skill(ev: Evaluation, threshold: float, pr: float, seed: int = 0, split: str = "blocked") -> dict[str, Any]:
    """The card's ``skill`` block: F1 at the model's threshold on the blocked test, a bootstrap 95 %
    interval over test chips, and whether that is skill.

    No skill: the interval reaches down to the F1 of calling every pixel a landslide
    (``2p / (1 + p)``, p = landslide share of the test pixels) or to :data:`SKILL_FLOOR`, or the
    PR-AUC is no better than p (a random ranking). A score on a random split (``--splits random``)
    is never skill: its test chips neighbour training chips, so it says nothing about new ground,
    and such a model must not become a region's default by an inflated F1.
    """
    counts = ev.counts_by_unit(threshold)
    f1 = float(f1_from_counts(counts.sum(axis=0)))
    lo, hi = bootstrap_f1(counts, seed=seed)
    prevalence = float(ev.labels.mean()) if len(ev.labels) else 0.0
    chance = chance_f1(prevalence)
    blocked = split == "blocked"
    skilled = bool(blocked and np.isfinite(lo) and lo > max(chance, SKILL_FLOOR) and np.isfinite(pr) and pr > prevalence)
    return {
        "metric": "f1", "value": f1, "ci95": [lo, hi], "chance": chance, "prevalence": prevalence,
        "pr_auc": pr, "threshold": float(threshold), "split": split,
        "method": f"{split} test, F1 at the model's threshold, percentile bootstrap over {len(counts)} test chips",
        "has_skill": skilled,
        "rule": "no skill when the 95 % interval reaches the F1 of calling every pixel a landslide "
                f"(2p/(1+p)) or {SKILL_FLOOR}, or PR-AUC <= p"
                + ("" if blocked else "; a random split's test is never evidence of skill (train with --splits blocked)"),
    }


# ---- one model on one split ----------------------------------------------------------------
def _hp_used(spec: ModelSpec, hp: HyperParams, cfg: UnetConfig) -> dict[str, Any]:
    if not spec.network:
        return {"model": "HistGradientBoostingClassifier", "max_iter": 200, "learning_rate": 0.1,
                "features": "bands, 3x3 and 9x9 means, 9x9 std, Sobel gradient (normalised inputs)"}
    used: dict[str, Any] = {**hp.to_dict(), "loss": spec.loss, "max_epochs": spec.epochs,
                            "base_width": cfg.base_width, "attention": spec.attention,
                            "side_outputs": spec.side_outputs,
                            "batch_size": cfg.batch_size, "epoch_chips": cfg.epoch_chips or "default",
                            "patience": cfg.patience, "min_epochs": cfg.min_epochs,
                            "monitor": f"validation {cfg.monitor}", "warmup_epochs": cfg.warmup_epochs,
                            "weight_average_epochs": cfg.ema_epochs, "validate_every": cfg.validate_every,
                            "schedule": "linear warm-up from lr/10, cosine decay to 2 % of lr",
                            "augmentation": AugmentConfig().to_dict() if cfg.augment else None,
                            "positive_share": cfg.positive_share}
    if spec.loss == "bce":
        used.pop("alpha")
        used.pop("gamma")
    if spec.loss == "focal+dice":
        used["dice_weight"] = cfg.dice_weight
    return used


def choose_views(data: SplitData, model: Any, most: int) -> tuple[int, Evaluation, dict[int, float | None]]:
    """The view count (of 1, 2, 4, ... up to ``most``) whose averaged probabilities rank the validation
    part best (PR-AUC; fewer views on a tie), that count's validation predictions, and every count's score.

    Averaging views helped on most regions' validation parts, but not on every one (a 4 km region
    lost 0.11 PR-AUC with four views): like the threshold, the count is chosen on validation.
    """
    scores: dict[int, float | None] = {}
    chosen: tuple[int, Evaluation, float] | None = None
    for views in (v for v in VIEWS if v <= most):
        val = data.predict_val(ViewAveraged(model, views))
        score = float(pr_auc(val.labels, val.prob))
        scores[views] = round(score, 4) if np.isfinite(score) else None
        if chosen is None or (np.isfinite(score) and score > chosen[2]):  # NaN (no landslide): stay at 1
            chosen = (views, val, score if np.isfinite(score) else -np.inf)
    assert chosen is not None
    return chosen[0], chosen[1], scores


def _clean_metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k not in ("confusion",)}


def train_and_evaluate(data: SplitData, spec: ModelSpec, hp: HyperParams, cfg: UnetConfig,
                       progress: bool = True) -> TrainedModel:
    t0 = time.perf_counter()
    history: dict[str, list[float]] = {}
    training: dict[str, Any] = {}
    if not spec.network:
        assert data.fit_arrays is not None
        x, y = data.fit_arrays()
        model: Any = PixelGradientBoosting(cfg.seed).fit(x, y)
        views, val, view_scores = choose_views(data, model, cfg.views)
        threshold = val_threshold = choose_threshold(val.labels, val.prob, plateau=cfg.threshold_plateau)
        test = data.predict_test(ViewAveraged(model, views))
        balance: dict[str, Any] = {"rule": "all training pixels, subsampled to 300,000"}
    else:
        fit_cfg = cfg.fit_config(spec.epochs, data.epoch_chips)
        first = fit_network(data.sampler, data.val_x, data.val_y, len(data.bands), fit_cfg, spec.loss, hp.alpha,
                            hp.gamma, cfg.dice_weight, spec.attention, progress=progress,
                            desc=f"{spec.name} ({data.kind})", side_outputs=spec.side_outputs)
        history = first.history
        views, val, view_scores = choose_views(data, first.model, cfg.views)
        threshold = val_threshold = choose_threshold(val.labels, val.prob, plateau=cfg.threshold_plateau)
        test = data.predict_test(ViewAveraged(first.model, views))
        model = first.model
        balance = data.sampler.balance_report()
        training = {**_training_block(first), "epoch_chips": fit_cfg.epoch_chips}
        if cfg.refit and data.refit_sampler is not None:
            before = segmentation_metrics(test.labels, test.prob, threshold)
            refit_cfg = cfg.fit_config(spec.epochs, data.refit_epoch_chips)
            second = fit_network(data.refit_sampler, None, None, len(data.bands), refit_cfg, spec.loss, hp.alpha,
                                 hp.gamma, cfg.dice_weight, spec.attention, epochs=first.best_epoch,
                                 progress=progress, desc=f"{spec.name} refit ({data.kind})",
                                 side_outputs=spec.side_outputs)
            model = second.model
            test = data.predict_test(ViewAveraged(model, views))
            history = {**history, "refit_loss": second.history["loss"]}
            kept_cut = segmentation_metrics(test.labels, test.prob, val_threshold)
            carried: dict[str, Any] = {"threshold": "kept from the model trained without the validation part"}
            if data.predict_fit is not None:
                threshold, share, reached = carry_operating_point(
                    data.predict_fit(ViewAveraged(first.model, views)).prob, val_threshold,
                    data.predict_fit(ViewAveraged(model, views)).prob)
                if 0 < share < 1:
                    carried = {"threshold": "the first fit's operating point: the cut at which the refitted network "
                                            "calls landslide the share of fit-part pixels the first fit's validation cut did",
                               "fit_part_share_called_landslide": round(share, 6),
                               "fit_part_share_reached": round(reached, 6)}
            training["refit"] = {
                "epochs": second.epochs_run, "seconds": round(second.seconds, 1),
                "cpu_seconds": round(second.cpu_seconds, 1),
                "data": "fit + validation parts (the test part and its ring still held out)",
                **carried,
                "first_fit_threshold": round(val_threshold, 6),
                "test_before_refit": {k: before[k] for k in ("f1", "precision", "recall", "miou", "pr_auc")},
                "test_at_first_fit_threshold": {k: kept_cut[k] for k in ("f1", "precision", "recall")},
            }
    metrics = segmentation_metrics(test.labels, test.prob, threshold)
    # the first fit's validation figures at the cut chosen there (the refit trained on the validation part)
    metrics["validation"] = segmentation_metrics(val.labels, val.prob, val_threshold)
    training["views"] = {"chosen": views, "validation_pr_auc": view_scores,
                         "rule": f"the count of at most {cfg.views} with the best validation PR-AUC (fewer on a tie)"}
    skill = detection_skill(test, threshold, metrics["pr_auc"], cfg.seed, data.kind)
    return TrainedModel(spec, data.kind, model, data.normalisation, float(threshold), metrics, skill, history,
                        _hp_used(spec, hp, cfg), training, balance, time.perf_counter() - t0, views,
                        test.counts_by_unit(threshold))


def _training_block(fit: FitResult) -> dict[str, Any]:
    return {"epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early,
            "seconds": round(fit.seconds, 1), "cpu_seconds": round(fit.cpu_seconds, 1),
            "best_validation": {k: fit.history[k][fit.best_epoch - 1] for k in ("val_pr_auc", "val_f1")
                                if k in fit.history and len(fit.history[k]) >= fit.best_epoch}}


# ---- the search ---------------------------------------------------------------------------
def run_search(data: SplitData, cfg: UnetConfig, progress: bool = True) -> tuple[HyperParams, list[dict[str, Any]]]:
    """GP + EI; each trial trains ``search_epochs`` epochs on the fit part (same recipe, early stopping
    off) and scores the best validation PR-AUC it reached.

    PR-AUC rather than the paper's accuracy: with a few per cent landslide pixels, predicting
    "background" everywhere already scores ~0.97 accuracy, so accuracy cannot rank the sets.
    """
    from tqdm.auto import tqdm

    fixed = HyperParams(cfg.optimizer, cfg.learning_rate, cfg.alpha, cfg.gamma)
    trial_cfg = cfg.fit_config(cfg.search_epochs, data.epoch_chips, patience=0, min_epochs=1)

    def objective(hp: HyperParams) -> float:
        fit = fit_network(data.sampler, data.val_x, data.val_y, len(data.bands),
                          replace(trial_cfg, learning_rate=hp.learning_rate, optimizer=hp.optimizer),
                          "focal", hp.alpha, hp.gamma, side_outputs=cfg.side_outputs)
        scores = [s for s in fit.history.get("val_pr_auc", []) if np.isfinite(s)]
        return max(scores) if scores else 0.0

    bar = tqdm(total=cfg.search_iterations, desc="GP+EI search", unit="trial", disable=not progress, leave=False)

    def record(rec: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(score=f"{rec['score']:.4f}")

    try:
        best, records = bayesian_search(objective, cfg.search_iterations, cfg.seed, on_iteration=record,
                                        space=cfg.search_space, fixed=fixed)
    finally:
        bar.close()
    for rec in records:
        rec["objective"] = "best validation PR-AUC over the trial's epochs"
        rec["epochs"] = cfg.search_epochs
        rec["epoch_chips"] = trial_cfg.epoch_chips
    return best, records


# ---- the whole run -----------------------------------------------------------------------
def model_specs(cfg: UnetConfig) -> list[ModelSpec]:
    if cfg.compare:
        e1, e2 = cfg.compare_epochs
        specs = [
            ModelSpec(f"model-1-focal-{e1}", "focal", e1, label=f"attention U-Net, focal, at most {e1} epochs"),
            ModelSpec(f"model-2-bce-{e1}", "bce", e1, label=f"attention U-Net, BCE, at most {e1} epochs"),
            ModelSpec(f"model-3-focal-{e2}", "focal", e2, label=f"attention U-Net, focal, at most {e2} epochs"),
            ModelSpec(f"model-4-bce-{e2}", "bce", e2, label=f"attention U-Net, BCE, at most {e2} epochs"),
        ]
    else:
        label = "attention U-Net, focal loss" + (" + Dice" if cfg.loss == "focal+dice" else "")
        specs = [ModelSpec("attention-unet-" + cfg.loss.replace("+", "-"), cfg.loss, cfg.epochs, label=label)]
    for spec in specs:
        spec.side_outputs = cfg.side_outputs
    if cfg.baselines:
        specs.append(ModelSpec("unet-bce", "bce", specs[0].epochs, attention=False, label="plain U-Net, BCE"))
        specs.append(ModelSpec("pixel-hgb", "pixel-hgb", 0, attention=False, label="per-pixel HistGradientBoosting"))
    return specs


@dataclass
class RunResult:
    config: UnetConfig
    source: dict[str, Any]
    bands: list[str]
    chip: int
    synthetic: bool
    fingerprint: str
    splits: dict[str, dict[str, Any]]
    hpo: list[dict[str, Any]]
    best: dict[str, Any]
    trained: list[TrainedModel]
    primary: TrainedModel
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def _split_data(source: Scene | ChipSet, kind: str, cfg: UnetConfig, exclude: np.ndarray | None = None) -> SplitData:
    if isinstance(source, Scene):
        buffer = 16 if cfg.buffer is None else cfg.buffer
        if cfg.normalisation not in ("auto", "scene"):
            raise ValueError("a region is one scene: use --normalisation scene (or auto)")
        return scene_split_data(source, kind, cfg.chip, buffer if kind == "blocked" else 0, cfg.seed,
                                cfg.positive_share, exclude)
    scope = "chip" if cfg.normalisation == "auto" else cfg.normalisation
    return chip_split_data(source, kind, cfg.seed, cfg.positive_share, scope, cfg.buffer, exclude)


def _test_part(source: Scene | ChipSet, kind: str, cfg: UnetConfig) -> np.ndarray:
    """The test pixels (scene: bool mask) or chips (folder: indices) of split ``kind``."""
    if isinstance(source, Scene):
        from slidemap.training import scene as sc

        buffer = 16 if cfg.buffer is None else cfg.buffer
        return sc.split_scene(source, kind, cfg.chip, buffer if kind == "blocked" else 0, cfg.seed).mask(sc.TEST)
    from slidemap.training.chips import chip_buffer, split_chips

    buffer = chip_buffer(source) if cfg.buffer is None else cfg.buffer
    return split_chips(source, kind, 0.2, cfg.seed, buffer if kind == "blocked" else 0)[1]


def run(source: Scene | ChipSet, cfg: UnetConfig, progress: bool = True) -> RunResult:
    """Search, train every model on every split, score, and return everything the cards and report need."""
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = cfg.for_source(isinstance(source, ChipSet))
    if cfg.search_space not in ("focal", "paper"):
        raise ValueError(f"search space {cfg.search_space!r} unknown; use focal or paper")
    order = sorted(cfg.splits, key=lambda s: s != "blocked")  # blocked first: its model is the artefact
    data = {kind: _split_data(source, kind, cfg) for kind in order}
    split_info = {kind: d.summary for kind, d in data.items()}
    split_cfg: dict[str, UnetConfig] = {}
    for kind, d in data.items():
        split_cfg[kind], reason = cfg.for_split(d.summary)
        if reason:
            d.summary["refit"] = reason  # the report and the card say which rule applied
    hp = HyperParams(cfg.optimizer, cfg.learning_rate, cfg.alpha, cfg.gamma)
    records: list[dict[str, Any]] = []
    if cfg.search_iterations > 0:
        search_kind = "blocked" if "blocked" in data else order[0]
        others = [k for k in order if k != search_kind]
        search_data = data[search_kind]
        if others:  # never search on a pixel that is test data in any split
            exclude = np.zeros(0, dtype=np.int64) if isinstance(source, ChipSet) else None
            for other in others:
                part = _test_part(source, other, cfg)
                if isinstance(source, ChipSet):
                    exclude = np.union1d(exclude, part)
                else:
                    exclude = part if exclude is None else exclude | part
            search_data = _split_data(source, search_kind, cfg, exclude)
        hp, records = run_search(search_data, cfg, progress)
        split_info["search"] = {"split": search_kind, "excludes_test_of": others}
    if records:
        top = max(records, key=lambda r: r["score"])
        best = {**hp.to_dict(), "score": top["score"], "iteration": top["iteration"],
                "source": top.get("proposed_by"), "seed_won": seed_won(records), "space": cfg.search_space}
    else:
        best = {**hp.to_dict(), "score": None, "iteration": None, "source": "preset defaults (search off)",
                "seed_won": False, "space": None}
    trained: list[TrainedModel] = []
    specs = model_specs(cfg)
    for kind in order:
        for spec in specs:
            t = train_and_evaluate(data[kind], spec, hp, split_cfg[kind], progress)
            trained.append(t)
            m = t.metrics
            log.info("%s [%s]: F1 %.3f mIoU %.3f PR-AUC %.3f", spec.name, kind, m["f1"], m["miou"], m["pr_auc"])
    primary_split = "blocked" if "blocked" in cfg.splits else order[0]
    primary = next(t for t in trained if t.split == primary_split and t.spec.name == specs[0].name)
    synthetic = bool(source.synthetic)
    return RunResult(cfg, dict(source.source), list(source.bands), cfg.chip if isinstance(source, Scene)
                     else int(source.images.shape[1]), synthetic, source.fingerprint(), split_info, records, best,
                     trained, primary, time.perf_counter() - t0, time.process_time() - c0)


# ---- cards and artefacts -------------------------------------------------------------------
def rank_models(result: RunResult) -> list[TrainedModel]:
    """The run's networks on the primary split, best blocked F1 first (ranks go into the skill blocks)."""
    networks = [t for t in result.trained if t.split == result.primary.split and t.spec.network]
    ranked = sorted(networks, key=lambda t: t.skill["value"], reverse=True)
    for rank, t in enumerate(ranked, start=1):
        t.skill["rank"] = rank
    return ranked


def model_card(result: RunResult, t: TrainedModel, run_id: str) -> dict[str, Any]:
    """The card of one trained network of the primary split."""
    from slidemap.training.unet import TILE_MULTIPLE

    twins = {o.split: _clean_metrics({k: v for k, v in o.metrics.items() if k != "validation"})
             for o in result.trained if o.spec.name == t.spec.name}
    return {
        "synthetic": result.synthetic,
        "run_id": run_id,
        "inputs": list(result.bands),
        "bands": list(result.bands),
        "normalisation": t.normalisation,
        "units": result.source.get("units", "reflectance"),
        "tile_multiple": TILE_MULTIPLE,
        "chip": result.chip,
        "halo": DEFAULT_OVERLAP,
        "detect_tile": DEFAULT_TILE,
        "threshold": t.threshold,
        "threshold_from": threshold_rule(result.config.threshold_plateau)
        + ("; chosen with the first fit, then moved to the refitted network's cut that calls landslide the same "
           "share of fit-part pixels" if (t.training.get("refit") or {}).get("fit_part_share_called_landslide") is not None else ""),
        "inference": {"views": t.views,
                      "rule": "each window's probabilities averaged over this many symmetric views "
                              "(1 as is, 2 + mirror, 4 flips, 8 flips and transposes), as when the threshold was chosen; "
                              "the count was chosen on the validation part"},
        "architecture": {
            "network": ("attention U-Net (Oktay et al. 2018)" if t.spec.attention else "U-Net")
            + (", deep-supervision head" if t.spec.side_outputs else ""),
            "base_width": result.config.base_width,
            "depth": 4,
            "parameters": int(t.model.count_params()),
        },
        "training_data": {
            "fingerprint": result.fingerprint,
            "source": result.source,
            "split": t.split,
            "split_summary": result.splits.get(t.split),
            "sampling": t.balance,
        },
        "hyperparameters": t.hyperparameters,
        "training": t.training,
        "metrics": {t.split: twins.get(t.split, {}),
                    **{f"{k}_split_twin": v for k, v in twins.items() if k != t.split}},
        "skill": {**t.skill, "run_id": run_id},
        "search": {"iterations": len(result.hpo), "best": result.best},
        "label": t.spec.label,
    }


def save_weights_only(model: Any, path: Path) -> None:
    """Save an uncompiled copy: the optimizer's moments would triple the file and serve no detector."""
    import keras

    clone = keras.Model.from_config(model.get_config())  # architecture only: no compile state
    clone.set_weights(model.get_weights())
    clone.save(path)


@dataclass
class SavedModel:
    name: str
    path: Path
    card: dict[str, Any]
    trained: TrainedModel


def save_models(result: RunResult, run_id: str, models_root: Path | None, name: str,
                out_dir: Path | None = None, primary_only: bool = False) -> list[SavedModel]:
    """Save the primary split's networks (the primary under ``name``; with ``out_dir``, only the primary, there)."""
    from slidemap.compute.models.store import read_card, save_artefact

    saved = []
    for t in rank_models(result):
        is_primary = t is result.primary
        if (primary_only or out_dir is not None) and not is_primary:
            continue
        model_name = name if is_primary else t.spec.name
        path = save_artefact(models_root or Path("."), "unet", model_name, model_card(result, t, run_id),
                             lambda p, m=t.model: save_weights_only(m, p), weights_file="model.keras",
                             out_dir=out_dir if is_primary else None)
        saved.append(SavedModel(model_name, path, read_card(path), t))
    return saved


def record_region_default(region_dir: Path, saved: list[SavedModel]) -> SavedModel | None:
    """Record the best saved detector with skill as the region's default (None when none has skill).

    A run without a blocked split (``--splits random``) leaves the recorded default as it was: its
    scores are not blocked scores, so they can neither make nor unmake a default.
    """
    from slidemap.compute.models.select import best_model, record_default, skill_of
    from slidemap.compute.models.store import ModelInfo

    if not any(skill_of(s.card).get("split", "blocked") == "blocked" for s in saved):
        log.warning("no blocked split in this run: the region's default detector stays as it was")
        return None
    info = best_model([ModelInfo(s.name, "unet", s.card["version"], s.path, s.card) for s in saved])
    if info is None:
        record_default(region_dir, "detection", None,
                       "no detector of the latest run has skill on its blocked test (F1 interval at chance)")
        return None
    best = next(s for s in saved if s.path == info.path)
    skill = skill_of(best.card)
    record_default(region_dir, "detection", info,
                   f"best blocked-test F1 with skill in run {best.card.get('run_id')} "
                   f"({skill['value']:.3f}, 95 % CI {skill['ci95'][0]:.3f}-{skill['ci95'][1]:.3f})")
    return best
