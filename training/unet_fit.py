"""Training one segmentation network to convergence: warm-up + cosine learning rate, augmentation,
validation PR-AUC every epoch (or every few), early stopping that restores the best epoch's weights.

The loop is a plain ``train_on_batch`` loop (not ``model.fit``) so that each epoch draws exactly
``epoch_chips`` chips from a sampler (a region is one scene: an "epoch" is a fixed number of random
chips, not a pass over a list), and so that stopping and restoring are explicit and testable.

Early stopping watches the validation PR-AUC (or F1 at the best threshold), not the loss: the focal
loss of a few landslide pixels is noisy and falls long after the ranking has stopped improving. It
stops after ``patience`` epochs without a new best and always ends with the best epoch's weights.
Epochs before ``min_epochs`` are warm-up: they neither stop the run nor become the model (Keras's
``start_from_epoch``). Without that, a nearly untrained network that happens to rank a small
validation part well can win: on a fresh 6 km region (seed 733015, 14 validation landslides) the
averaged weights of epoch 2 scored 0.30, the learning network 0.16-0.20 at epochs 4-10, and the run
stopped at epoch 10 keeping epoch 2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidemap.training.chip_augment import NONE, AugmentConfig, augment_batch
from slidemap.training.seg_data import Sampler, predict_windows
from slidemap.training.seg_metrics import ranking_scores

log = logging.getLogger(__name__)
MONITORS = ("pr_auc", "f1")
VALIDATION_KEYS = tuple(f"val_{m}" for m in MONITORS)  # what validation_scores returns


@dataclass(frozen=True)
class FitConfig:
    base_width: int = 16
    batch_size: int = 8
    epoch_chips: int = 64  # chips drawn per epoch
    max_epochs: int = 30
    min_epochs: int = 4
    patience: int = 6
    monitor: str = "pr_auc"
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    warmup_epochs: int = 2
    final_lr_fraction: float = 0.02  # cosine decay ends at this fraction of the peak rate
    # Polyak averaging: validation, early stopping and the returned model use an exponential moving
    # average of the weights over about this many epochs (0: the raw weights). A region's epoch is 8
    # steps at a high rate, and its raw weights' validation PR-AUC swung by 0.2-0.3 between epochs
    ema_epochs: float = 0.0
    # Validation (and so the early-stopping decision) every this many epochs, and always after the
    # last. Scoring a region's validation windows costs about a fifth of its 8-step epoch, and with
    # the weights averaged over two epochs the next epoch's score says little that is new.
    validate_every: int = 1
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    jit: bool = False
    seed: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, int(np.ceil(self.epoch_chips / self.batch_size)))

    @property
    def ema_momentum(self) -> float | None:
        """The per-step momentum of the weight average (None: no average)."""
        if self.ema_epochs <= 0:
            return None
        return 1.0 - 1.0 / max(2.0, self.ema_epochs * self.steps_per_epoch)


@dataclass
class FitResult:
    model: Any
    history: dict[str, list[float]]
    best_epoch: int  # 1-based; the weights the model ends with
    epochs_run: int
    stopped_early: bool
    seconds: float
    cpu_seconds: float


def learning_rate_schedule(peak: float, steps_per_epoch: int, epochs: int, warmup_epochs: int,
                           final_fraction: float = 0.02) -> Any:
    """Linear warm-up from peak/10 to ``peak`` over ``warmup_epochs``, then cosine decay to
    ``final_fraction * peak`` at the end of ``epochs``."""
    import keras

    warmup = max(0, min(warmup_epochs, epochs - 1)) * steps_per_epoch
    decay = max(1, epochs * steps_per_epoch - warmup)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 10 if warmup else peak, decay_steps=decay, alpha=final_fraction,
        warmup_target=peak if warmup else None, warmup_steps=warmup,
    )


def make_optimizer(name: str, schedule: Any, ema_momentum: float | None = None) -> Any:
    import keras

    average = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=schedule, **average)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, **average)
    raise ValueError(f"unknown optimizer {name!r}")


class AveragedWeights:
    """Keras's ``SwapEMAWeights`` driven by hand (the loop is not ``model.fit``): ``with averaged:``
    puts the optimizer's moving average of the weights into the model and the raw ones back after;
    :meth:`keep` leaves the average in for good. Does nothing for an optimizer without ``use_ema``."""

    def __init__(self, model: Any) -> None:
        import keras

        self.active = bool(getattr(model.optimizer, "use_ema", False))
        self._swap = keras.callbacks.SwapEMAWeights()
        self._swap.set_model(model)
        self.model = model

    def __enter__(self) -> AveragedWeights:
        if self.active:
            self._swap.on_test_begin()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self._swap.on_test_end()

    def keep(self) -> None:
        if self.active:
            self.model.optimizer.finalize_variable_values(self.model.trainable_variables)


def validation_scores(model: Any, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
    """PR-AUC and the best F1 over thresholds on validation windows (pooled valid pixels)."""
    if len(x) == 0:
        return {"val_pr_auc": float("nan"), "val_f1": float("nan")}
    score, f1 = ranking_scores(y, predict_windows(model, x, batch_size))
    return {"val_pr_auc": 0.0 if not np.isfinite(score) else score, "val_f1": f1}


class EarlyStopping:
    """Keeps the best epoch's weights by ``monitor`` (higher is better); says when to stop."""

    def __init__(self, patience: int, min_epochs: int = 1) -> None:
        self.patience = int(patience)
        self.min_epochs = int(min_epochs)
        self.best = -np.inf
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None

    def update(self, epoch: int, score: float, model: Any) -> bool:
        """Record epoch ``epoch`` (1-based) with ``score``; return True when training should stop."""
        if epoch < self.min_epochs:
            return False  # warm-up: not a candidate, and no patience spent
        if np.isfinite(score) and score > self.best:
            self.best, self.best_epoch = float(score), epoch
            self.best_weights = [np.array(w, copy=True) for w in model.get_weights()]
        if self.patience <= 0:
            return False
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: Any) -> None:
        if self.best_weights is not None:
            model.set_weights(self.best_weights)


