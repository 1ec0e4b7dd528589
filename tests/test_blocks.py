"""Block engine: halo correctness, once-per-version compute, overviews, single flight, queue bound,
admission by expected wait, dropped work, store identity, and faults (corrupt, unwritable, changing)."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from slidemap.compute.maps.blocks import (
    BlockEngine,
    ComputeCancelled,
    InferenceExecutor,
    InputChanged,
    ModelRunner,
    QueueFull,
    _pool2,
    file_fingerprint,
)
from slidemap.compute.region.grid import Grid
from slidemap.compute.region.raster_io import write_cog

HALO = 3
BS = 32


def local_mean(stack: np.ndarray) -> np.ndarray:
    """A model with real spatial context: 7 x 7 mean of band 1 minus band 2 (NaN spreads)."""
    x = stack[0] - 0.5 * stack[1]
    out = uniform_filter(np.nan_to_num(x, nan=0.0), size=2 * HALO + 1, mode="constant")
    bad = uniform_filter(np.isnan(x).astype(float), size=2 * HALO + 1, mode="constant") > 0
    out[bad] = np.nan
    return out.astype(np.float32)


def runner(version: str = "v1", calls: list | None = None, gate: threading.Event | None = None,
           entered: threading.Event | None = None) -> ModelRunner:
    def run(stack: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(stack.shape)
        if entered is not None:
            entered.set()
        if gate is not None:
            assert gate.wait(20), "gate never opened"
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


def make_engine(raster, tmp_path, calls=None, gate=None, executor=None, version="v1", entered=None, fingerprint=None):
    path, grid, _ = raster
    return BlockEngine("test", path, grid, runner(version, calls, gate, entered), tmp_path / "store" / version,
                       executor or InferenceExecutor(1, 64), block_size=BS, wait_timeout=20, fingerprint=fingerprint)


def wait_for(condition, timeout: float = 20.0) -> None:
    """Poll a state of the executor (not a guess at timing) until it holds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


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
    # Six inference threads: were single flight broken, the six requests would each run the model
    # on the two blocks concurrently (all pass the "already stored?" check before the gate opens).
    ex = InferenceExecutor(6, 64)
    eng = make_engine(raster, tmp_path, calls, gate, executor=ex)
    results = []

    def request():
        results.append(eng.ensure([(1, 1), (1, 2)]))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: ex.waiting() == 12)  # every request waits on both blocks
    assert ex.pending == 2
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 2 and eng.model_calls == 2
    assert len(results) == 6 and all(r.computed == 2 for r in results)
    ex.shutdown()


def test_queue_full_raises_with_retry_after(raster, tmp_path):
    gate = threading.Event()
    entered = threading.Event()
    ex = InferenceExecutor(1, max_pending=2, retry_after=7)
    eng = make_engine(raster, tmp_path, gate=gate, executor=ex, entered=entered)
    t = threading.Thread(target=eng.ensure, args=([(0, 0), (0, 1)],))
    t.start()
    assert entered.wait(10)  # the first block is in the model, the second queued: the queue is full
    with pytest.raises(QueueFull) as info:
        eng.ensure([(2, 2)])
    assert info.value.retry_after == 7
    # Blocks already in flight are not new work: joining them is allowed.
    joiner = threading.Thread(target=eng.ensure, args=([(0, 0)],))
    joiner.start()
    wait_for(lambda: ex.waiting() == 3)
    gate.set()
    t.join(10)
    joiner.join(10)
    assert eng.model_calls == 2 and ex.pending == 0
    ex.shutdown()


def test_admission_by_expected_wait(raster, tmp_path):
    """Blocks beyond the wait limit are refused at once: partly (missing), or wholly (QueueFull)."""
    gate = threading.Event()
    entered = threading.Event()
    ex = InferenceExecutor(1, max_pending=64, max_wait_s=1.0, prior_block_s=0.5)
    eng = make_engine(raster, tmp_path, gate=gate, executor=ex, entered=entered)
    results = []
    # An idle queue takes floor(1.0 s / 0.5 s) = 2 of 5 blocks; the rest come back as missing.
    t = threading.Thread(target=lambda: results.append(eng.ensure([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)])))
    t.start()
    assert entered.wait(10)
    wait_for(lambda: ex.pending == 2)
    # Now 1 running + 1 queued = 0.75 s of work: no room for another 0.5 s block.
    with pytest.raises(QueueFull) as info:
        eng.ensure([(2, 0)])
    assert info.value.retry_after >= 1 and "queue full" in str(info.value)
    gate.set()
    t.join(10)
    assert results[0].computed == 2 and results[0].missing == [(0, 2), (0, 3), (1, 0)]
    assert ex.rejected == 4 and ex.block_seconds is not None  # measured, replacing the prior
    ex.shutdown()


