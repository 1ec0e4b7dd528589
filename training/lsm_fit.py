"""Fitting one susceptibility model on one training set, with its validation set.

Every model -- network or scikit-learn peer -- is fitted on the same *inner training* samples and
sees the same *validation* samples (an inner spatial split of the training part, never the test
set): the networks stop early on the validation ROC-AUC and keep their best epoch; every model's
decision threshold is Youden's J on its validation predictions.

Networks train with a warm-up and a cosine-decaying learning rate, class-balanced weights, and
augmentation: a random symmetry of the square per sample (aspect turned with it,
:mod:`slidemap.training.window_augment`) and a random shift of the window centre by up to ``jitter``
cells. Inputs are cut on demand from the encoded stack, so a training set never sits in memory as
windows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from slidemap.compute.maps.windows import OUT_SIZE, extract_windows, iter_windows
from slidemap.training.window_augment import augment_batch
from slidemap.training.baselines import fit_baseline, make_baseline
from slidemap.training.cls_metrics import youden_threshold
from slidemap.training.lsm_config import BASELINES, WINDOW_MODELS, LsmConfig
from slidemap.training.samples import RegionData, SampleSet

log = logging.getLogger(__name__)
PREDICT_BATCH = 1024


@dataclass(frozen=True)
class ModelInputs:
    """Which encoded channels a model reads: all of them at the centre cell; in the windows, all
    but the categorical one-hots unless ``window_classes`` (one channel per class per window is the
    costliest part of a 3D convolution over the channel depth)."""

    window_channels: tuple[int, ...]
    centre_channels: tuple[int, ...]
    window_aspect: tuple[int | None, int | None]
    centre_aspect: tuple[int | None, int | None]

    @classmethod
    def for_data(cls, data: RegionData, window_classes: bool) -> ModelInputs:
        enc = data.encoding
        window = tuple(i for i, c in enumerate(enc.channels) if window_classes or c.kind != "onehot")
        centre = tuple(range(len(enc.channels)))

        def aspect(chosen: tuple[int, ...]) -> tuple[int | None, int | None]:
            pos = {enc.channels[i].kind: k for k, i in enumerate(chosen) if enc.channels[i].factor == "aspect"}
            return pos.get("sin"), pos.get("cos")

        return cls(window, centre, aspect(window), aspect(centre))


@dataclass
class FittedModel:
    name: str
    model: Any  # keras.Model | sklearn estimator
    kind: str  # "window" | "centre"
    inputs: ModelInputs
    sizes: tuple[int, ...] = ()
    threshold: float = 0.5
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epochs: list[int] = field(default_factory=list)
    seconds: float = 0.0
    samples_seen: int = 0


class StackCache:
    """The contiguous window stack of one channel subset (built once per run)."""

    def __init__(self, data: RegionData):
        self.data = data
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def window_stack(self, channels: tuple[int, ...]) -> np.ndarray:
        if channels not in self._cache:
            self._cache[channels] = np.ascontiguousarray(self.data.encoded[list(channels)])
        return self._cache[channels]

    def centre(self, channels: tuple[int, ...], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        values = self.data.encoded[:, rows, cols]  # [all channels, N]: gather the cells first
        if len(channels) != values.shape[0]:
            values = values[list(channels)]
        return np.ascontiguousarray(values.T, dtype=np.float32)


def predict_cells(fitted: FittedModel, stacks: StackCache, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Probabilities of a fitted model at cells of the region."""
    out = np.empty(len(rows), dtype=np.float32)
    if not len(rows):
        return out
    centre = stacks.centre(fitted.inputs.centre_channels, rows, cols)
    if fitted.kind == "centre":
        out[:] = fitted.model.predict_proba(centre)[:, 1]
        return out
    from slidemap.compute.models.runtime import compiled_predict

    predict = compiled_predict(fitted.model)
    stack = stacks.window_stack(fitted.inputs.window_channels)
    for start, windows in iter_windows(stack, rows, cols, fitted.sizes, OUT_SIZE, PREDICT_BATCH):
        out[start : start + len(windows)] = predict([windows, centre[start : start + len(windows)]]).reshape(-1)
    return out


