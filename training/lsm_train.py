"""``slidemap train lsm``: samples, two splits, eight models, statistics, artefacts, report.

Every model is trained twice, once per split (random 80/20, the paper's; spatially blocked 80/20),
and scored on that split's test samples. The artefact kept for each model is the one trained on the
blocked split's training part (its card carries both splits' scores); maps use it.
Window inputs stream through the numba extractor batch by batch (:class:`WindowBatches`), so a
training set never sits in memory as windows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from slidemap.compute.windows import MULTISCALE_SIZES, halo_for, iter_windows
from slidemap.errors import InputError
from slidemap.compute.models.store import save_artefact
from slidemap.training.baselines import BASELINES, centre_values, fit_baseline, make_baseline
from slidemap.training.cls_metrics import (
    classification_metrics,
    curves,
    mcnemar_test,
    rate_curve,
    youden_threshold,
)
from slidemap.training.lsm import (
    DENSE_PATCH,
    build_dense_fcn,
    build_window_cnn,
    compiled_predict,
    patches_to_channels_last,
)
from slidemap.training.samples import (
    RegionData,
    SampleSet,
    build_samples,
    find_detected_inventory,
    load_region_data,
    rasterise_detected,
)
from slidemap.training.splits import Split, blocked_split, random_split

log = logging.getLogger(__name__)

WINDOW_MODELS: dict[str, tuple[int, ...]] = {
    "small": (12,),
    "medium": (17,),
    "large": (22,),
    "multiscale": MULTISCALE_SIZES,
}
DENSE_MODEL = "multiscale_dense"
ALL_MODELS: tuple[str, ...] = (*WINDOW_MODELS, DENSE_MODEL, *BASELINES)
REFERENCE = "multiscale"


@dataclasses.dataclass
class LsmConfig:
    """Hyperparameters; the presets below fill them, ``--set key=value`` overrides any."""

    max_samples: int | None = None
    neg_ratio: float = 1.0
    buffer: float = 3.0
    block_size: int | None = None  # cells; None = from the variogram
    epochs: int = 25
    dense_epochs: int = 25
    batch: int = 64
    lr: float = 0.01
    widths: tuple[int, int] = (32, 64)
    dense_units: int = 64
    dense_width: int = 32
    gbdt_trees: int = 100
    rf_trees: int = 300
    area_sample: int = 20000
    seed: int = 0
    use_detected: bool = True
    top_up: bool = True  # sample extra negatives when known ones are fewer than neg_ratio x positives

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # tests and smoke runs. Short runs use lr 0.002 and small batches: with the paper's lr 0.01 a
    # few dozen Adam steps leave the 3D-CNNs at chance (measured on the demo region).
    "quick": dict(max_samples=1000, epochs=2, dense_epochs=3, batch=16, lr=0.002, widths=(4, 8),
                  dense_units=16, dense_width=8, gbdt_trees=30, rf_trees=60, area_sample=1500),
    # the README's main job: all eight models, both splits, a few minutes on 2 cores
    "demo": dict(max_samples=2400, epochs=3, dense_epochs=8, batch=32, lr=0.002, widths=(8, 16),
                 dense_units=32, dense_width=16, gbdt_trees=100, rf_trees=200, area_sample=4000),
    # the paper's Table 5: Adam lr 0.01, batch 64, 25 epochs, 32/64 filters, dense 64
    "paper": dict(max_samples=None, epochs=25, dense_epochs=25, batch=64, lr=0.01, widths=(32, 64),
                  dense_units=64, dense_width=32, gbdt_trees=200, rf_trees=500, area_sample=20000),
}


def make_config(preset: str, overrides: dict[str, str] | None = None) -> LsmConfig:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = LsmConfig(**PRESETS[preset])
    for key, raw in (overrides or {}).items():
        if not hasattr(cfg, key):
            raise InputError(f"--set {key}=...: no such setting; known: {sorted(cfg.to_dict())}")
        current = getattr(cfg, key)
        try:
            if key == "widths":
                value: Any = tuple(int(v) for v in raw.split(","))
            elif key in ("max_samples", "block_size"):
                value = None if raw.lower() in ("none", "") else int(raw)
            elif isinstance(current, bool):
                value = raw.lower() in ("1", "true", "yes")
            elif isinstance(current, int):
                value = int(raw)
            else:
                value = float(raw)
        except ValueError as exc:
            raise InputError(f"--set {key}={raw}: not a valid value ({exc})") from exc
        setattr(cfg, key, value)
    _check_config(cfg)
    return cfg


def _check_config(cfg: LsmConfig) -> None:
    """Settings that would otherwise fail deep inside Keras or scikit-learn."""
    if len(cfg.widths) != 2 or min(cfg.widths) < 1:
        raise InputError(f"--set widths={','.join(map(str, cfg.widths))}: give two positive filter counts, e.g. widths=32,64")
    if cfg.max_samples is not None and cfg.max_samples < 50:
        raise InputError(f"--set max_samples={cfg.max_samples}: at least 50 samples are needed for two 80/20 splits")
    for key in ("epochs", "dense_epochs", "batch"):
        if getattr(cfg, key) < 1:
            raise InputError(f"--set {key}={getattr(cfg, key)}: must be at least 1")
    if not cfg.lr > 0:
        raise InputError(f"--lr {cfg.lr}: the learning rate must be positive")


def _window_batches_class() -> type:
    import keras

    class WindowBatches(keras.utils.PyDataset):
        """Keras dataset cutting each batch's windows on demand from the normalised stack."""

        def __init__(self, stack, rows, cols, y, w, sizes, out_size, batch, shuffle, seed, dense):
            super().__init__()
            self.stack, self.rows, self.cols, self.y, self.w = stack, rows, cols, y, w
            self.sizes, self.out_size, self.batch, self.shuffle, self.dense = sizes, out_size, batch, shuffle, dense
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(rows)) if shuffle else np.arange(len(rows))

        def __len__(self) -> int:
            return int(np.ceil(len(self.rows) / self.batch))

        def __getitem__(self, i: int):
            from slidemap.compute.windows import extract_windows

            sel = self.order[i * self.batch : (i + 1) * self.batch]
            x = extract_windows(self.stack, self.rows[sel], self.cols[sel], self.sizes, self.out_size)
            y = self.y[sel].astype(np.float32)
            if self.dense:
                return patches_to_channels_last(x), y.reshape(-1, 1, 1, 1), self.w[sel]
            return x, y.reshape(-1, 1), self.w[sel]

        def on_epoch_end(self) -> None:
            if self.shuffle:
                self.order = self.rng.permutation(len(self.rows))

    return WindowBatches


