"""Landslide detection with a trained U-Net: seamless tiled inference on arrays, GeoTIFFs and chip folders.

Tiling: the image is reflect-padded by ``overlap`` pixels on every side and cut into
``tile x tile`` tiles at a step of ``tile - overlap``. Each tile's prediction is weighted by a
window that is 1 in the middle and ramps as sin^2 over the ``overlap`` pixels at each edge; the
ramps of neighbouring tiles are complementary (sin^2 + cos^2 = 1), so the weights of every real
pixel sum to exactly one and there are no seams. The tile lattice is global (anchored at the
raster's top-left corner) and rows are streamed tile-row by tile-row, so a raster processed in
strips gives the same numbers as one processed whole, and a big raster never has to fit in memory.

NaN input (or, in files, the nodata value or all-zero pixels) gives NaN output.

Normalisation is the card's (:mod:`slidemap.compute.maps.image_norm`): a robust model normalises each
input scene (a GeoTIFF, a region's imagery) by that scene's own percentiles, computed once from a
decimated read, and each chip of a chip folder by its own; bare arrays handed to
:meth:`Detector.predict` use the training scene's statistics unless a scene is given
(:meth:`Detector.for_scene`). Every window is averaged over the card's symmetric views (flips; see
:mod:`slidemap.compute.models.views`). The probability threshold is the card's (chosen on validation data at
training time); it goes into the output's tags and, with ``mask=True``, cuts a 0/1 mask beside it.

Memory: loaded detectors are kept in a small LRU cache (:data:`CACHE_SIZE` versions), and a batch
that runs out of (GPU) memory is split in half and retried, down to one tile.

Two more ways in: :meth:`Detector.predict_tile` runs one network pass over a whole window (a block
engine block, :data:`BLOCK_FACTOR` base blocks wide, plus the halo: 896 x 896 network pixels for a
768 x 768 block, 73 % of them output, where overlapping 256-px tiles use 56 %), and
:meth:`Detector.predict_chunk` computes one rectangle of the global tile lattice, so a raster cut
into chunks (``detect --dask``) is computed tile for tile as the streamed whole-image path does it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.maps.image_norm import BandStats, apply_stats, image_stats, stats_for
from slidemap.errors import InputError, ModelError
from slidemap.compute.models.runtime import ModelCache
from slidemap.compute.models.views import VIEWS, average_views, check_views

log = logging.getLogger(__name__)
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 64
# Detector blocks in the block engine are this many base blocks wide: 768 px at the default 256, one
# network pass of 896 x 896 per block, 73 % of it output (a 256-px tile with 64 px overlap uses 56 %);
# the network's cost per pixel is flat from 256 to 1024 px on CPU, and a cold block is still a
# fraction of a second.
BLOCK_FACTOR = 3
CHUNK_TILES = 8  # tile steps per side of a `detect --dask` chunk (1536 x 1536 px at 256/64)
CACHE_SIZE = 4  # detectors (model versions) kept loaded; a pinned old version does not stay forever
MASK_NODATA = 255
_cache: ModelCache[Detector] = ModelCache(CACHE_SIZE)  # the one bounded cache class of loaded models


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says a device or host ran out of memory (TensorFlow's ResourceExhaustedError, MemoryError, OOM)."""
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return "resourceexhausted" in text or "out of memory" in text or " oom" in text or text.startswith("oom")


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer positions onto [0, n) by mirror reflection without repeating the edge (numpy 'reflect')."""
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def blend_window(tile: int, overlap: int) -> np.ndarray:
    """2-D weight window: sin^2 ramps over ``overlap`` px at each edge, 1 inside (separable)."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[tile - overlap :] = ramp[::-1]
    return np.outer(w, w).astype(np.float32)


def n_tiles(length: int, tile: int, overlap: int) -> int:
    """Tiles along one axis so every real pixel lies where the window weights sum to one."""
    step = tile - overlap
    return max(1, int(np.ceil((length + 2 * overlap - tile) / step)) + 1)


