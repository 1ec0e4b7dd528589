"""Train the attention U-Net: presets, search, the four-model comparison, baselines, artefact.

One run (:func:`run`) does, on one :class:`~slidemap.training.chips.ChipSet`:

1. both splits (random 80/20 and spatially blocked 80/20);
2. the GP + EI search on chips that are training chips in *both* splits (so no test chip of
   either split ever informs the hyperparameters), scored on a blocked validation part of them;
3. each model of the run (the attention U-Net with the best set, or the paper's four-model
   comparison; optionally a plain U-Net with BCE and a per-pixel gradient-boosting baseline),
   trained once per split with early stopping on a validation part carved from that split's
   training chips, thresholded on that validation part, and scored on the test chips;
4. the first model of the blocked split is saved as the artefact (its metrics are the honest
   ones); training curves go beside the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.training.chips import ChipSet, fit_normalisation, normalise, random_split, split
from slidemap.training.search import HyperParams, bayesian_search
from slidemap.training.seg_metrics import choose_threshold, segmentation_metrics

log = logging.getLogger(__name__)
SPLITS = ("random", "blocked")
DETECT_TILE = 256
DETECT_OVERLAP = 64


@dataclass
class UnetConfig:
    preset: str = "demo"
    base_width: int = 8
    epochs: int = 12
    batch_size: int = 8
    patience: int = 4
    search_iterations: int = 4
    search_epochs: int = 2
    compare: bool = False
    compare_epochs: tuple[int, int] = (50, 100)
    baselines: bool = False
    chip: int = 128
    stride: int | None = None
    bands: list[str] | None = None
    augment: bool = True
    negatives_ratio: float | None = None  # keep at most this many landslide-free chips per landslide chip
    seed: int = 0
    # used when the search is off (search_iterations = 0)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    alpha: float = 0.75
    gamma: float = 2.0
    splits: tuple[str, ...] = SPLITS
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["compare_epochs"] = list(self.compare_epochs)
        out["splits"] = list(self.splits)
        return out


PRESETS: dict[str, UnetConfig] = {
    # tests and smoke runs: tiny widths, one or two epochs, three search iterations
    "quick": UnetConfig(
        preset="quick", base_width=4, epochs=2, batch_size=8, patience=2, search_iterations=3,
        search_epochs=1, compare_epochs=(1, 2), stride=64, negatives_ratio=1.0,
    ),
    # the README's main job: small widths, a short search, then a final model
    "demo": UnetConfig(
        preset="demo", base_width=8, epochs=14, batch_size=8, patience=4, search_iterations=4,
        search_epochs=3, compare_epochs=(6, 12), stride=128, negatives_ratio=1.0,
    ),
    # the paper's settings: width 64, batch 4, early stopping patience 10, 30 search iterations
    "paper": UnetConfig(
        preset="paper", base_width=64, epochs=100, batch_size=4, patience=10, search_iterations=30,
        search_epochs=10, compare=True, compare_epochs=(50, 100), stride=64,
    ),
}


def preset(name: str, **overrides: Any) -> UnetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[name], **clean)


@dataclass
class ModelSpec:
    name: str
    loss: str  # focal | bce | pixel-hgb
    epochs: int
    attention: bool = True
    label: str = ""


@dataclass
class TrainedModel:
    spec: ModelSpec
    split: str
    model: Any
    normalisation: dict[str, Any]
    threshold: float
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    hyperparameters: dict[str, Any]
    n_train: int
    n_val: int
    n_test: int
    seconds: float


# ---- data feeding -------------------------------------------------------------------------
def _targets(masks: np.ndarray) -> np.ndarray:
    return masks.astype(np.float32)[..., None]  # 255 stays: the losses mask it out


def _make_sequence(x: np.ndarray, y: np.ndarray, batch_size: int, augment: bool, seed: int) -> Any:
    import keras

    class ChipSequence(keras.utils.PyDataset):
        """Shuffled batches with random flips and quarter turns (labels move with the image)."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return int(np.ceil(len(x) / batch_size))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            bx, by = x[idx], y[idx]
            if augment:
                if self.rng.random() < 0.5:
                    bx, by = bx[:, :, ::-1], by[:, :, ::-1]
                if self.rng.random() < 0.5:
                    bx, by = bx[:, ::-1], by[:, ::-1]
                if bx.shape[1] == bx.shape[2]:
                    k = int(self.rng.integers(4))
                    bx, by = np.rot90(bx, k, axes=(1, 2)), np.rot90(by, k, axes=(1, 2))
            return np.ascontiguousarray(bx), np.ascontiguousarray(by)

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return ChipSequence()


