"""Focal loss and BCE against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidemap.training.losses import binary_crossentropy, focal_loss


def _np(x):
    return float(np.asarray(x))


def test_focal_matches_hand_computed_values():
    y = np.array([[1.0, 0.0]], dtype="float32")
    p = np.array([[0.9, 0.2]], dtype="float32")
    # landslide pixel: -0.25 * (1 - 0.9)^2 * ln 0.9 ; background: -0.75 * (1 - 0.8)^2 * ln 0.8
    expected = (-0.25 * 0.1**2 * math.log(0.9) - 0.75 * 0.2**2 * math.log(0.8)) / 2
    assert _np(focal_loss(0.25, 2.0)(y, p)) == pytest.approx(expected, rel=1e-5)


def test_focal_gamma0_alpha_half_is_half_bce():
    rng = np.random.default_rng(0)
    y = (rng.random((3, 16, 16, 1)) > 0.7).astype("float32")
    p = rng.uniform(0.01, 0.99, (3, 16, 16, 1)).astype("float32")
    fl = _np(focal_loss(0.5, 0.0)(y, p))
    bce = _np(binary_crossentropy()(y, p))
    expected_bce = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    assert bce == pytest.approx(expected_bce, rel=1e-5)
    assert fl == pytest.approx(0.5 * bce, rel=1e-6)


def test_focal_down_weights_easy_pixels():
    y = np.ones((1, 4), dtype="float32")
    easy = np.full((1, 4), 0.95, dtype="float32")
    hard = np.full((1, 4), 0.3, dtype="float32")
    loss = focal_loss(0.5, 2.0)
    ratio_focal = _np(loss(y, hard)) / _np(loss(y, easy))
    ratio_bce = _np(binary_crossentropy()(y, hard)) / _np(binary_crossentropy()(y, easy))
    assert ratio_focal > 10 * ratio_bce


def test_nodata_pixels_are_ignored():
    y = np.array([[1.0, 255.0]], dtype="float32")
    p = np.array([[0.9, 0.0001]], dtype="float32")
    assert _np(binary_crossentropy()(y, p)) == pytest.approx(-math.log(0.9), rel=1e-5)


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        focal_loss(1.5, 2.0)
    with pytest.raises(ValueError):
        focal_loss(0.5, -1.0)


def test_focal_plus_dice_adds_the_soft_dice_of_the_batch():
    from slidemap.training.losses import dice_term, make_loss

    y = np.array([[1.0, 0.0, 1.0, 255.0]], dtype="float32")
    p = np.array([[0.8, 0.1, 0.6, 0.9]], dtype="float32")
    # valid pixels only: sum(p y) = 1.4, sum(p) = 1.5, sum(y) = 2
    dice = 1 - (2 * 1.4 + 1) / (1.5 + 2 + 1)
    assert _np(dice_term(y, p)) == pytest.approx(dice, rel=1e-5)
    combined = _np(make_loss("focal+dice", 0.25, 2.0, dice_weight=0.5)(y, p))
    assert combined == pytest.approx(_np(focal_loss(0.25, 2.0)(y, p)) + 0.5 * dice, rel=1e-5)
    with pytest.raises(ValueError, match="focal\\+dice"):
        make_loss("dice-only")