def build_model(bands: int, base_width: int, attention: bool, seed: int, side_outputs: bool = False) -> Any:
    from slidemap.compute.models.runtime import configure_tensorflow
    from slidemap.training.unet import build_unet

    configure_tensorflow()  # the one place TensorFlow is configured, before Keras imports it
    import keras

    keras.utils.set_random_seed(seed)
    return build_unet(bands, base_width, attention=attention, side_outputs=side_outputs)


def fit_network(
    sampler: Sampler,
    val_x: np.ndarray | None,
    val_y: np.ndarray | None,
    bands: int,
    cfg: FitConfig,
    loss: str,
    alpha: float = 0.25,
    gamma: float = 2.0,
    dice_weight: float = 1.0,
    attention: bool = True,
    epochs: int | None = None,
    side_outputs: bool = False,
    progress: bool = False,
    desc: str = "train",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Build and train one network.

    With validation windows: up to ``cfg.max_epochs`` epochs, early stopping on ``cfg.monitor``, best
    weights restored. With ``epochs`` (the refit): exactly that many epochs, no validation, the last
    weights kept, the learning-rate schedule stretched over those epochs.
    """
    from tqdm.auto import tqdm

    from slidemap.training.losses import make_loss

    if cfg.monitor not in MONITORS:
        raise ValueError(f"monitor {cfg.monitor!r} unknown; use one of {MONITORS}")
    t0, c0 = time.perf_counter(), time.process_time()
    model = build_model(bands, cfg.base_width, attention, cfg.seed, side_outputs)
    n_epochs = int(epochs) if epochs else cfg.max_epochs
    steps = cfg.steps_per_epoch
    schedule = learning_rate_schedule(cfg.learning_rate, steps, n_epochs, cfg.warmup_epochs, cfg.final_lr_fraction)
    model.compile(optimizer=make_optimizer(cfg.optimizer, schedule, cfg.ema_momentum),
                  loss=make_loss(loss, alpha, gamma, dice_weight), jit_compile=cfg.jit)
    averaged = AveragedWeights(model)
    rng = np.random.default_rng(cfg.seed)
    validate = epochs is None and val_x is not None and len(val_x) > 0
    # a budget shorter than the warm-up (e.g. --epochs 5 with min_epochs 8) still validates its last
    # epoch as a candidate, so the averaged weights of a scored epoch ship, never unscored ones
    stopper = EarlyStopping(cfg.patience if validate else 0, min(cfg.min_epochs, n_epochs))
    history: dict[str, list[float]] = {"loss": [], "lr": []}
    bar = tqdm(total=n_epochs, desc=desc, unit="epoch", disable=not progress, leave=False)
    stopped = False
    epoch = 0
    try:
        for epoch in range(1, n_epochs + 1):
            losses = []
            for _ in range(steps):
                x, y = sampler.batch(rng, cfg.batch_size)
                x, y = augment_batch(x, y, rng, cfg.augment or NONE)
                out = model.train_on_batch(x, y.astype(np.float32)[..., None])
                losses.append(float(np.asarray(out if np.ndim(out) == 0 else out[0])))
            history["loss"].append(float(np.mean(losses)))
            history["lr"].append(float(np.asarray(model.optimizer.learning_rate)))
            logs = {"loss": history["loss"][-1]}
            if validate and (epoch % max(1, cfg.validate_every) == 0 or epoch == n_epochs):
                assert val_x is not None and val_y is not None
                with averaged:  # scored and kept as the averaged weights (the raw ones train on)
                    scores = validation_scores(model, val_x, val_y, cfg.batch_size)
                    stop = stopper.update(epoch, scores[f"val_{cfg.monitor}"], model)
                for k, v in scores.items():
                    history.setdefault(k, []).append(v)
                logs.update(scores)
            else:
                stop = False
                for k in VALIDATION_KEYS if validate else ():
                    history.setdefault(k, []).append(np.nan)  # one entry per epoch: NaN where not scored
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()})
            bar.update(1)
            if on_epoch:
                on_epoch(epoch, logs)
            if stop and epoch < n_epochs:
                stopped = True
                break
    finally:
        bar.close()
    if validate and stopper.best_weights is not None:
        stopper.restore(model)  # the averaged weights of the best epoch
        best_epoch = stopper.best_epoch
    else:
        averaged.keep()
        best_epoch = epoch
    return FitResult(model, history, best_epoch, epoch, stopped, time.perf_counter() - t0, time.process_time() - c0)