def predict_cells(model: Any, name: str, stack: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  batch: int = 1024) -> np.ndarray:
    """Probabilities of any susceptibility model at the given cells of a normalised stack."""
    out = np.empty(len(rows), dtype=np.float32)
    if name in BASELINES:
        if len(rows):
            out[:] = model.predict_proba(centre_values(stack, rows, cols))[:, 1]
        return out
    dense = name == DENSE_MODEL
    sizes = (DENSE_PATCH,) if dense else WINDOW_MODELS[name]
    out_size = DENSE_PATCH if dense else 12
    predict = compiled_predict(model)
    for start, windows in iter_windows(stack, rows, cols, sizes, out_size, batch):
        x = patches_to_channels_last(windows) if dense else windows
        out[start : start + len(windows)] = predict(x).reshape(-1)
    return out


def fit_model(name: str, cfg: LsmConfig, data: RegionData, samples: SampleSet, seed: int,
              on_epoch: Callable[[], None] | None = None) -> Any:
    if name in BASELINES:
        model = make_baseline(name, {"gbdt_trees": cfg.gbdt_trees, "rf_trees": cfg.rf_trees}, seed)
        X = centre_values(data.normalised, samples.rows, samples.cols)
        return fit_baseline(model, X, samples.y.astype(int), samples.weight)
    import keras

    keras.utils.set_random_seed(seed)
    n_factors = data.normalised.shape[0]
    dense = name == DENSE_MODEL
    if dense:
        model = build_dense_fcn(n_factors, width=cfg.dense_width, dense=cfg.dense_units, lr=cfg.lr)
        sizes, out_size, epochs = (DENSE_PATCH,), DENSE_PATCH, cfg.dense_epochs
    else:
        sizes = WINDOW_MODELS[name]
        model = build_window_cnn(n_factors, len(sizes), widths=cfg.widths, dense=cfg.dense_units, lr=cfg.lr, name=name)
        out_size, epochs = 12, cfg.epochs
    batches = _window_batches_class()(
        data.normalised, samples.rows, samples.cols, samples.y, samples.weight,
        sizes, out_size, cfg.batch, True, seed, dense,
    )
    callbacks = [keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: on_epoch())] if on_epoch else []
    model.fit(batches, epochs=epochs, verbose=0, callbacks=callbacks)
    return model