def test_joining_a_queue_slower_than_measured_is_refused_at_once(raster, tmp_path):
    """Admitted on the prior, then measured slower: a newcomer that would wait past the limit for
    blocks already queued gets QueueFull at once instead of a timeout later."""
    gate = threading.Event()
    entered = threading.Event()
    ex = InferenceExecutor(1, max_pending=64, max_wait_s=3.0, prior_block_s=1.0)
    eng = make_engine(raster, tmp_path, gate=gate, executor=ex, entered=entered)
    t = threading.Thread(target=eng.ensure, args=([(0, 0), (0, 1), (0, 2)],))
    t.start()
    assert entered.wait(10)
    wait_for(lambda: ex.pending == 3)
    ex.costs[("test", "v1")] = 2.0  # as if measured: 0.5 x 2 s running + 2 x 2 s queued = 5 s > 3 s
    with pytest.raises(QueueFull) as info:
        eng.ensure([(0, 2)])
    assert info.value.retry_after >= 5 and ex.refused == 1
    gate.set()
    t.join(10)
    ex.shutdown()


def test_cancelled_request_drops_its_queued_blocks(raster, tmp_path):
    gate = threading.Event()
    entered = threading.Event()
    ex = InferenceExecutor(1, 64)
    calls: list = []
    eng = make_engine(raster, tmp_path, calls, gate, executor=ex, entered=entered)
    first = threading.Thread(target=eng.ensure, args=([(0, 0)],))
    first.start()
    assert entered.wait(10)  # the worker is busy with (0, 0)
    cancel = threading.Event()
    errors = []

    def abandoned():
        try:
            eng.ensure([(1, 1), (1, 2)], cancel=cancel)
        except ComputeCancelled as exc:
            errors.append(exc)

    second = threading.Thread(target=abandoned)
    second.start()
    wait_for(lambda: ex.pending == 3)
    cancel.set()  # the client went away
    second.join(10)
    assert errors and ex.dropped == 2 and ex.pending == 1
    gate.set()
    first.join(10)
    assert len(calls) == 1 and not eng.has(0, 1, 1)  # the dropped blocks never ran
    ex.shutdown()


def test_model_error_reaches_every_waiter(raster, tmp_path):
    path, grid, _ = raster

    def boom(stack):
        raise RuntimeError("model exploded")

    eng = BlockEngine("x", path, grid, ModelRunner("v", 0, (1,), boom), tmp_path / "s", InferenceExecutor(), block_size=BS)
    with pytest.raises(RuntimeError, match="exploded"):
        eng.ensure([(0, 0)])
    assert not eng.has(0, 0, 0)


def test_store_identity_is_checked_and_corrupt_blocks_recomputed(raster, tmp_path):
    calls: list = []
    eng = make_engine(raster, tmp_path, calls)
    eng.ensure([(0, 0)])
    meta = eng.store / "store.json"
    assert meta.is_file() and '"block_size": 32' in meta.read_text()
    good = eng.load(0, 0, 0).copy()
    # A truncated block file is removed and computed again, never served.
    eng.path(0, 0, 0).write_bytes(eng.path(0, 0, 0).read_bytes()[:100])
    assert eng.load(0, 0, 0) is None and not eng.has(0, 0, 0)
    eng.ensure([(0, 0)])
    np.testing.assert_array_equal(eng.load(0, 0, 0), good)
    assert len(calls) == 2
    # A store whose identity does not match this engine (other halo) is cleared before use.
    path, grid, _ = raster
    other = BlockEngine("test", path, grid, ModelRunner("v1", HALO + 1, (1, 2), lambda s: s[0, 4:-4, 4:-4]),
                        eng.store, InferenceExecutor(1, 64), block_size=BS)
    assert not other.has(0, 0, 0) and '"halo": 4' in meta.read_text()


def test_unwritable_store_keeps_blocks_in_memory(raster, tmp_path):
    path, grid, data = raster
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store should be")
    calls: list = []
    eng = BlockEngine("test", path, grid, runner("v1", calls), blocker / "store", InferenceExecutor(1, 64), block_size=BS)
    assert eng.store_error and "in memory" in eng.store_error
    res = eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
    assert res.computed == 12
    mosaic, _, complete = eng.mosaic(grid.bounds, 0)
    assert complete
    np.testing.assert_allclose(mosaic[: grid.height, : grid.width], reference(data), atol=1e-5, equal_nan=True)
    eng.ensure([(0, 0)])
    assert len(calls) == 12  # served from memory, not recomputed