def fit_model(
    name: str,
    cfg: LsmConfig,
    stacks: StackCache,
    inputs: ModelInputs,
    train: SampleSet,
    val: SampleSet,
    seed: int,
    on_epoch: Callable[[], None] | None = None,
) -> FittedModel:
    t0 = time.perf_counter()
    if name in BASELINES:
        model = make_baseline(name, {"gbdt_trees": cfg.gbdt_trees, "rf_trees": cfg.rf_trees}, seed)
        X = stacks.centre(inputs.centre_channels, train.rows, train.cols)
        fitted = FittedModel(name, fit_baseline(model, X, train.y.astype(int), train.weight), "centre", inputs)
        fitted.samples_seen = len(train)
    else:
        fitted = _fit_window(name, cfg, stacks, inputs, train, val, seed, on_epoch)
    p_val = predict_cells(fitted, stacks, val.rows, val.cols)
    fitted.threshold = youden_threshold(val.y, p_val)
    fitted.seconds = round(time.perf_counter() - t0, 2)
    return fitted


def _fit_window(
    name: str,
    cfg: LsmConfig,
    stacks: StackCache,
    inputs: ModelInputs,
    train: SampleSet,
    val: SampleSet,
    seed: int,
    on_epoch: Callable[[], None] | None,
) -> FittedModel:
    import keras

    from slidemap.training.lsm_networks import average_models, build_window_cnn, set_centre_linear

    sizes = WINDOW_MODELS[name]
    stack = stacks.window_stack(inputs.window_channels)
    val_windows = extract_windows(stack, val.rows, val.cols, sizes, OUT_SIZE)
    val_centre = stacks.centre(inputs.centre_channels, val.rows, val.cols)
    members, best_epochs, seen = [], [], 0
    history: dict[str, list[float]] = {"loss": [], "val_roc_auc": [], "lr": [], "start_val_roc_auc": []}
    start = (logistic_start(stacks.centre(inputs.centre_channels, train.rows, train.cols), train.y, train.weight)
             if cfg.centre_linear else None)
    for member in range(cfg.ensemble):
        member_seed = seed + 1000 * member
        keras.utils.set_random_seed(member_seed)
        model = build_window_cnn(
            len(inputs.window_channels), len(sizes), len(inputs.centre_channels), widths=cfg.widths,
            dense=cfg.dense_units, dropout=cfg.dropout, name=f"{name}_m{member}", seed=member_seed,
            centre_linear=cfg.centre_linear,
        )
        if start is not None:
            set_centre_linear(model, *start)
        batches = _batches_class()(stack, stacks, inputs, train, sizes, cfg, member_seed)
        steps = len(batches) * cfg.epochs
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=_schedule(cfg, len(batches), steps)),
                      loss="binary_crossentropy", weighted_metrics=[])
        stopper = _EarlyStopping(val_windows, val_centre, val.y, cfg.patience, on_epoch,
                                 start_is_candidate=cfg.centre_linear)
        model.fit(batches, epochs=cfg.epochs, verbose=0, callbacks=[stopper.callback()])
        stopper.restore(model)
        members.append(model)
        history["loss"] += list(stopper.losses)
        history["val_roc_auc"] += list(stopper.scores)
        if cfg.centre_linear:
            history["start_val_roc_auc"].append(round(stopper.start_score, 5))
        best_epochs.append(stopper.best_epoch + 1)
        seen += len(train) * len(stopper.scores)
    model = average_models(members, name) if len(members) > 1 else members[0]
    fitted = FittedModel(name, model, "window", inputs, sizes, history=history, best_epochs=best_epochs)
    fitted.samples_seen = seen
    return fitted


def logistic_start(centre: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, float]:
    """Kernel and bias on the raw centre values of the ``logreg`` peer's model (standardised
    logistic regression, the same class weights) fitted on these samples: the centre-linear path's
    starting point."""
    model = fit_baseline(make_baseline("logreg", {}), centre, np.asarray(y).astype(int), weight)
    scaler, lr = model.steps[0][1], model.steps[-1][1]
    kernel = lr.coef_[0] / scaler.scale_
    bias = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
    return kernel.astype(np.float32), bias


