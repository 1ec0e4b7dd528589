"""Focal loss and binary cross-entropy for per-pixel landslide probabilities.

Focal loss (Lin et al. 2017), written once:

    FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)

with ``p_t = p`` and ``alpha_t = alpha`` on landslide pixels, ``p_t = 1 - p`` and
``alpha_t = 1 - alpha`` on background. At ``gamma = 0, alpha = 0.5`` it is exactly half the
binary cross-entropy. Both losses average over every pixel; pixels whose label is 255
(no data) are masked out of the mean.

``focal+dice`` adds the soft Dice loss of the landslide class over the whole batch,
``1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)`` (valid pixels only), weighted by ``dice_weight``:
Dice looks at the landslide pixels as a set, so it does not drown in the background the way a
per-pixel mean can (an option beside the paper's focal loss, not a replacement).
"""

from __future__ import annotations

from typing import Any

from slidemap.compute.region.image_files import IGNORE

EPSILON = 1e-7


def _prepare(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    from keras import ops

    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    valid = ops.cast(ops.not_equal(y_true, float(IGNORE)), "float32")
    y_true = y_true * valid  # ignored pixels become 0 and then weigh nothing
    p = ops.clip(y_pred, EPSILON, 1.0 - EPSILON)
    return y_true, p, valid


def _masked_mean(per_pixel: Any, valid: Any) -> Any:
    from keras import ops

    return ops.sum(per_pixel * valid) / ops.maximum(ops.sum(valid), 1.0)


def focal_terms(y_true: Any, y_pred: Any, alpha: float, gamma: float) -> Any:
    """Per-pixel focal loss (the one place the formula is written)."""
    from keras import ops

    y_true, p, _ = _prepare(y_true, y_pred)
    p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
    alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
    return -alpha_t * ops.power(1.0 - p_t, gamma) * ops.log(p_t)


def bce_terms(y_true: Any, y_pred: Any) -> Any:
    from keras import ops

    y_true, p, _ = _prepare(y_true, y_pred)
    return -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))


def focal_loss(alpha: float = 0.25, gamma: float = 2.0) -> Any:
    """A Keras loss function ``(y_true, y_pred) -> scalar`` for the given alpha and gamma."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0.0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")

    def loss(y_true: Any, y_pred: Any) -> Any:
        _, _, valid = _prepare(y_true, y_pred)
        return _masked_mean(focal_terms(y_true, y_pred, alpha, gamma), valid)

    loss.__name__ = "focal_loss"
    return loss


def binary_crossentropy() -> Any:
    """Binary cross-entropy with the same clipping and no-data mask as :func:`focal_loss`."""

    def loss(y_true: Any, y_pred: Any) -> Any:
        _, _, valid = _prepare(y_true, y_pred)
        return _masked_mean(bce_terms(y_true, y_pred), valid)

    loss.__name__ = "bce_loss"
    return loss


def dice_term(y_true: Any, y_pred: Any) -> Any:
    """Soft Dice loss of the landslide class over the batch (ignored pixels left out)."""
    from keras import ops

    y_true, p, valid = _prepare(y_true, y_pred)
    p = p * valid
    intersection = ops.sum(p * y_true)
    return 1.0 - (2.0 * intersection + 1.0) / (ops.sum(p) + ops.sum(y_true) + 1.0)


def focal_dice_loss(alpha: float = 0.25, gamma: float = 2.0, dice_weight: float = 1.0) -> Any:
    """Focal loss plus ``dice_weight`` x soft Dice."""
    focal = focal_loss(alpha, gamma)

    def loss(y_true: Any, y_pred: Any) -> Any:
        return focal(y_true, y_pred) + dice_weight * dice_term(y_true, y_pred)

    loss.__name__ = "focal_dice_loss"
    return loss


LOSSES = ("focal", "focal+dice", "bce")


def make_loss(name: str, alpha: float = 0.25, gamma: float = 2.0, dice_weight: float = 1.0) -> Any:
    if name == "focal":
        return focal_loss(alpha, gamma)
    if name == "focal+dice":
        return focal_dice_loss(alpha, gamma, dice_weight)
    if name == "bce":
        return binary_crossentropy()
    raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