def _tqdm_callback(total: int, desc: str, enabled: bool) -> Any:
    import keras
    from tqdm.auto import tqdm

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = tqdm(total=total, desc=desc, unit="epoch", disable=not enabled, leave=False)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k.endswith("loss")})
            self.bar.update(1)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return EpochBar()


def _optimizer(name: str, learning_rate: float) -> Any:
    import keras

    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def fit_network(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    bands: int,
    hp: HyperParams,
    loss: str,
    epochs: int,
    cfg: UnetConfig,
    attention: bool = True,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, dict[str, list[float]]]:
    """Build and train one network on normalised arrays; early stopping restores the best epoch."""
    import keras

    from slidemap.compute.inference import configure_tensorflow
    from slidemap.training.losses import make_loss
    from slidemap.training.unet import build_unet

    configure_tensorflow()
    keras.utils.set_random_seed(cfg.seed)
    model = build_unet(bands, cfg.base_width, attention=attention)
    model.compile(optimizer=_optimizer(hp.optimizer, hp.learning_rate), loss=make_loss(loss, hp.alpha, hp.gamma))
    data = _make_sequence(x_train, y_train, cfg.batch_size, cfg.augment, cfg.seed)
    has_val = x_val is not None and len(x_val) > 0
    callbacks = [_tqdm_callback(epochs, desc, progress)]
    if cfg.patience and epochs > 1:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if has_val else "loss", patience=cfg.patience, restore_best_weights=True
            )
        )
    history = model.fit(
        data,
        validation_data=(x_val, y_val) if has_val else None,
        validation_batch_size=cfg.batch_size,
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return model, hist


def predict_chips(model: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Probabilities ``[N, H, W]`` for normalised chips ``[N, H, W, C]``."""
    out = [np.asarray(model.predict_on_batch(x[i : i + batch_size]))[..., 0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=0) if out else np.zeros((0,) + x.shape[1:3], np.float32)


def _carve_validation(chips: ChipSet, idx: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into fit / validation parts the same way the test split was made."""
    sub = chips.subset(idx)
    try:
        fit, val = split(sub, kind, 0.2, seed + 1)
    except Exception:  # too few blocks inside the training part: fall back to random chips
        fit, val = random_split(len(sub), 0.2, seed + 1)
    if len(fit) == 0 or len(val) == 0:
        fit, val = random_split(len(sub), 0.2, seed + 1)
    return idx[fit], idx[val]


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


def fit_pixel_hgb(x: np.ndarray, masks: np.ndarray, seed: int, max_pixels: int = 300_000) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    f = pixel_features(x).reshape(-1, pixel_features(x[:1]).shape[-1])
    y = masks.reshape(-1)
    keep = np.flatnonzero(y != 255)
    rng = np.random.default_rng(seed)
    if len(keep) > max_pixels:
        keep = rng.choice(keep, max_pixels, replace=False)
    clf = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.1, random_state=seed, early_stopping=True)
    clf.fit(f[keep], y[keep])
    return clf


def predict_pixel_hgb(clf: Any, x: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(x), 32):
        f = pixel_features(x[i : i + 32])
        p = clf.predict_proba(f.reshape(-1, f.shape[-1]))[:, 1]
        out.append(p.reshape(f.shape[:3]).astype(np.float32))
    return np.concatenate(out, axis=0)


# ---- one model on one split ----------------------------------------------------------------
def train_and_evaluate(
    chips: ChipSet,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    split_kind: str,
    spec: ModelSpec,
    hp: HyperParams,
    cfg: UnetConfig,
    progress: bool = True,
) -> TrainedModel:
    t0 = time.perf_counter()
    fit_idx, val_idx = _carve_validation(chips, train_idx, split_kind, cfg.seed)
    norm = fit_normalisation(chips.subset(train_idx))
    x_fit = normalise(chips.images[fit_idx], norm)
    x_val = normalise(chips.images[val_idx], norm)
    x_test = normalise(chips.images[test_idx], norm)
    history: dict[str, list[float]] = {}
    if spec.loss == "pixel-hgb":
        model = fit_pixel_hgb(x_fit, chips.masks[fit_idx], cfg.seed)
        p_val = predict_pixel_hgb(model, x_val)
        p_test = predict_pixel_hgb(model, x_test)
        used = {"model": "HistGradientBoostingClassifier", "features": "bands, 3x3 and 9x9 means, 9x9 std, Sobel gradient"}
    else:
        model, history = fit_network(
            x_fit, _targets(chips.masks[fit_idx]), x_val, _targets(chips.masks[val_idx]), len(chips.bands), hp,
            spec.loss, spec.epochs, cfg, attention=spec.attention, progress=progress,
            desc=f"{spec.name} ({split_kind})",
        )
        p_val = predict_chips(model, x_val, cfg.batch_size * 2)
        p_test = predict_chips(model, x_test, cfg.batch_size * 2)
        used = {**hp.to_dict(), "loss": spec.loss, "max_epochs": spec.epochs,
                "epochs_run": len(history.get("loss", [])), "base_width": cfg.base_width,
                "attention": spec.attention, "batch_size": cfg.batch_size, "patience": cfg.patience}
        if spec.loss == "bce":
            used.pop("alpha")
            used.pop("gamma")
    threshold = choose_threshold(chips.masks[val_idx], p_val)
    metrics = segmentation_metrics(chips.masks[test_idx], p_test, threshold)
    metrics["validation"] = segmentation_metrics(chips.masks[val_idx], p_val, threshold)
    return TrainedModel(spec, split_kind, model, norm, threshold, metrics, history, used,
                        len(fit_idx), len(val_idx), len(test_idx), time.perf_counter() - t0)


# ---- the search ---------------------------------------------------------------------------
def search_pool(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Chips on the training side of every split."""
    pool: np.ndarray | None = None
    for train, _ in splits.values():
        pool = train if pool is None else np.intersect1d(pool, train)
    assert pool is not None
    return pool


def run_search(
    chips: ChipSet, pool: np.ndarray, cfg: UnetConfig, progress: bool = True,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[HyperParams, list[dict[str, Any]]]:
    """GP + EI over the paper's space; objective = validation PR-AUC of a short focal-loss run.

    PR-AUC rather than the paper's accuracy: with a few per cent landslide pixels, predicting
    "background" everywhere already scores ~0.97 accuracy, so accuracy cannot rank the sets.
    """
    fit_idx, val_idx = _carve_validation(chips, pool, "blocked", cfg.seed + 7)
    norm = fit_normalisation(chips.subset(pool))
    x_fit, y_fit = normalise(chips.images[fit_idx], norm), _targets(chips.masks[fit_idx])
    x_val = normalise(chips.images[val_idx], norm)
    short = replace(cfg, patience=0)

    def objective(hp: HyperParams) -> float:
        from slidemap.training.seg_metrics import pr_auc

        model, _ = fit_network(x_fit, y_fit, None, None, len(chips.bands), hp, "focal", cfg.search_epochs,
                               short, progress=False)
        score = pr_auc(chips.masks[val_idx], predict_chips(model, x_val, cfg.batch_size * 2))
        return 0.0 if not np.isfinite(score) else score

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.search_iterations, desc="GP+EI search", unit="iter", disable=not progress, leave=False)

    def record(rec: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(score=f"{rec['score']:.4f}")
        if on_iteration:
            on_iteration(rec)

    try:
        best, records = bayesian_search(objective, cfg.search_iterations, cfg.seed, on_iteration=record)
    finally:
        bar.close()
    for rec in records:
        rec["objective"] = "validation PR-AUC"
        rec["epochs"] = cfg.search_epochs
    return best, records


# ---- the whole run -----------------------------------------------------------------------
def model_specs(cfg: UnetConfig) -> list[ModelSpec]:
    if cfg.compare:
        e1, e2 = cfg.compare_epochs
        specs = [
            ModelSpec(f"model-1-focal-{e1}", "focal", e1, label=f"attention U-Net, focal, {e1} epochs"),
            ModelSpec(f"model-2-bce-{e1}", "bce", e1, label=f"attention U-Net, BCE, {e1} epochs"),
            ModelSpec(f"model-3-focal-{e2}", "focal", e2, label=f"attention U-Net, focal, {e2} epochs"),
            ModelSpec(f"model-4-bce-{e2}", "bce", e2, label=f"attention U-Net, BCE, {e2} epochs"),
        ]
    else:
        specs = [ModelSpec("attention-unet-focal", "focal", cfg.epochs, label="attention U-Net, focal loss")]
    if cfg.baselines:
        specs.append(ModelSpec("unet-bce", "bce", specs[0].epochs, attention=False, label="plain U-Net, BCE"))
        specs.append(ModelSpec("pixel-hgb", "pixel-hgb", 0, attention=False,
                               label="per-pixel HistGradientBoosting"))
    return specs


@dataclass
class RunResult:
    config: UnetConfig
    chips: ChipSet
    splits: dict[str, dict[str, int]]
    hpo: list[dict[str, Any]]
    best: dict[str, Any]
    trained: list[TrainedModel]
    primary: TrainedModel


def balance(chips: ChipSet, ratio: float | None, seed: int) -> ChipSet:
    """Keep every chip with a landslide pixel and at most ``ratio`` times as many without (seeded)."""
    if ratio is None:
        return chips
    positive = (chips.masks == 1).reshape(len(chips), -1).any(axis=1)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    n_neg = int(round(ratio * max(len(pos), 1)))
    if len(neg) <= n_neg:
        return chips
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([pos, rng.choice(neg, n_neg, replace=False)]))
    out = chips.subset(keep)
    out.source = {**chips.source, "balanced": f"all {len(pos)} landslide chips + {n_neg} of {len(neg)} landslide-free chips"}
    return out


def run(chips: ChipSet, cfg: UnetConfig, progress: bool = True) -> RunResult:
    """Search, train every model on every split, and return everything the report needs."""
    chips = balance(chips, cfg.negatives_ratio, cfg.seed)
    if len(chips) < 10:
        raise ValueError(f"only {len(chips)} chips; a run needs at least 10 (use a larger region or a smaller --stride)")
    splits = {kind: split(chips, kind, 0.2, cfg.seed) for kind in cfg.splits}
    split_info = {k: {"train": int(len(tr)), "test": int(len(te))} for k, (tr, te) in splits.items()}
    hp = HyperParams(cfg.optimizer, cfg.learning_rate, cfg.alpha, cfg.gamma)
    records: list[dict[str, Any]] = []
    if cfg.search_iterations > 0:
        pool = search_pool(splits)
        hp, records = run_search(chips, pool, cfg, progress)
        split_info["search_pool"] = {"chips": int(len(pool))}
    best = {**hp.to_dict(), "score": max((r["score"] for r in records), default=None),
            "iteration": max(records, key=lambda r: r["score"])["iteration"] if records else None,
            "source": (max(records, key=lambda r: r["score"]).get("proposed_by", "GP+EI search")
                       if records else "preset defaults (search off)")}
    trained: list[TrainedModel] = []
    specs = model_specs(cfg)
    # blocked first: its first model is the artefact, so it is ready even if a later model fails
    order = sorted(cfg.splits, key=lambda s: s != "blocked")
    for kind in order:
        train_idx, test_idx = splits[kind]
        for spec in specs:
            trained.append(train_and_evaluate(chips, train_idx, test_idx, kind, spec, hp, cfg, progress))
            m = trained[-1].metrics
            log.info("%s [%s]: F1 %.3f mIoU %.3f PR-AUC %.3f", spec.name, kind, m["f1"], m["miou"], m["pr_auc"])
    primary_split = "blocked" if "blocked" in cfg.splits else cfg.splits[0]
    primary = next(t for t in trained if t.split == primary_split and t.spec.name == specs[0].name)
    return RunResult(cfg, chips, split_info, records, best, trained, primary)


def model_card(result: RunResult) -> dict[str, Any]:
    """The card of the primary model (attention U-Net, focal, trained on the blocked split)."""
    from slidemap.training.unet import TILE_MULTIPLE

    p = result.primary
    chips = result.chips
    twin = {t.split: t.metrics for t in result.trained if t.spec.name == p.spec.name}
    clean = {k: {kk: vv for kk, vv in v.items() if kk not in ("confusion", "validation")} for k, v in twin.items()}
    return {
        "synthetic": chips.synthetic,
        "inputs": list(chips.bands),
        "bands": list(chips.bands),
        "normalisation": p.normalisation,
        "units": chips.source.get("units", "reflectance"),
        "tile_multiple": TILE_MULTIPLE,
        "chip": int(chips.images.shape[1]),
        "halo": DETECT_OVERLAP,
        "detect_tile": DETECT_TILE,
        "threshold": p.threshold,
        "training_data": {
            "fingerprint": chips.fingerprint(),
            "source": chips.source,
            "chips": len(chips),
            "split": p.split,
            "train_chips": p.n_train,
            "validation_chips": p.n_val,
            "test_chips": p.n_test,
        },
        "hyperparameters": p.hyperparameters,
        "metrics": {"blocked" if p.split == "blocked" else p.split: clean.get(p.split, {}),
                    **{f"{k}_split_twin": v for k, v in clean.items() if k != p.split}},
        "search": {"iterations": len(result.hpo), "best": result.best},
    }


def save_model(result: RunResult, models_root: Path | None, name: str, out_dir: Path | None = None) -> Path:
    from slidemap.compute.models.store import save_artefact

    return save_artefact(
        models_root or Path("."), "unet", name, model_card(result), lambda path: save_weights_only(result.primary.model, path),
        weights_file="model.keras", out_dir=out_dir,
    )


def save_weights_only(model: Any, path: Path) -> None:
    """Save an uncompiled copy: the optimizer's moments would triple the file and serve no detector."""
    import keras

    clone = keras.Model.from_config(model.get_config())  # architecture only: no compile state
    clone.set_weights(model.get_weights())
    clone.save(path)
