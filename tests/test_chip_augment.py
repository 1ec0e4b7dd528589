"""Augmentation: masks stay under their image pixels; photometry changes values, never the layout."""

from __future__ import annotations

import numpy as np

from slidemap.training.chip_augment import NONE, AugmentConfig, augment_batch, geometric, photometric


def _batch(n: int = 16, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Chips whose band 0 *is* the mask (1.0 on landslides, 0.0 elsewhere) plus a position code in band 1."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, size, size)) > 0.8).astype(np.uint8)
    code = np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)
    x = np.stack([y.astype(np.float32), np.broadcast_to(code, (n, size, size))], axis=-1)
    return x, y


def test_geometry_moves_masks_with_images_through_all_eight_symmetries():
    x, y = _batch()
    rng = np.random.default_rng(1)
    out_x, out_y = augment_batch(x, y, rng, AugmentConfig(brightness=0, band_brightness=0, contrast=1, gamma=1))
    np.testing.assert_array_equal(out_x[..., 0], out_y.astype(np.float32))  # every mask pixel under its image pixel
    # the position code shows which symmetry was applied: all eight occur over a few batches
    seen = set()
    for _ in range(6):
        bx, _ = augment_batch(x, y, rng, AugmentConfig(brightness=0, band_brightness=0, contrast=1, gamma=1))
        for chip in bx[..., 1]:
            seen.add(tuple(np.round(chip[[0, 0, -1, -1], [0, -1, 0, -1]], 4)))
    assert len(seen) == 8


def test_photometric_jitter_keeps_the_landslide_pixels_where_they_are():
    x, y = _batch()
    x = x.copy()
    x[..., 0] = x[..., 0] * 2.0 - 0.5 + 0.05 * np.random.default_rng(2).random(x.shape[:3])  # noisy but separable
    out_x, out_y = augment_batch(x, y, np.random.default_rng(3), AugmentConfig())
    changed = 0
    for xi, yi, x0 in zip(out_x, out_y, x, strict=True):
        band = xi[..., 0]
        # brightness, contrast and gamma are monotone per band: landslide pixels stay the bright ones
        assert band[yi == 1].min() > band[yi == 0].max()
        changed += not np.allclose(np.sort(band.ravel()), np.sort(x0[..., 0].ravel()))
    assert changed == len(out_x)  # the values did change


def test_photometric_leaves_no_data_at_zero_and_respects_none():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 16, 3)).astype(np.float32)
    nodata = np.zeros((16, 16), dtype=bool)
    nodata[:4] = True
    x[nodata] = 0
    out = photometric(x, rng, AugmentConfig(), nodata)
    assert (out[nodata] == 0).all() and not np.allclose(out[~nodata], x[~nodata])
    same_x, same_y = augment_batch(x[None], np.zeros((1, 16, 16), np.uint8), rng, NONE)
    np.testing.assert_array_equal(same_x[0], x)


def test_photometric_treats_a_turned_view_like_its_copy_and_leaves_the_input_alone():
    """Chips arrive as flipped or turned views (not C-contiguous); the jitter works on a flat view of
    its own copy, which must be the chip itself, whatever the input's strides."""
    x = np.random.default_rng(5).normal(size=(16, 16, 3)).astype(np.float32)
    turned = np.rot90(x[:, ::-1], 1, axes=(0, 1))
    before = turned.copy()
    out_view = photometric(turned, np.random.default_rng(6), AugmentConfig())
    out_copy = photometric(np.ascontiguousarray(turned), np.random.default_rng(6), AugmentConfig())
    np.testing.assert_array_equal(out_view, out_copy)
    assert not np.allclose(out_view, before)  # the jitter reached the chip
    np.testing.assert_array_equal(turned, before)  # and not the caller's array


def test_rectangular_chips_keep_their_shape():
    x = np.zeros((8, 16, 32, 2), np.float32)
    y = np.zeros((8, 16, 32), np.uint8)
    y[:, 0, 0] = 1
    x[..., 0] = y
    for turns in range(4):
        gx, gy = geometric(x[0], y[0], False, False, turns)
        assert gx.shape == (16, 32, 2) and gy.shape == (16, 32)
        np.testing.assert_array_equal(gx[..., 0], gy)