def _schedule(cfg: LsmConfig, steps_per_epoch: int, total_steps: int) -> Any:
    import keras

    if cfg.schedule == "constant":
        return cfg.lr
    warmup = min(cfg.warmup_epochs * steps_per_epoch, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.lr * 0.1 if warmup else cfg.lr,
        decay_steps=max(total_steps - warmup, 1),
        alpha=0.02,
        warmup_target=cfg.lr if warmup else None,
        warmup_steps=warmup,
    )


class _EarlyStopping:
    """Validation ROC-AUC after every epoch; keeps the best weights; stops after ``patience``
    epochs without improvement (0: never stops early, still keeps the best)."""

    def __init__(self, windows: np.ndarray, centre: np.ndarray, y: np.ndarray, patience: int,
                 on_epoch: Callable[[], None] | None, start_is_candidate: bool = False):
        self.start_is_candidate = start_is_candidate
        self.windows, self.centre, self.y = windows, centre, np.asarray(y)
        self.patience, self.on_epoch = patience, on_epoch
        self.scores: list[float] = []
        self.losses: list[float] = []
        self.best_epoch = -1
        self.best_score = -np.inf
        self.best_weights: list[np.ndarray] | None = None
        self.start_score = float("nan")

    def score(self, model: Any) -> float:
        p = np.concatenate([
            np.asarray(model([self.windows[i : i + PREDICT_BATCH], self.centre[i : i + PREDICT_BATCH]], training=False))
            for i in range(0, len(self.y), PREDICT_BATCH)
        ]).reshape(-1)
        return float(roc_auc_score(self.y, p)) if len(np.unique(self.y)) == 2 else float("nan")

    def callback(self) -> Any:
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                # a network started at a logistic regression keeps that start when no epoch beats
                # it on validation (best epoch 0); a random start is never a candidate
                if not outer.start_is_candidate:
                    return
                outer.start_score = outer.score(self.model)
                outer.best_score, outer.best_epoch = outer.start_score, -1
                outer.best_weights = [w.copy() for w in self.model.get_weights()]

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                score = outer.score(self.model)
                outer.scores.append(round(score, 5))
                outer.losses.append(round(float((logs or {}).get("loss", float("nan"))), 5))
                if outer.on_epoch:
                    outer.on_epoch()
                if score > outer.best_score or outer.best_weights is None:
                    outer.best_score, outer.best_epoch = score, epoch
                    outer.best_weights = [w.copy() for w in self.model.get_weights()]
                elif outer.patience and epoch - outer.best_epoch >= outer.patience:
                    self.model.stop_training = True

        return Callback()

    def restore(self, model: Any) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


def _batches_class() -> type:
    import keras

    class WindowBatches(keras.utils.PyDataset):
        """Shuffled batches of (windows, centre values), jittered and augmented, cut on demand."""

        def __init__(self, stack, stacks, inputs, samples, sizes, cfg, seed):
            super().__init__()
            self.stack, self.stacks, self.inputs, self.samples = stack, stacks, inputs, samples
            self.sizes, self.cfg = sizes, cfg
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(samples))
            h, w = stack.shape[1:]
            self.limits = (h - 1, w - 1)

        def __len__(self) -> int:
            return int(np.ceil(len(self.samples) / self.cfg.batch))

        def __getitem__(self, i: int):
            sel = self.order[i * self.cfg.batch : (i + 1) * self.cfg.batch]
            rows, cols = self.samples.rows[sel], self.samples.cols[sel]
            if self.cfg.jitter:
                j = self.cfg.jitter
                rows = np.clip(rows + self.rng.integers(-j, j + 1, len(rows)), 0, self.limits[0])
                cols = np.clip(cols + self.rng.integers(-j, j + 1, len(cols)), 0, self.limits[1])
            windows = extract_windows(self.stack, rows, cols, self.sizes, OUT_SIZE)
            # the centre values stay those of the sample cell: the label belongs to it
            centre = self.stacks.centre(self.inputs.centre_channels, self.samples.rows[sel], self.samples.cols[sel])
            if self.cfg.augment:
                windows, centre = augment_batch(windows, centre, self.rng, self.inputs.window_aspect,
                                                self.inputs.centre_aspect)
            y = self.samples.y[sel].astype(np.float32).reshape(-1, 1)
            return (windows, centre), y, self.samples.weight[sel]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(self.samples))

    return WindowBatches