@dataclass
class Detector:
    """A loaded segmentation model (see ARCHITECTURE.md: model interfaces)."""

    model: Any
    card: dict[str, Any]
    path: Path
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 8
    scene: BandStats | None = None  # the scene the next inputs come from (robust scene models)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def version(self) -> str:
        return str(self.card.get("version", ""))

    @property
    def bands(self) -> list[str]:
        return list(self.card.get("bands") or self.card.get("inputs") or [])

    @property
    def halo(self) -> int:
        return int(self.overlap)

    @property
    def block_factor(self) -> int:
        return BLOCK_FACTOR

    @property
    def multiple(self) -> int:
        return int(self.card.get("tile_multiple", 16))

    @property
    def threshold(self) -> float:
        return float(self.card.get("threshold", 0.5))

    @property
    def units(self) -> str:
        return str(self.card.get("units", "reflectance"))

    @property
    def views(self) -> int:
        """Symmetric views averaged per window (:mod:`slidemap.compute.models.views`); the card's, else 1."""
        return check_views(int((self.card.get("inference") or {}).get("views", 1)))

    @property
    def normalisation(self) -> dict[str, Any]:
        return dict(self.card.get("normalisation") or {})

    @property
    def robust(self) -> bool:
        return self.normalisation.get("method") == "robust"

    def for_scene(self, stats: BandStats | None) -> Detector:
        """A detector sharing this one's network (and lock) that normalises with ``stats``."""
        return replace(self, scene=stats, _lock=self._lock)

    def stats_for(self, image: np.ndarray) -> BandStats:
        """The normalisation statistics for ``image`` ``[bands, H, W]`` (see the module docstring)."""
        return stats_for(self.normalisation, image, channel_axis=0, scene=self.scene)

    # ---- core -----------------------------------------------------------------------------
    def _normalise(self, raw: np.ndarray, stats: BandStats) -> tuple[np.ndarray, np.ndarray]:
        """``[C, h, w]`` raw -> (``[h, w, C]`` normalised with NaN -> 0, ``[h, w]`` nodata mask)."""
        nodata = np.isnan(raw).any(axis=0)
        return apply_stats(np.moveaxis(raw, 0, -1), stats), nodata

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Raw network output for normalised ``[N, h, w, C]`` (sides multiples of 16) -> ``[N, h, w]``.

        A batch that runs out of memory is split in half and retried (down to one tile); the smaller
        size is kept for the rest of this detector's life.
        """
        outs = []
        with self._lock:  # Keras models are not safe to call from several threads at once
            i = 0
            while i < len(x):
                size = self.batch_size
                try:
                    outs.append(average_views(self.model.predict_on_batch, x[i : i + size], self.views)[..., 0])
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    if size <= 1:
                        raise ModelError(
                            f"{self.path}: out of memory predicting a single {x.shape[1]}x{x.shape[2]} tile; "
                            "free device memory or use a smaller tile"
                        ) from exc
                    self.batch_size = max(1, size // 2)
                    log.warning("out of memory at batch %d; retrying with %d", size, self.batch_size)
                    continue
                i += size
        return np.concatenate(outs, axis=0).astype(np.float32)

    def stream(
        self,
        read_rows: Callable[[np.ndarray], np.ndarray],
        height: int,
        width: int,
        emit: Callable[[int, np.ndarray], None],
        progress: Callable[[int], None] | None = None,
        stats: BandStats | None = None,
    ) -> None:
        """Predict a ``height x width`` image read through ``read_rows(row_indices) -> [C, len, width]``.

        ``emit(row0, prob)`` receives finished output rows in order (``prob`` float32
        ``[rows, width]``, NaN on no data). ``stats`` normalise every tile (default: the scene's, or
        the card's reference: the caller computes them from the whole image when it can).
        """
        if stats is None:
            stats = stats_for(self.normalisation, None, scene=self.scene)
        t, o = self.tile, self.overlap
        step = t - o
        n_r, n_c = n_tiles(height, t, o), n_tiles(width, t, o)
        window = blend_window(t, o)
        padded_w = (n_c - 1) * step + t
        col_idx = reflect_index(np.arange(padded_w) - o, width)
        group = max(1, int(np.ceil(self.batch_size / n_c)))
        acc = np.zeros((t, padded_w), dtype=np.float32)
        wsum = np.zeros((t, padded_w), dtype=np.float32)
        for k0 in range(0, n_r, group):
            rows_k = list(range(k0, min(n_r, k0 + group)))
            tiles, masks = [], []
            for k in rows_k:
                raw = read_rows(reflect_index(np.arange(k * step - o, k * step - o + t), height))
                x, nodata = self._normalise(raw[:, :, col_idx], stats)
                tiles.extend(x[:, j * step : j * step + t] for j in range(n_c))
                masks.append(nodata[:step, o : o + width])
            preds = self.predict_batch(np.stack(tiles))
            for gi, k in enumerate(rows_k):
                for j in range(n_c):
                    sl = slice(j * step, j * step + t)
                    acc[:, sl] += preds[gi * n_c + j] * window
                    wsum[:, sl] += window
                # padded rows [k*step, (k+1)*step) are final = original rows k*step - o + [0, step)
                row0 = k * step - o
                done = acc[:step, o : o + width] / np.maximum(wsum[:step, o : o + width], 1e-12)
                done = np.where(masks[gi], np.nan, done).astype(np.float32)
                lo, hi = max(0, -row0), min(step, height - row0)
                if hi > lo:
                    emit(row0 + lo, done[lo:hi])
                    if progress:
                        progress(hi - lo)
                acc = np.roll(acc, -step, axis=0)
                wsum = np.roll(wsum, -step, axis=0)
                acc[t - step :] = 0
                wsum[t - step :] = 0

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Probability ``[H, W]`` float32 for ``image`` ``[bands, H, W]`` in the card's units (NaN = no data)."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[0] != len(self.bands):
            raise InputError(f"expected an image [{len(self.bands)} bands ({', '.join(self.bands)}), H, W], got {image.shape}")
        _, h, w = image.shape
        out = np.full((h, w), np.nan, dtype=np.float32)

        def emit(row0: int, rows: np.ndarray) -> None:
            out[row0 : row0 + len(rows)] = rows

        self.stream(lambda idx: image[:, idx], h, w, emit, stats=self.stats_for(image))
        return out

    def predict_tile(self, image: np.ndarray) -> np.ndarray:
        """Probability ``[H, W]`` for ``image`` ``[bands, H, W]`` from one network pass over all of it
        (mirrored up to the network's size multiple): no overlapping tiles, so nothing is computed
        twice. The caller gives the context (a halo) and crops it."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[0] != len(self.bands):
            raise InputError(f"expected an image [{len(self.bands)} bands ({', '.join(self.bands)}), H, W], got {image.shape}")
        _, h, w = image.shape
        x, nodata = self._normalise(image, self.stats_for(image))
        m = self.multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "symmetric")
        prob = self.predict_batch(x[np.newaxis])[0, :h, :w]
        return np.where(nodata, np.float32(np.nan), prob).astype(np.float32)

    def chunks(self, height: int, width: int, size: int | None = None) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The tile-lattice rectangles ``((k0, k1), (j0, j1))`` of ``size`` tile steps covering an image."""
        size = size or CHUNK_TILES
        n_r, n_c = n_tiles(height, self.tile, self.overlap), n_tiles(width, self.tile, self.overlap)
        return [((k, min(n_r, k + size)), (j, min(n_c, j + size)))
                for k in range(0, n_r, size) for j in range(0, n_c, size)]

    def predict_chunk(
        self,
        read: Callable[[np.ndarray, np.ndarray], np.ndarray],
        height: int,
        width: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        stats: BandStats | None = None,
    ) -> tuple[int, int, np.ndarray]:
        """The output of tile rows ``rows`` x tile columns ``cols`` of the global lattice of a
        ``height x width`` image read through ``read(row_indices, col_indices) -> [C, rows, cols]``:
        ``(row0, col0, prob)``. The tiles before the rectangle (whose overlap reaches into it) are run
        too, and the weights are summed in :meth:`stream`'s order, so chunks tile the image exactly."""
        if stats is None:
            stats = stats_for(self.normalisation, None, scene=self.scene)
        t, o = self.tile, self.overlap
        step = t - o
        (k0, k1), (j0, j1) = rows, cols
        ka, ja = max(0, k0 - 1), max(0, j0 - 1)
        span_r, span_c = (k1 - 1 - ka) * step + t, (j1 - 1 - ja) * step + t
        raw = read(reflect_index(np.arange(ka * step - o, ka * step - o + span_r), height),
                   reflect_index(np.arange(ja * step - o, ja * step - o + span_c), width))
        x, nodata = self._normalise(raw, stats)
        window = blend_window(t, o)
        acc = np.zeros((span_r, span_c), dtype=np.float32)
        wsum = np.zeros((span_r, span_c), dtype=np.float32)
        for k in range(ka, k1):
            r = (k - ka) * step
            tiles = [x[r : r + t, (j - ja) * step : (j - ja) * step + t] for j in range(ja, j1)]
            preds = self.predict_batch(np.stack(tiles))
            for i, j in enumerate(range(ja, j1)):
                c = (j - ja) * step
                acc[r : r + t, c : c + t] += preds[i] * window
                wsum[r : r + t, c : c + t] += window
        # final padded rows [k0*step, k1*step) = original rows k0*step - o + [0, (k1-k0)*step), clipped
        r_lo, r_hi = max(0, k0 * step - o), min(height, k1 * step - o)
        c_lo, c_hi = max(0, j0 * step - o), min(width, j1 * step - o)
        rs = slice(r_lo + o - ka * step, r_hi + o - ka * step)
        cs = slice(c_lo + o - ja * step, c_hi + o - ja * step)
        done = acc[rs, cs] / np.maximum(wsum[rs, cs], 1e-12)
        return r_lo, c_lo, np.where(nodata[rs, cs], np.nan, done).astype(np.float32)

    def predict_chips(self, chips: np.ndarray) -> np.ndarray:
        """Whole-chip prediction (as in training) for ``[N, bands, h, w]`` with sides multiples of 16;
        each chip normalised by :meth:`stats_for` (its own percentiles for chip-scope models)."""
        x = []
        masks = []
        for chip in chips:
            chip = np.asarray(chip, dtype=np.float32)
            xi, m = self._normalise(chip, self.stats_for(chip))
            x.append(xi)
            masks.append(m)
        prob = self.predict_batch(np.stack(x))
        prob[np.stack(masks)] = np.nan
        return prob


def load_detector(model_dir: str | Path, tile: int = DEFAULT_TILE, overlap: int | None = None) -> Detector:
    """Verify the artefact's SHA-256, load the Keras model once (cached by folder and version)."""
    from slidemap.compute.models.store import verify

    model_dir = Path(model_dir)
    card = verify(model_dir)  # ModelError on a hash mismatch
    if card.get("kind") != "unet":
        raise ModelError(f"{model_dir}: a {card.get('kind')} model, not a detector; use a `slidemap train unet` model")
    if not isinstance(card.get("normalisation"), dict) or "method" not in card["normalisation"]:
        raise ModelError(f"{model_dir}/card.json: no normalisation block; retrain the detector")
    views = (card.get("inference") or {}).get("views", 1)
    if views not in VIEWS:
        raise ModelError(f"{model_dir}/card.json: inference.views is {views!r}, not one of {VIEWS}; retrain the detector")
    key = (str(model_dir.resolve()), str(card.get("version")))

    def load() -> Detector:
        from slidemap.compute.models.runtime import configure_tensorflow, device_summary, with_compute_policy

        configure_tensorflow()
        import keras

        try:
            model = keras.saving.load_model(model_dir / card.get("weights", "model.keras"), compile=False)
        except Exception as exc:  # a truncated or foreign file
            raise ModelError(f"{model_dir}: the Keras model cannot be loaded ({exc.__class__.__name__}); retrain it") from exc
        multiple = int(card.get("tile_multiple", 16))
        size = max(multiple, tile // multiple * multiple)
        halo = int(card.get("halo", DEFAULT_OVERLAP) if overlap is None else overlap)
        batch = 32 if device_summary()["device"] == "GPU" else 8
        return Detector(with_compute_policy(model), card, model_dir, tile=size, overlap=min(halo, size // 4),
                        batch_size=batch)

    return _cache.get_or_load(key, load)


def cached_detectors() -> list[tuple[str, str]]:
    """The (folder, version) keys of the detectors held in memory, least recently used first."""
    return _cache.keys()  # type: ignore[return-value]


# ---- files --------------------------------------------------------------------------------
def _band_indices(model_bands: Sequence[str], file_bands: Sequence[str], path: Path) -> list[int]:
    missing = [b for b in model_bands if b not in file_bands]
    if missing:
        raise InputError(
            f"{path}: bands {missing} needed by the model are not among the file's {list(file_bands)}; "
            "name the file's band order with --band-order (e.g. --band-order B4,B3,B2,B8)"
        )
    return [list(file_bands).index(b) + 1 for b in model_bands]


def _file_band_names(src: Any, band_order: Sequence[str] | None, model_bands: Sequence[str], path: Path) -> list[str]:
    if band_order:
        if len(band_order) != src.count:
            raise InputError(f"{path}: --band-order names {len(band_order)} bands but the file has {src.count}")
        return list(band_order)
    if all(src.descriptions) and set(model_bands) <= set(src.descriptions):
        return list(src.descriptions)
    if src.count == len(model_bands):
        log.warning("%s: no band names; assuming the model's order %s (use --band-order to say otherwise)", path, model_bands)
        return list(model_bands)
    raise InputError(
        f"{path}: {src.count} unnamed bands, the model needs {list(model_bands)}; give --band-order (e.g. R,G,B,NIR names)"
    )


def _sample_stats(src: Any, indexes: list[int]) -> np.ndarray:
    """Per-band values from a decimated read (at most ~1 Mpx), for scale guesses and stretches."""
    factor = max(1, int(np.ceil(max(src.width, src.height) / 1024)))
    shape = (len(indexes), max(1, src.height // factor), max(1, src.width // factor))
    return src.read(indexes, out_shape=shape).astype(np.float64)


def _invalid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    bad = ~np.isfinite(raw).all(axis=0) | np.all(raw == 0, axis=0)  # zero fill is no data
    if nodata is not None and np.isfinite(nodata):
        bad |= np.any(raw == nodata, axis=0)
    return bad


def display_stretch(sample: np.ndarray) -> float:
    """Factor mapping an image to 8-bit display values like the training chips (brightest band -> 255)."""
    vals = [np.percentile(b[np.isfinite(b) & (b != 0)], 99.5) for b in sample if np.any(np.isfinite(b) & (b != 0))]
    top = max(vals) if vals else 1.0
    return 255.0 / top if top > 0 else 1.0


MASK_COLOUR = (228, 26, 28)  # the inventory overlay's landslide red


def mask_path_for(out_path: Path) -> Path:
    """Where the 0/1 mask goes beside a probability GeoTIFF: ``OUT_mask.tif``."""
    return out_path.with_name(f"{out_path.stem}_mask{out_path.suffix or '.tif'}")


def _scaling(det: Detector, sample_valid: np.ndarray, scale: float | None, input_path: Path) -> tuple[float, str, BandStats | None]:
    """(factor applied to the file's values, how, scene statistics) for one input file."""
    if det.robust:
        # percentiles do not care about a linear scale, so DN, reflectance and 8-bit all work as they are
        stats = image_stats(sample_valid[:, None, :], channel_axis=0) if sample_valid.size else None
        factor = 1.0 / float(scale) if scale else 1.0
        how = ("robust per-scene normalisation (p50, p90 - p10 of this file's valid pixels)"
               + (f", values / {scale:g}" if scale else ""))
        if stats is not None and factor != 1.0:
            stats = BandStats(tuple(c * factor for c in stats.centre), tuple(v * factor for v in stats.scale))
        return factor, how, stats
    if det.units == "display8":
        factor = display_stretch(sample_valid[:, None, :]) if sample_valid.size else 1.0
        return factor, f"per-image stretch x{factor:.4g} to 8-bit display values (model trained on stretched chips)", None
    if scale is None:
        big = sample_valid.size and np.nanpercentile(sample_valid, 99) > 2.0
        scale = 10000.0 if big else 1.0
        log.info("%s: no --scale given; using %g (values %s reflectance)", input_path, scale,
                 "look like DN, not" if big else "look like")
    return 1.0 / float(scale), f"reflectance = value / {scale:g}", None


def detect_file(
    model_dir: str | Path | None,
    input_path: str | Path,
    out_path: str | Path,
    band_order: Sequence[str] | None = None,
    scale: float | None = None,
    progress: bool = True,
    detector: Detector | None = None,
    mask: bool = False,
    dask: Any = None,
) -> dict[str, Any]:
    """Run a detector over a GeoTIFF (written as a float32 probability COG) or a chip folder (8-bit PNGs).

    With ``mask`` a uint8 mask (1 = probability >= the model's threshold, 0 below, 255 no data) is
    written beside the probabilities (``OUT_mask.tif``, or ``OUT/masks/`` for a chip folder).
    With ``dask`` (``local``, a scheduler address or a Client) a GeoTIFF is computed in lattice chunks
    (:meth:`Detector.predict_chunk`) on the cluster's workers, which read INPUT from the same path,
    and written here as they arrive.
    """
    input_path, out_path = Path(input_path), Path(out_path)
    if detector is None and model_dir is None:
        raise ValueError("detect_file needs model_dir or detector")
    det = detector or load_detector(model_dir)  # type: ignore[arg-type]
    if input_path.is_dir():
        return detect_folder(det, input_path, out_path, band_order, scale, progress, mask)
    if not input_path.is_file():
        raise InputError(f"{input_path}: no such file or folder")
    import rasterio
    from rasterio.shutil import copy as rio_copy
    from tqdm.auto import tqdm

    from slidemap.compute.region.raster_io import atomic_path

    try:
        src = rasterio.open(input_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{input_path}: not a readable raster ({exc})") from exc
    with src:
        names = _file_band_names(src, band_order, det.bands, input_path)
        indexes = _band_indices(det.bands, names, input_path)
        nodata = src.nodata
        sample = _sample_stats(src, indexes)
        sample_valid = sample[:, ~_invalid(sample, nodata)]
        factor, how, stats = _scaling(det, sample_valid, scale, input_path)
        run = det.for_scene(stats) if stats is not None else det
        h, w = src.height, src.width
        profile = {"driver": "GTiff", "dtype": "float32", "count": 1, "width": w, "height": h,
                   "crs": src.crs, "transform": src.transform, "nodata": np.nan, "tiled": True,
                   "blockxsize": 256, "blockysize": 256, "compress": "deflate"}

        read = _window_reader(src, indexes, nodata, factor)

        def read_rows(idx: np.ndarray) -> np.ndarray:
            return read(idx, np.arange(w))

        threshold = det.threshold
        tags = {"model_version": det.version, "model": str(det.card.get("name")), "threshold": str(threshold),
                "input": str(input_path.name), "scaling": how,
                "normalisation": str(det.normalisation.get("method", "standardise")),
                "views": str(det.views), "synthetic_model": str(bool(det.card.get("synthetic")))}
        stats_acc = {"sum": 0.0, "n": 0, "above": 0}
        mask_target = mask_path_for(out_path) if mask else None
        with atomic_path(out_path, suffix=".tif") as tmp:
            work = tmp.with_suffix(".work.tif")
            mask_work = tmp.with_suffix(".mask.tif")
            try:
                mask_dst = None
                if mask_target is not None:
                    mask_dst = rasterio.open(mask_work, "w", **{**profile, "dtype": "uint8", "nodata": MASK_NODATA})
                    mask_dst.set_band_description(1, "landslide")
                    mask_dst.update_tags(**tags, values="1 landslide (probability >= threshold), 0 not, 255 no data")
                    mask_dst.write_colormap(1, {0: (0, 0, 0, 0), 1: (*MASK_COLOUR, 255)})
                with rasterio.open(work, "w", **profile) as dst, tqdm(
                    total=h, desc=f"detect {input_path.name}", unit="row", disable=not progress, leave=False
                ) as bar:
                    dst.set_band_description(1, "landslide_probability")

                    def emit(row0: int, rows: np.ndarray, col0: int = 0) -> None:
                        window = rasterio.windows.Window(col0, row0, rows.shape[1], len(rows))
                        dst.write(rows[None], window=window)
                        ok = np.isfinite(rows)
                        above = ok & (rows >= threshold)
                        stats_acc["sum"] += float(rows[ok].sum())
                        stats_acc["n"] += int(ok.sum())
                        stats_acc["above"] += int(above.sum())
                        if mask_dst is not None:
                            cut = np.where(ok, above.astype(np.uint8), np.uint8(MASK_NODATA)).astype(np.uint8)
                            mask_dst.write(cut[None], window=window)

                    if dask is None:
                        run.stream(read_rows, h, w, emit, bar.update)
                    else:
                        if model_dir is None:
                            raise ValueError("detect_file with dask needs model_dir (workers load the model)")
                        _detect_on_dask(dask, Path(model_dir).resolve(), input_path.resolve(), indexes, factor, stats,
                                        run.chunks(h, w), emit, progress)
                    dst.update_tags(**tags)
                if mask_dst is not None:
                    mask_dst.close()
                    with atomic_path(mask_target, suffix=".tif") as mask_tmp:
                        rio_copy(mask_work, mask_tmp, driver="COG", compress="DEFLATE", blocksize=256,
                                 overview_resampling="NEAREST")
                rio_copy(work, tmp, driver="COG", compress="DEFLATE", predictor="YES", blocksize=256,
                         overview_resampling="AVERAGE")
            finally:
                for leftover in (work, mask_work):
                    if leftover.exists():
                        leftover.unlink()
    _write_styles(out_path, mask_target)
    return {"input": str(input_path), "output": str(out_path), "model_version": det.version,
            "model": det.card.get("name"), "bands": dict(zip(det.bands, indexes, strict=True)), "scaling": how,
            "valid_pixels": stats_acc["n"],
            "mean_probability": stats_acc["sum"] / stats_acc["n"] if stats_acc["n"] else None,
            "pixels_above_threshold": stats_acc["above"], "threshold": threshold,
            "mask": str(mask_target) if mask_target else None}


def _window_reader(src: Any, indexes: list[int], nodata: float | None, factor: float
                   ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``read(row_indices, col_indices) -> [C, rows, cols]`` float32, scaled, NaN on no data."""
    import rasterio

    def read(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        raw = src.read(indexes, window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)).astype(np.float32)
        bad = _invalid(raw, nodata)
        raw *= np.float32(factor)
        raw[:, bad] = np.nan
        raw = raw[:, rows - r0]
        return raw if np.array_equal(cols, np.arange(c0, c1)) else raw[:, :, cols - c0]

    return read


def detect_chunk(model_dir: str, input_path: str, indexes: list[int], factor: float, stats: BandStats | None,
                 rows: tuple[int, int], cols: tuple[int, int]) -> tuple[int, int, np.ndarray]:
    """One lattice chunk of a GeoTIFF (a Dask task: loads the model once per worker process)."""
    import rasterio

    det = load_detector(model_dir)
    run = det.for_scene(stats) if stats is not None else det
    with rasterio.open(input_path) as src:
        read = _window_reader(src, indexes, src.nodata, factor)
        return run.predict_chunk(read, src.height, src.width, rows, cols)


def _detect_on_dask(address: Any, model_dir: Path, input_path: Path, indexes: list[int], factor: float,
                    stats: BandStats | None, chunks: list, emit: Callable[..., None], progress: bool) -> None:
    from slidemap.compute.maps.dask_run import dask_client, run_tasks

    tasks = [(str(model_dir), str(input_path), indexes, factor, stats, rows, cols) for rows, cols in chunks]
    with dask_client(address) as client:
        for row0, col0, prob in run_tasks(client, detect_chunk, tasks, progress, "detect chunks"):
            emit(row0, prob, col0)


def _write_styles(prob_path: Path, mask_path: Path | None) -> None:
    """QGIS/SLD styles beside the probability COG (the server's ramp) and the mask (its classes)."""
    from slidemap.compute.region.styles import DETECTION_COLORMAP, Stop, colormap_stops, write_category_names, write_raster_styles

    write_raster_styles(prob_path, colormap_stops(DETECTION_COLORMAP, units="probability"), classes=False)
    if mask_path is not None:
        write_category_names(mask_path, {0: "not a landslide", 1: "landslide"})
        write_raster_styles(mask_path, [Stop(1, MASK_COLOUR, "landslide")], classes=True)


def detect_folder(
    det: Detector,
    folder: Path,
    out_dir: Path,
    band_order: Sequence[str] | None = None,
    scale: float | None = None,
    progress: bool = True,
    mask: bool = False,
) -> dict[str, Any]:
    """One 8-bit probability PNG (0-255) per chip of ``folder/images`` (or ``folder`` itself), same file name;
    with ``mask``, a 0/255 PNG per chip in ``out_dir/masks/`` cut at the model's threshold."""
    from PIL import Image
    from tqdm.auto import tqdm

    from slidemap.compute.region.image_files import IMAGE_EXTS, read_image_file
    from slidemap.compute.region.raster_io import atomic_path

    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise InputError(f"{image_dir}: no .png or .tif chips to detect on")
    out_dir.mkdir(parents=True, exist_ok=True)
    if mask:
        (out_dir / "masks").mkdir(exist_ok=True)
    written = 0
    for path in tqdm(files, desc="detect chips", unit="chip", disable=not progress, leave=False):
        img, names, _ = read_image_file(path)  # [H, W, C]
        names = list(band_order) if band_order else (names or det.bands[: img.shape[-1]])
        if len(names) != img.shape[-1]:
            raise InputError(f"{path}: {img.shape[-1]} bands but --band-order names {len(names)}" if band_order else
                             f"{path}: {img.shape[-1]} unnamed bands; the model reads {det.bands}: "
                             "name the file's bands in order with --band-order")
        try:
            chip = np.stack([img[..., names.index(b)] for b in det.bands])
        except ValueError as exc:
            raise InputError(f"{path}: bands {names} lack one of the model's {det.bands}; use --band-order") from exc
        if path.suffix.lower() != ".png":
            chip[:, np.all(chip == 0, axis=0)] = np.nan
            if not det.robust:
                if det.units == "display8":
                    chip = chip * np.float32(display_stretch(chip))
                elif scale:
                    chip = chip / np.float32(scale)
        # a chip-scope model normalises each chip file by its own percentiles; a scene-scope one
        # by its card's reference, as its training normalised every chip by the fit chips' pooled ones
        chip_scope = det.robust and det.normalisation.get("scope") == "chip"
        run = det.for_scene(image_stats(chip, channel_axis=0)) if chip_scope else det
        h, w = chip.shape[1:]
        if h % det.multiple == 0 and w % det.multiple == 0:
            prob = run.predict_chips(chip[None])[0]
        else:
            prob = run.predict(chip)
        png = np.round(np.nan_to_num(prob, nan=0.0) * 255).clip(0, 255).astype(np.uint8)
        target = out_dir / (path.stem + ".png")
        with atomic_path(target, suffix=".png") as tmp:
            Image.fromarray(png).save(tmp, format="PNG")
        if mask:
            cut = np.where(np.isfinite(prob) & (prob >= det.threshold), 255, 0).astype(np.uint8)
            with atomic_path(out_dir / "masks" / (path.stem + ".png"), suffix=".png") as tmp:
                Image.fromarray(cut).save(tmp, format="PNG")
        written += 1
    return {"input": str(folder), "output": str(out_dir), "chips": written, "model_version": det.version,
            "model": det.card.get("name"), "threshold": det.threshold,
            "masks": str(out_dir / "masks") if mask else None}
