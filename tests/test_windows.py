"""The numba window extractor against a plain NumPy reference written independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slidemap.compute.maps.windows import (
    MULTISCALE_SIZES,
    area_weights,
    block_centres,
    extract_windows,
    halo_for,
    iter_windows,
)


def _reference_resample(window: np.ndarray, out: int) -> np.ndarray:
    """Area-weighted resampling by exact super-sampling: repeat each source cell L/n times on a
    common L = lcm(n, out) grid, then take block means of L/out cells. No weights tables involved."""
    n = window.shape[-1]
    lcm = n * out // math.gcd(n, out)
    up = np.repeat(np.repeat(window.astype(np.float64), lcm // n, axis=-2), lcm // n, axis=-1)
    k = lcm // out
    return up.reshape(*window.shape[:-2], out, k, out, k).mean(axis=(-3, -1))


def _reference(stack: np.ndarray, rows, cols, sizes=MULTISCALE_SIZES, out=12) -> np.ndarray:
    """Zero padding (nodata after normalisation), then slicing and resampling per sample."""
    pad = max(sizes)
    padded = np.pad(stack.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)), mode="constant")
    result = np.zeros((len(rows), stack.shape[0], out, out, len(sizes)))
    for s, (r, c) in enumerate(zip(rows, cols, strict=True)):
        for k, n in enumerate(sizes):
            top = r - (n - 1) // 2 + pad
            left = c - (n - 1) // 2 + pad
            window = padded[:, top : top + n, left : left + n]
            result[s, :, :, :, k] = window if n == out else _reference_resample(window, out)
    return result


@pytest.mark.parametrize("shape", [(3, 40, 37), (2, 5, 7), (1, 1, 1), (4, 23, 23)])
def test_matches_reference_incl_edges_and_tiny(shape):
    rng = np.random.default_rng(sum(shape))
    stack = rng.random(shape, dtype=np.float32)
    h, w = shape[1:]
    rows = rng.integers(0, h, 50)
    cols = rng.integers(0, w, 50)
    # every corner and edge mid-point too
    rows = np.concatenate([rows, [0, 0, h - 1, h - 1, h // 2, 0]])
    cols = np.concatenate([cols, [0, w - 1, 0, w - 1, 0, w // 2]])
    got = extract_windows(stack, rows, cols)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got.shape == (len(rows), shape[0], 12, 12, 3)
    np.testing.assert_allclose(got, _reference(stack, rows, cols), atol=1e-6, rtol=0)


def test_known_window_at_known_position():
    # stack value encodes its own position: f * 10000 + row * 100 + col
    f, r, c = np.meshgrid(np.arange(2), np.arange(30), np.arange(30), indexing="ij")
    stack = (f * 10000 + r * 100 + c).astype(np.float32)
    got = extract_windows(stack, np.array([15]), np.array([14]), sizes=(12,))
    # 12-cell window: the centre cell sits at index (12 - 1) // 2 = 5, so rows 10..21, cols 9..20
    expected = stack[:, 10:22, 9:21]
    np.testing.assert_array_equal(got[0, :, :, :, 0], expected)
    assert got[0, 1, 5, 5, 0] == 10000 + 15 * 100 + 14
    # odd window 23 (the dense model's patch) is centred on the cell
    got23 = extract_windows(stack, np.array([15]), np.array([14]), sizes=(23,), out_size=23)
    np.testing.assert_array_equal(got23[0, :, :, :, 0], np.pad(stack, ((0, 0), (0, 0), (0, 0)))[:, 4:27, 3:26])
    assert got23[0, 0, 11, 11, 0] == 15 * 100 + 14


def test_constant_and_ramp_exact():
    const = np.full((1, 60, 60), 0.37, dtype=np.float32)
    got = extract_windows(const, np.array([30]), np.array([30]), sizes=(17, 22))
    np.testing.assert_allclose(got, 0.37, atol=1e-7)
    # Linear ramp of cell values v_j = a + b*j (a step function in space). Area weighting gives
    # a + b * m_i with m_i = mean of floor(x) over the output cell's source interval [lo, hi):
    # closed form via F(x) = integral_0^x floor(t) dt. Also the window mean is conserved.
    a, b = 0.1, 0.01
    ramp = (a + b * np.arange(60, dtype=np.float64))[None, None, :].repeat(60, axis=1).astype(np.float32)

    def big_f(x):
        fl = np.floor(x)
        return fl * (x - fl) + fl * (fl - 1) / 2

    for n in (17, 22):
        got = extract_windows(ramp, np.array([30]), np.array([30]), sizes=(n,))
        first = 30 - (n - 1) // 2
        lo = np.arange(12) * n / 12
        hi = (np.arange(12) + 1) * n / 12
        m = (big_f(hi) - big_f(lo)) / (hi - lo)
        np.testing.assert_allclose(got[0, 0, 3, :, 0], a + b * (first + m), atol=1e-6)
        window = ramp[0, 0, first : first + n].astype(np.float64)
        assert abs(got[0, 0, 3, :, 0].mean() - window.mean()) < 1e-6


def test_weights_rows_sum_to_one():
    for n in (12, 17, 22, 23):
        _, w = area_weights(n, 12)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def test_halo_and_streaming_reuse_buffer():
    assert halo_for(MULTISCALE_SIZES) == 11
    rng = np.random.default_rng(1)
    stack = rng.random((2, 20, 20), dtype=np.float32)
    rows, cols = block_centres(10, 10, 5)
    full = extract_windows(stack, rows, cols)
    seen = []
    buffers = set()
    for start, batch in iter_windows(stack, rows, cols, batch_size=32):
        buffers.add(batch.__array_interface__["data"][0])
        seen.append((start, batch.copy()))
    assert len(buffers) == 1  # one buffer reused, nothing allocated per batch
    np.testing.assert_array_equal(np.concatenate([b for _, b in seen]), full)


def test_out_buffer_validation():
    stack = np.zeros((2, 5, 5), dtype=np.float32)
    with pytest.raises(ValueError):
        extract_windows(stack, np.array([1]), np.array([1]), out=np.zeros((1, 2, 12, 12, 2), np.float32))


# ---- the same function along every path -----------------------------------------------------
def _card_model(tmp_path, name, model, encoding, halo, windows, arch, extra=None):
    from slidemap.compute.models.store import save_artefact

    names = encoding.factor_names
    card = {"synthetic": True, "architecture": arch, "factor_names": names, "inputs": names,
            "normalisation": encoding.normalisation.to_list(), "encoding": encoding.to_dict(),
            "windows": windows, "halo": halo, **(extra or {})}
    return save_artefact(tmp_path, "lsm", name, card, model.save, out_dir=tmp_path / name)


def test_dense_block_equals_per_cell_patches_and_window_serving_equals_training(tmp_path):
    """Fast form: one pass over a padded block == the same network on each cell's 23-cell patch
    (the exact fully convolutional re-expression it is built for). Window model: the serving path
    (predict_block on a NaN-haloed block at the region edge) == the training path."""
    import keras

    from slidemap.compute.terrain.factors import Encoding, Normalisation
    from slidemap.compute.maps.susceptibility import load_susceptibility
    from slidemap.training.lsm_networks import build_dense_fcn, build_window_cnn
    from slidemap.training.lsm_fit import FittedModel, ModelInputs, StackCache, predict_cells
    from slidemap.training.samples import RegionData

    keras.utils.set_random_seed(0)
    norm = Normalisation.from_list(
        [{"name": n, "kind": "continuous", "units": "", "min": 0.0, "max": 2.0, "source": "t"} for n in "abc"]
        + [{"name": "aspect", "kind": "continuous", "units": "", "min": -1.0, "max": 360.0, "source": "t"}]
    )
    enc = Encoding.build(norm)
    rng = np.random.default_rng(0)
    region = (rng.random((4, 30, 26)) * 2).astype(np.float32)
    region[3] = rng.uniform(-1, 360, (30, 26))
    region[1, 4, 5] = np.nan  # a nodata cell inside
    dense = build_dense_fcn(len(enc), width=4, dense=8)
    path = _card_model(tmp_path, "m_fast", dense, enc, 11, {"patch": 23}, "dense_fcn")
    sm = load_susceptibility(path)
    h = sm.halo
    block = np.full((4, 30 + 2 * h, 26 + 2 * h), np.nan, np.float32)
    block[:, h:-h, h:-h] = region  # the block engine's halo beyond the region edge is NaN
    got = sm.predict_block(block)
    rows, cols = np.meshgrid(np.arange(30), np.arange(26), indexing="ij")
    encoded = enc.encode(region)
    patches = extract_windows(encoded, rows.ravel(), cols.ravel(), sizes=(23,), out_size=23)
    per_cell = np.asarray(dense(np.ascontiguousarray(patches[..., 0].transpose(0, 2, 3, 1)), training=False)).reshape(30, 26)
    assert np.isnan(got[4, 5]) and np.isfinite(got).sum() == 30 * 26 - 1
    ok = np.isfinite(got)
    np.testing.assert_allclose(got[ok], per_cell[ok], atol=2e-5)
    assert per_cell[ok].std() > 1e-4  # a constant output would make the comparison empty

    window = build_window_cnn(len(enc), 3, len(enc), widths=(2, 4), dense=8)
    wpath = _card_model(tmp_path, "multiscale", window, enc, 11,
                        {"sizes": [12, 17, 22], "out_size": 12}, "window_cnn")
    wm = load_susceptibility(wpath)
    served = wm.predict_block(block)
    data = RegionData(tmp_path, None, region, enc, encoded, np.zeros((30, 26), np.uint8), True, "x")
    inputs = ModelInputs(tuple(range(len(enc))), tuple(range(len(enc))), (None, None), (None, None))
    trained = predict_cells(FittedModel("multiscale", window, "window", inputs, (12, 17, 22)), StackCache(data),
                            rows.ravel(), cols.ravel()).reshape(30, 26)
    np.testing.assert_allclose(served[ok], trained[ok], atol=1e-5)
    assert trained[ok].std() > 1e-4