def _save(name: str, model: Any, data: RegionData, cfg: LsmConfig, samples: SampleSet,
          metrics: dict[str, Any], split: Split, p_area: np.ndarray) -> Path:
    from slidemap.training.lsm_report import jenks_breaks

    if name in BASELINES:
        weights_file, write = "model.joblib", (lambda p: joblib.dump(model, p))
        windows, halo, arch = None, 0, "centre-cell " + name
    elif name == DENSE_MODEL:
        weights_file, write = "model.keras", model.save
        windows = {"patch": DENSE_PATCH, "placement": "centred (odd)", "edge": "zero (nodata after normalisation)"}
        halo, arch = DENSE_PATCH // 2, "dense_fcn"
    else:
        weights_file, write = "model.keras", model.save
        sizes = WINDOW_MODELS[name]
        windows = {
            "sizes": list(sizes), "out_size": 12, "resampling": "area-weighted",
            "placement": "start = centre - (n - 1) // 2", "edge": "zero (nodata after normalisation)",
        }
        halo, arch = halo_for(sizes), "window_cnn"
    card = {
        "synthetic": data.synthetic,
        "architecture": arch,
        "inputs": data.factor_names,
        "factor_names": data.factor_names,
        "normalisation": data.normalisation.to_list(),
        "windows": windows,
        "halo": halo,
        "training_data": {
            "fingerprint": data.fingerprint,
            "region": str(data.region_dir.resolve()),
            "samples": int(len(samples)),
            "sources": samples.counts(),
            "trained_on": f"{split.name} split, training part",
        },
        "hyperparameters": cfg.to_dict(),
        "metrics": metrics,
        # five-class Jenks breaks of this model's scores on a random sample of the region's cells,
        # so a tile server can classify without mapping the whole region first
        "class_breaks": jenks_breaks(p_area),
        "class_breaks_from": f"{len(p_area)} random valid cells of the training region",
    }
    return save_artefact(data.region_dir / "models", "lsm", name, card, write, weights_file=weights_file)


