"""Block engine: halo correctness, once-per-version compute, overviews, single flight, queue bound."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from slidemap.compute.blocks import (
    BlockEngine,
    InferenceExecutor,
    ModelRunner,
    QueueFull,
    _pool2,
)
from slidemap.compute.grid import Grid
from slidemap.compute.io import write_cog

HALO = 3
BS = 32


def local_mean(stack: np.ndarray) -> np.ndarray:
    """A model with real spatial context: 7 x 7 mean of band 1 minus band 2 (NaN spreads)."""
    x = stack[0] - 0.5 * stack[1]
    out = uniform_filter(np.nan_to_num(x, nan=0.0), size=2 * HALO + 1, mode="constant")
    bad = uniform_filter(np.isnan(x).astype(float), size=2 * HALO + 1, mode="constant") > 0
    out[bad] = np.nan
    return out.astype(np.float32)


def runner(version: str = "v1", calls: list | None = None, gate: threading.Event | None = None) -> ModelRunner:
    def run(stack: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(stack.shape)
        if gate is not None:
            gate.wait(10)
        return local_mean(stack)[HALO:-HALO, HALO:-HALO]

    return ModelRunner(version, HALO, (1, 2), run)


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    rng = np.random.default_rng(0)
    h, w = 90, 110  # not multiples of the block size: edge blocks are partial
    data = rng.normal(size=(2, h, w)).astype(np.float32)
    data[:, 40:44, 10:20] = np.nan  # nodata inside
    grid = Grid.from_bounds("EPSG:32645", (500000, 3000000, 500000 + 10 * w, 3000000 + 10 * h), 10.0)
    path = tmp_path_factory.mktemp("blocks") / "in.tif"
    write_cog(path, data, grid, band_names=["a", "b"], nodata=float("nan"))
    return path, grid, data


def reference(data: np.ndarray) -> np.ndarray:
    padded = np.pad(data, ((0, 0), (HALO, HALO), (HALO, HALO)), constant_values=np.nan)
    return local_mean(padded)[HALO:-HALO, HALO:-HALO]


def make_engine(raster, tmp_path, calls=None, gate=None, executor=None, version="v1"):
    path, grid, _ = raster
    return BlockEngine("test", path, grid, runner(version, calls, gate), tmp_path / "store" / version,
                       executor or InferenceExecutor(1, 64), block_size=BS, wait_timeout=20)


def test_blocks_match_whole_region_run(raster, tmp_path):
    _, grid, data = raster
    eng = make_engine(raster, tmp_path)
    all_blocks = [(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)]
    res = eng.ensure(all_blocks)
    assert res.computed == len(all_blocks) == 3 * 4
    mosaic, mgrid, complete = eng.mosaic(grid.bounds, 0)
    assert complete
    assert mgrid.transform == grid.transform
    got = mosaic[: grid.height, : grid.width]
    np.testing.assert_allclose(got, reference(data), rtol=0, atol=1e-5, equal_nan=True)
    assert np.isnan(mosaic[grid.height :, :]).all() and np.isnan(mosaic[:, grid.width :]).all()


def test_each_block_computed_once_per_version(raster, tmp_path):
    calls: list = []
    eng = make_engine(raster, tmp_path, calls)
    eng.ensure([(0, 0), (0, 1)])
    eng.ensure([(0, 0), (0, 1), (1, 1)])
    assert len(calls) == 3 and eng.model_calls == 3
    assert all(shape == (2, BS + 2 * HALO, BS + 2 * HALO) for shape in calls)
    # A new engine on the same store (a restart) computes nothing; a new version starts afresh.
    again = make_engine(raster, tmp_path, calls)
    again.ensure([(0, 0), (0, 1)])
    assert len(calls) == 3
    other = make_engine(raster, tmp_path, calls, version="v2")
    other.ensure([(0, 0)])
    assert len(calls) == 4 and other.store != eng.store


def test_budget_leaves_the_rest_missing(raster, tmp_path):
    eng = make_engine(raster, tmp_path)
    res = eng.ensure([(0, 0), (0, 1), (1, 0)], budget=1)
    assert res.computed == 1 and res.missing == [(0, 1), (1, 0)]
    _, _, complete = eng.mosaic(eng.grid.bounds, 0)
    assert not complete


def test_overviews_equal_global_pooling_and_persist_only_when_complete(raster, tmp_path):
    _, grid, data = raster
    eng = make_engine(raster, tmp_path)
    assert eng.max_level == 2
    _, complete = eng.block(1, 0, 0)
    assert not complete and not eng.has(1, 0, 0)
    eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
    full = np.full((4 * BS, 4 * BS), np.nan, dtype=np.float32)
    full[: grid.height, : grid.width] = reference(data)
    level1 = _pool2(full)
    level2 = _pool2(level1)
    mosaic, mgrid, complete = eng.mosaic(grid.bounds, 2)
    assert complete and eng.has(2, 0, 0) and eng.has(1, 1, 1)
    assert mgrid.res == (40.0, 40.0)
    np.testing.assert_allclose(mosaic, level2[:BS, :BS], atol=1e-5, equal_nan=True)
    m1, _, _ = eng.mosaic(grid.bounds, 1)
    np.testing.assert_allclose(m1, level1[: m1.shape[0], : m1.shape[1]], atol=1e-5, equal_nan=True)


def test_level_choice(raster, tmp_path):
    eng = make_engine(raster, tmp_path)
    assert eng.level_for_resolution(5.0) == 0
    assert eng.level_for_resolution(19.9) == 0
    assert eng.level_for_resolution(20.0) == 1
    assert eng.level_for_resolution(1e6) == eng.max_level


def test_single_flight_concurrent_requests_share_one_computation(raster, tmp_path):
    calls: list = []
    gate = threading.Event()
    eng = make_engine(raster, tmp_path, calls, gate)
    results = []

    def request():
        results.append(eng.ensure([(1, 1), (1, 2)]))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # every request is now waiting on the same two futures
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 2
    assert len(results) == 6


def test_queue_full_raises_with_retry_after(raster, tmp_path):
    gate = threading.Event()
    ex = InferenceExecutor(1, max_pending=2, retry_after=7)
    eng = make_engine(raster, tmp_path, gate=gate, executor=ex)
    t = threading.Thread(target=eng.ensure, args=([(0, 0), (0, 1)],))
    t.start()
    time.sleep(0.2)
    with pytest.raises(QueueFull) as info:
        eng.ensure([(2, 2)])
    assert info.value.retry_after == 7
    # Blocks already in flight are not new work: joining them is allowed.
    joiner = threading.Thread(target=eng.ensure, args=([(0, 0)],))
    joiner.start()
    gate.set()
    t.join(10)
    joiner.join(10)
    assert eng.model_calls == 2 and ex.pending == 0
    ex.shutdown()


def test_model_error_reaches_every_waiter(raster, tmp_path):
    path, grid, _ = raster

    def boom(stack):
        raise RuntimeError("model exploded")

    eng = BlockEngine("x", path, grid, ModelRunner("v", 0, (1,), boom), tmp_path / "s", InferenceExecutor(), block_size=BS)
    with pytest.raises(RuntimeError, match="exploded"):
        eng.ensure([(0, 0)])
    assert not eng.has(0, 0, 0)