def test_input_changed_while_computing_stores_nothing(raster, tmp_path):
    path, grid, _ = raster
    work = tmp_path / "in.tif"
    shutil.copy(path, work)
    fp = file_fingerprint(work)
    entered = threading.Event()
    gate = threading.Event()
    eng = BlockEngine("test", work, grid, runner("v1", None, gate, entered), tmp_path / "store",
                      InferenceExecutor(1, 64), block_size=BS, fingerprint=fp)
    # Rewrite the input (as `prepare` does: a new file renamed into place) before the block is read.
    replacement = tmp_path / "new.tif"
    shutil.copy(path, replacement)
    os.replace(replacement, work)
    assert file_fingerprint(work) != fp
    gate.set()
    with pytest.raises(InputChanged):
        eng.ensure([(0, 0)])
    assert not eng.has(0, 0, 0)


def test_executor_shutdown_releases_waiters(raster, tmp_path):
    gate = threading.Event()
    entered = threading.Event()
    ex = InferenceExecutor(1, 64)
    eng = make_engine(raster, tmp_path, gate=gate, executor=ex, entered=entered)
    errors = []

    def request():
        try:
            eng.ensure([(0, 0), (0, 1)])
        except ComputeCancelled as exc:
            errors.append(exc)

    t = threading.Thread(target=request)
    t.start()
    assert entered.wait(10)
    ex.shutdown()
    gate.set()
    t.join(10)
    assert errors and not t.is_alive()


# ---- blocks and reads without waste -------------------------------------------------------------


def test_a_requests_blocks_are_read_once_and_cut_from_the_window_cache(raster, tmp_path):
    _, grid, data = raster
    eng = make_engine(raster, tmp_path)
    eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
    assert eng.reads == 1  # one union window for all 12 blocks, not 12 reads
    mosaic, _, _ = eng.mosaic(grid.bounds, 0)
    np.testing.assert_allclose(mosaic[: grid.height, : grid.width], reference(data), atol=1e-5, equal_nan=True)
    # A block needed again later (its file removed) is cut from the cached window: no read.
    eng.path(0, 1, 1).unlink()
    eng.ensure([(1, 1)])
    assert eng.reads == 1 and eng.windows.hits >= 13


def test_reads_from_many_threads_use_their_own_datasets(raster, tmp_path):
    _, grid, data = raster
    eng = make_engine(raster, tmp_path, executor=InferenceExecutor(4, 64))
    eng.windows.max_bytes = 0  # no cache: every block reads the file, concurrently
    blocks = [(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)]
    threads = [threading.Thread(target=eng.ensure, args=([b],)) for b in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mosaic, _, complete = eng.mosaic(grid.bounds, 0)
    assert complete
    np.testing.assert_allclose(mosaic[: grid.height, : grid.width], reference(data), atol=1e-5, equal_nan=True)


def test_reflect_edge_runner_sees_the_raster_mirrored_and_covers_only_its_cells(raster, tmp_path):
    path, grid, data = raster
    calls: list = []

    def run(stack):
        calls.append(stack.shape)
        return local_mean(stack)[HALO:-HALO, HALO:-HALO]

    r = ModelRunner("v1", HALO, (1, 2), run, edge="reflect", layout="test-pass")
    eng = BlockEngine("test", path, grid, r, tmp_path / "s", InferenceExecutor(1, 64), block_size=BS)
    eng.ensure([(rr, cc) for rr in range(eng.n_rows) for cc in range(eng.n_cols)])
    mosaic, _, _ = eng.mosaic(grid.bounds, 0)
    want = local_mean(np.pad(data, ((0, 0), (HALO, HALO), (HALO, HALO)), mode="reflect"))[HALO:-HALO, HALO:-HALO]
    np.testing.assert_allclose(mosaic[: grid.height, : grid.width], want, atol=1e-5, equal_nan=True)
    # the last block column holds 110 - 96 = 14 cells: the model saw 14 + 2 halo, not the whole block
    assert (2, BS + 2 * HALO, 110 - 3 * BS + 2 * HALO) in calls
    meta = (eng.store / "store.json").read_text()
    assert '"layout": "test-pass"' in meta and '"edge": "reflect"' in meta


def test_another_block_size_or_layout_never_reuses_stored_blocks(raster, tmp_path):
    path, grid, _ = raster
    calls: list = []
    store = tmp_path / "store"
    first = BlockEngine("test", path, grid, runner("v1", calls), store, InferenceExecutor(1, 64), block_size=BS)
    first.ensure([(0, 0)])
    # Same folder, other block side: the identity differs, the old blocks are cleared, not served.
    second = BlockEngine("test", path, grid, runner("v1", calls), store, InferenceExecutor(1, 64), block_size=2 * BS)
    assert not second.has(0, 0, 0)
    second.ensure([(0, 0)])
    relayout = ModelRunner("v1", HALO, (1, 2), runner("v1", calls).run, layout="other")
    third = BlockEngine("test", path, grid, relayout, store, InferenceExecutor(1, 64), block_size=2 * BS)
    assert not third.has(0, 0, 0)