def train_lsm(
    region_dir: str | Path,
    preset: str = "demo",
    overrides: dict[str, str] | None = None,
    models: tuple[str, ...] = ALL_MODELS,
    progress: bool = True,
    save: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Train and score ``models`` on both splits; save artefacts and the report. Returns the report."""
    from tqdm.auto import tqdm

    from slidemap.training.lsm_report import jenks_classes, write_report

    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise InputError(f"unknown models {unknown}; choose from {list(ALL_MODELS)}")
    cfg = make_config(preset, overrides)
    t0 = time.perf_counter()
    data = load_region_data(region_dir)
    detected_path = find_detected_inventory(region_dir) if cfg.use_detected else None
    detected = rasterise_detected(detected_path, data.grid) if detected_path else None
    valid = data.valid
    samples = build_samples(
        data.labels, valid, detected=detected, neg_ratio=cfg.neg_ratio, buffer_cells=cfg.buffer,
        max_samples=cfg.max_samples, top_up=cfg.top_up, seed=cfg.seed,
    )
    splits = [
        random_split(samples.y, seed=cfg.seed),
        blocked_split(samples.rows, samples.cols, samples.y, block_cells=cfg.block_size, seed=cfg.seed),
    ]
    rng = np.random.default_rng(cfg.seed + 1)
    flat = np.flatnonzero(valid.ravel())
    area_idx = np.sort(rng.choice(flat, size=min(cfg.area_sample, len(flat)), replace=False))
    area_rows, area_cols = np.unravel_index(area_idx, valid.shape)

    results: dict[str, dict[str, Any]] = {m: {} for m in models}
    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {s.name: {} for s in splits}
    curve_data: dict[str, dict[str, Any]] = {s.name: {} for s in splits}
    rates: dict[str, dict[str, Any]] = {s.name: {} for s in splits}
    kept: dict[str, Any] = {}
    total_epochs = sum(
        (cfg.dense_epochs if m == DENSE_MODEL else cfg.epochs if m in WINDOW_MODELS else 1) for m in models
    ) * len(splits)
    bar = tqdm(total=total_epochs, desc="train lsm", unit="epoch", disable=not progress)
    timings: dict[str, float] = {}
    for split in splits:
        train, test = samples.subset(split.train), samples.subset(split.test)
        for i, name in enumerate(models):
            bar.set_postfix_str(f"{split.name}: {name}")
            t = time.perf_counter()
            model = fit_model(name, cfg, data, train, seed=cfg.seed + i, on_epoch=lambda: bar.update(1))
            if name in BASELINES:
                bar.update(1)
            p_train = predict_cells(model, name, data.normalised, train.rows, train.cols)
            p_test = predict_cells(model, name, data.normalised, test.rows, test.cols)
            p_area = predict_cells(model, name, data.normalised, area_rows, area_cols)
            timings[f"{split.name}/{name}"] = round(time.perf_counter() - t, 2)
            thr = youden_threshold(train.y, p_train)
            results[name][split.name] = classification_metrics(test.y, p_test, thr)
            preds[split.name][name] = {"p": p_test, "pred": (p_test >= thr).astype(int)}
            curve_data[split.name][name] = curves(test.y, p_test)
            success = rate_curve(p_area, p_train[train.y == 1])
            prediction = rate_curve(p_area, p_test[test.y == 1])
            rates[split.name][name] = {"success": success, "prediction": prediction}
            results[name][split.name]["success_rate_auc"] = success["auc"]
            results[name][split.name]["prediction_rate_auc"] = prediction["auc"]
            if split.name == "blocked":
                kept[name] = (model, p_area, split, train)
    bar.close()

    mcnemar: dict[str, dict[str, Any]] = {}
    if REFERENCE in models:
        for split in splits:
            y_test = samples.y[split.test]
            ref = preds[split.name][REFERENCE]["pred"]
            mcnemar[split.name] = {
                other: mcnemar_test(y_test, ref, preds[split.name][other]["pred"])
                for other in models if other != REFERENCE
            }

    versions: dict[str, str] = {}
    paths: dict[str, str] = {}
    if save:
        for name, (model, p_area, split, train) in kept.items():
            path = _save(name, model, data, cfg, train, results[name], split, p_area)
            versions[name] = path.name.rsplit("-", 1)[-1]
            paths[name] = str(path)

    class_model = REFERENCE if REFERENCE in kept else next(iter(kept))
    classes = jenks_classes(kept[class_model][1], None)
    classes["model"] = class_model
    classes["estimated_from"] = (
        f"{len(area_idx)} random valid cells (area shares) and all {int(samples.y.sum())} landslide "
        "samples; `slidemap map susceptibility` computes the classes over the full map"
    )
    p_slides = predict_cells(kept[class_model][0], class_model, data.normalised,
                             samples.rows[samples.y == 1], samples.cols[samples.y == 1])
    classes.update(jenks_classes(kept[class_model][1], p_slides, breaks=classes["breaks"]))

    report = {
        "kind": "lsm",
        "synthetic": data.synthetic,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6],
        "data": {
            "region": str(Path(region_dir).resolve()),
            "fingerprint": data.fingerprint,
            "grid": data.grid.to_dict(),
            "factor_names": data.factor_names,
            "samples": int(len(samples)),
            "positives": int(samples.y.sum()),
            "sources": samples.counts(),
            "detected_inventory": str(detected_path) if detected_path else None,
            "negatives_rule": (
                f"known non-landslide cells (labels.tif == 2), topped up to {cfg.neg_ratio} per positive "
                f"with random cells > {cfg.buffer} cells from landslides" if cfg.top_up
                else "known non-landslide cells (labels.tif == 2) only"
            ),
            "splits": {s.name: {"train": int(len(s.train)), "test": int(len(s.test)), **s.info} for s in splits},
        },
        "preset": preset,
        "config": cfg.to_dict(),
        "threshold_rule": "Youden's J on the model's own training predictions",
        "model_versions": versions,
        "model_paths": paths,
        "models": results,
        "mcnemar": mcnemar,
        "classes": classes,
        "timings_s": {**timings, "total": round(time.perf_counter() - t0, 1)},
    }
    if write:
        out_dir = Path(region_dir) / "reports" / "lsm" / report["run_id"]
        write_report(report, curve_data, rates, out_dir)
        report["report_dir"] = str(out_dir)
    return report
