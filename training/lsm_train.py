"""``slidemap train lsm``: samples, leak-free splits, every model beside its peers, artefacts, report.

One run, for each negative sampling (``terrain``, the default, and ``anywhere`` beside it):

1. samples (:mod:`~slidemap.training.samples`) and one spatial layout: blocks with every landslide
   polygon whole on one side and a buffer of the largest window's reach around test blocks;
2. every model trained and scored on the **random** split (the paper's, inflated by
   autocorrelation) and on the **blocked** split; with fewer than ``cv_below`` samples (real point
   inventories), also **repeated spatial k-fold CV** on the primary sampling, whose mean and
   interval rank the models;
3. inside each training part an inner blocked (or, for the random split, random) validation set:
   early stopping of the networks and every model's threshold come from it, never from training
   predictions or the test set (:mod:`~slidemap.training.lsm_fit`);

then, on the primary sampling, the artefacts: the blocked split's models (or, where CV ran, each
model refitted on all samples), each window model's fast form (:mod:`~slidemap.training.lsm_distil`),
the ranking by blocked score, the skill of each model, and the region's default: the best model
with skill (:func:`slidemap.compute.models.select.record_default`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.models.select import record_default
from slidemap.compute.models.store import ModelInfo, new_run_id, read_card, save_artefact, update_card
from slidemap.compute.maps.windows import OUT_SIZE, halo_for
from slidemap.training.cls_metrics import classification_metrics, curves, mcnemar_test, rate_curve
from slidemap.training.lsm_config import REFERENCE, WINDOW_MODELS, LsmConfig, make_config
from slidemap.training.lsm_eval import Score, bootstrap_auc, clusters_for, cv_score, rank
from slidemap.training.lsm_fit import FittedModel, ModelInputs, StackCache, fit_model, predict_cells
from slidemap.training.samples import (
    RegionData,
    SampleSet,
    build_samples,
    find_detected_inventory,
    load_region_data,
    rasterise_detected,
)
from slidemap.training.splits import Split, SpatialLayout, blocked_split, random_split, spatial_kfold, spatial_layout

log = logging.getLogger(__name__)
THRESHOLD_RULE = "Youden's J on an inner validation split of the training part (never training or test predictions)"


@dataclass
class Scored:
    """One model on one split: its test metrics, test probabilities and (when kept) the model."""

    metrics: dict[str, Any]
    p_test: np.ndarray
    fitted: FittedModel | None = None
    p_area: np.ndarray | None = None  # on the region's area sample (rate curves)
    p_train_positives: np.ndarray | None = None  # on its training landslides (success rate)


@dataclass
class Run:
    cfg: LsmConfig
    data: RegionData
    stacks: StackCache
    inputs: ModelInputs
    area_rows: np.ndarray
    area_cols: np.ndarray
    tick: Callable[[str], None]
    timings: dict[str, float] = field(default_factory=dict)


def _inner(run: Run, layout: SpatialLayout, split: Split, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner training and validation indices inside ``split.train``."""
    pool = split.train
    if split.name == "random":
        inner = random_split(layout.y[pool], seed=seed, name="inner")
        return pool[inner.train], pool[inner.test]
    inner = blocked_split(layout, within=pool, seed=seed, name="inner", tries=60)
    return inner.train, inner.test


def _fit_and_score(run: Run, samples: SampleSet, layout: SpatialLayout, split: Split, label: str,
                   keep: bool, seed: int, rate_curves: bool = False,
                   models: tuple[str, ...] | None = None) -> dict[str, Scored]:
    cfg = run.cfg
    tr, va = _inner(run, layout, split, seed)
    train, val, test = samples.subset(tr), samples.subset(va), samples.subset(split.test)
    out: dict[str, Scored] = {}
    for i, name in enumerate(cfg.models):
        if models is not None and name not in models:
            continue
        run.tick(f"{label}: {name}")
        fitted = fit_model(name, cfg, run.stacks, run.inputs, train, val, seed=seed + 17 * i)
        run.timings[f"{label}/{name}"] = fitted.seconds
        if len(test):
            p = predict_cells(fitted, run.stacks, test.rows, test.cols)
            metrics = classification_metrics(test.y, p, fitted.threshold)
            metrics.update(n_train=len(train), n_val=len(val), seconds=fitted.seconds)
            if fitted.best_epochs:
                metrics["best_epochs"] = fitted.best_epochs
        else:
            p, metrics = np.zeros(0, np.float32), {"n_train": len(train), "n_val": len(val), "seconds": fitted.seconds}
        scored = Scored(metrics, p, fitted if keep else None)
        if rate_curves:
            pos = train.y == 1
            scored.p_area = predict_cells(fitted, run.stacks, run.area_rows, run.area_cols)
            scored.p_train_positives = predict_cells(fitted, run.stacks, train.rows[pos], train.cols[pos])
        out[name] = scored
    return out


def _sampling_run(run: Run, negatives: str, primary: bool, detected: np.ndarray | None) -> dict[str, Any]:
    cfg = run.cfg
    samples, rule = build_samples(
        run.data, detected=detected, negatives=negatives, neg_ratio=cfg.neg_ratio, buffer_cells=cfg.neg_buffer,
        per_polygon_cap=cfg.per_polygon_cap, max_samples=cfg.max_samples, seed=cfg.seed,
    )
    reach = halo_for([s for m in cfg.window_models for s in WINDOW_MODELS[m]]) if cfg.window_models else 0
    buffer = cfg.split_buffer if cfg.split_buffer is not None else max(reach, 3)
    layout = spatial_layout(samples.rows, samples.cols, samples.y, samples.group, run.data.grid.shape,
                            cfg.block_size, buffer, seed=cfg.seed)
    splits = {"random": random_split(samples.y, seed=cfg.seed), "blocked": blocked_split(layout, seed=cfg.seed)}
    use_cv = primary and len(samples) < cfg.cv_below
    # the side-by-side sampling may leave the (costly) networks out: the peers show the gap
    models = None if primary or cfg.anywhere_networks else tuple(m for m in cfg.models if m not in WINDOW_MODELS)
    results: dict[str, dict[str, Scored]] = {}
    for name, split in splits.items():
        keep = primary and name == "blocked" and not use_cv
        results[name] = _fit_and_score(run, samples, layout, split, f"{negatives}/{name}", keep, cfg.seed,
                                       rate_curves=primary, models=models)
    folds: list[Split] = []
    cv: dict[str, list[float]] = {}
    cv_epochs: dict[str, list[int]] = {}  # best epoch of each fold's network (0: it kept its start)
    if use_cv:
        folds = spatial_kfold(layout, cfg.cv_folds, cfg.cv_repeats, seed=cfg.seed)
        for k, fold in enumerate(folds):
            scored = _fit_and_score(run, samples, layout, fold, f"{negatives}/{fold.name}", False, cfg.seed + 101 * (k + 1))
            for m, s in scored.items():
                cv.setdefault(m, []).append(s.metrics["roc_auc"])
                if s.metrics.get("best_epochs"):
                    cv_epochs.setdefault(m, []).extend(s.metrics["best_epochs"])
    return {"samples": samples, "rule": rule, "layout": layout, "splits": splits, "results": results,
            "folds": folds, "cv": cv, "cv_epochs": cv_epochs, "use_cv": use_cv}


def _scores(run: Run, primary: dict[str, Any]) -> dict[str, Score]:
    """The ranking score of each model: CV mean where CV ran, else the blocked test with a bootstrap."""
    cfg = run.cfg
    samples: SampleSet = primary["samples"]
    if primary["use_cv"]:
        folds: list[Split] = primary["folds"]
        n_train = float(np.mean([len(f.train) for f in folds]))
        n_test = float(np.mean([len(f.test) for f in folds]))
        return {m: cv_score(v, n_train, n_test, cfg.cv_folds, cfg.cv_repeats) for m, v in primary["cv"].items()}
    split: Split = primary["splits"]["blocked"]
    test = samples.subset(split.test)
    cell = max(3, primary["layout"].block_cells // 4)
    clusters = clusters_for(test.rows, test.cols, test.group, test.y, cell)
    return {
        m: bootstrap_auc(test.y, s.p_test, clusters, cfg.bootstrap, seed=cfg.seed)
        for m, s in primary["results"]["blocked"].items()
    }


def _final_models(run: Run, primary: dict[str, Any]) -> dict[str, FittedModel]:
    """The models to save: the blocked split's, or where CV ran, each refitted on every sample."""
    if not primary["use_cv"]:
        return {m: s.fitted for m, s in primary["results"]["blocked"].items() if s.fitted is not None}
    samples: SampleSet = primary["samples"]
    everything = Split("all", np.arange(len(samples)), np.zeros(0, dtype=np.int64))
    scored = _fit_and_score(run, samples, primary["layout"], everything, "refit on all samples", True, run.cfg.seed)
    return {m: s.fitted for m, s in scored.items() if s.fitted is not None}


def _card(run: Run, fitted: FittedModel, trained_on: str, n_samples: int, sources: dict[str, int],
          metrics: dict[str, Any], skill: dict[str, Any], breaks: list[float], run_id: str) -> dict[str, Any]:
    data, cfg = run.data, run.cfg
    if fitted.kind == "centre":
        windows, halo, arch = None, 0, "centre-cell " + fitted.name
    else:
        windows = {
            "sizes": list(fitted.sizes), "out_size": OUT_SIZE, "resampling": "area-weighted",
            "placement": "start = centre - (n - 1) // 2", "edge": "zero (nodata after encoding)",
            "window_channels": list(fitted.inputs.window_channels),
        }
        halo, arch = halo_for(fitted.sizes), "window_cnn"
    return {
        "synthetic": data.synthetic,
        "run_id": run_id,
        "architecture": arch,
        "inputs": data.factor_names,
        "factor_names": data.factor_names,
        "normalisation": data.normalisation.to_list(),
        "encoding": data.encoding.to_dict(),
        "centre_channels": list(fitted.inputs.centre_channels),
        "windows": windows,
        "halo": halo,
        "threshold": fitted.threshold,
        "threshold_rule": THRESHOLD_RULE,
        "training_data": {
            "fingerprint": data.fingerprint,
            "region": data.region_dir.name,
            "samples": n_samples,
            "sources": sources,
            "trained_on": trained_on,
            "best_epochs": fitted.best_epochs,
        },
        "hyperparameters": cfg.model_dump(mode="json"),
        "metrics": metrics,
        "skill": skill,
        # five-class Jenks breaks of the served probabilities on a random sample of the region's
        # cells, so a tile server can classify without mapping the whole region first
        "class_breaks": breaks,
        "class_breaks_from": f"{len(run.area_rows)} random valid cells of the training region",
    }


def _save_keras(model: Any) -> Callable[[Path], None]:
    return lambda path: model.save(path)


def train_lsm(
    region_dir: str | Path,
    preset: str = "demo",
    overrides: dict[str, str] | None = None,
    models: tuple[str, ...] | None = None,
    progress: bool = True,
    save: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Train, score and rank the models; save artefacts, the region's default and the report."""
    from tqdm.auto import tqdm

    from slidemap.training.lsm_distil import distil
    from slidemap.compute.maps.classes import jenks_breaks, jenks_classes
    from slidemap.training.lsm_report import planted_rule, single_factor_auc, write_report

    overrides = dict(overrides or {})
    if models is not None:
        overrides["models"] = ",".join(models)
    cfg = make_config(preset, overrides)
    t0 = time.perf_counter()
    run_id = new_run_id()
    data = load_region_data(region_dir)
    detected_path = find_detected_inventory(region_dir) if cfg.use_detected else None
    detected = rasterise_detected(detected_path, data.grid) if detected_path else None
    rng = np.random.default_rng(cfg.seed + 1)
    flat = np.flatnonzero(data.valid.ravel())
    area_idx = np.sort(rng.choice(flat, size=min(cfg.area_sample, len(flat)), replace=False))
    area_rows, area_cols = np.unravel_index(area_idx, data.valid.shape)
    bar = tqdm(desc="train lsm", unit="fit", disable=not progress)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    run = Run(cfg, data, StackCache(data), ModelInputs.for_data(data, cfg.window_classes), area_rows, area_cols, tick)
    samplings = [cfg.negatives] + (["anywhere"] if cfg.compare_anywhere and cfg.negatives != "anywhere" else [])
    per_sampling = {neg: _sampling_run(run, neg, neg == cfg.negatives, detected) for neg in samplings}
    primary = per_sampling[cfg.negatives]
    samples: SampleSet = primary["samples"]
    scores = _scores(run, primary)
    ranking = rank(scores)
    finals = _final_models(run, primary)

    # models, metrics and McNemar tables -----------------------------------------------------------
    results: dict[str, dict[str, Any]] = {m: {} for m in cfg.models}
    for split in ("random", "blocked"):
        for m, s in primary["results"][split].items():
            results[m][split] = s.metrics
    for m, score in scores.items():
        results[m]["ranking_score"] = score.to_dict()
        if primary["use_cv"]:
            results[m]["cv"] = {"roc_auc": score.value, "ci95": list(score.ci95), "folds": primary["cv"][m]}
            if m in primary["cv_epochs"]:
                results[m]["cv"]["best_epochs"] = primary["cv_epochs"][m]
    for neg, res in per_sampling.items():
        if neg == cfg.negatives:
            continue
        for split in ("random", "blocked"):
            for m, s in res["results"][split].items():
                results[m][f"{neg}_{split}"] = s.metrics
    mcnemar: dict[str, dict[str, Any]] = {}
    if REFERENCE in cfg.models and len(cfg.models) > 1:
        for split in ("random", "blocked"):
            y_test = samples.y[primary["splits"][split].test]
            res = primary["results"][split]

            def pred(m: str) -> np.ndarray:
                return (res[m].p_test >= res[m].metrics["threshold"]).astype(int)

            mcnemar[split] = {o: mcnemar_test(y_test, pred(REFERENCE), pred(o)) for o in cfg.models if o != REFERENCE}

    # artefacts, fast forms, default ------------------------------------------------------------------
    served_area: dict[str, np.ndarray] = {}
    fast_forms: dict[str, Any] = {}
    versions: dict[str, str] = {}
    infos: dict[str, ModelInfo] = {}
    blocked_test = samples.subset(primary["splits"]["blocked"].test)
    for m, fitted in finals.items():
        scored = primary["results"]["blocked"][m]
        p_area = scored.p_area if scored.fitted is fitted else predict_cells(fitted, run.stacks, area_rows, area_cols)
        if fitted.kind == "window" and cfg.distil:
            tick(f"fast form of {m}")
            # the AUC difference compares the fast form with the model it copies, on the same cells
            # (under CV the final model is refitted on all samples, so not the scored one)
            p_test = (scored.p_test if scored.fitted is fitted
                      else predict_cells(fitted, run.stacks, blocked_test.rows, blocked_test.cols))
            ff = distil(fitted, run.stacks, cfg, blocked_test, cfg.seed, p_test)
            fast_forms[m] = ff
            if ff.pearson_r >= cfg.fast_agreement:
                p_area = ff.region_map[area_rows, area_cols]
        served_area[m] = p_area
    trained_on = ("all samples (scores from spatial CV)" if primary["use_cv"] else "blocked split, training part")
    if save:
        for entry in ranking:
            m = entry["model"]
            fitted = finals[m]
            skill = {"metric": "roc_auc", "chance": 0.5, "rank": entry["rank"], "run_id": run_id,
                     **scores[m].to_dict()}
            card = _card(run, fitted, trained_on, len(samples), samples.counts(), results[m], skill,
                         jenks_breaks(served_area[m]), run_id)
            write, weights = (
                ((lambda p, mm=fitted.model: joblib.dump(mm, p)), "model.joblib") if fitted.kind == "centre"
                else (_save_keras(fitted.model), "model.keras")
            )
            path = save_artefact(RegionLayout.of(data.region_dir).models, "lsm", m, card, write, weights_file=weights)
            versions[m] = read_card(path)["version"]
            if m in fast_forms:
                ff = fast_forms[m]
                fast_card = {
                    "synthetic": data.synthetic, "run_id": run_id, "architecture": "dense_fcn",
                    "inputs": data.factor_names, "factor_names": data.factor_names,
                    "normalisation": data.normalisation.to_list(), "encoding": data.encoding.to_dict(),
                    "windows": {"patch": 23, "placement": "centred (odd)", "edge": "zero (nodata after encoding)"},
                    "halo": 11, "fast_form_of": {"name": m, "version": versions[m]},
                    "agreement": ff.card(cfg.fast_agreement), "threshold": fitted.threshold,
                    "class_breaks": card["class_breaks"], "training_data": card["training_data"],
                }
                fpath = save_artefact(RegionLayout.of(data.region_dir).models, "lsm", f"{m}_fast", fast_card,
                                      _save_keras(ff.model), weights_file="model.keras")
                update_card(path, {"fast_form": {"name": f"{m}_fast", "version": read_card(fpath)["version"],
                                                 **ff.card(cfg.fast_agreement)}})
            card = read_card(path)
            infos[m] = ModelInfo(m, "lsm", versions[m], path, card)
        best = next((e["model"] for e in ranking if e["has_skill"]), None)
        reason = (f"best blocked ROC-AUC ({'spatial CV mean' if primary['use_cv'] else 'blocked test'}) with skill "
                  f"in run {run_id}" if best else f"no model of run {run_id} has skill (interval includes 0.5)")
        record_default(data.region_dir, "susceptibility", infos.get(best) if best else None, reason)
    else:
        best = next((e["model"] for e in ranking if e["has_skill"]), None)

    # classes of the default (served) model --------------------------------------------------------------
    class_model = best or ranking[0]["model"]
    pos = samples.y == 1
    if class_model in fast_forms and fast_forms[class_model].pearson_r >= cfg.fast_agreement:
        p_slides = fast_forms[class_model].region_map[samples.rows[pos], samples.cols[pos]]
    else:
        p_slides = predict_cells(finals[class_model], run.stacks, samples.rows[pos], samples.cols[pos])
    classes = jenks_classes(served_area[class_model], p_slides)
    classes["model"] = class_model
    classes["estimated_from"] = (
        f"{len(area_idx)} random valid cells (area shares) and all {int(pos.sum())} landslide samples; "
        "`slidemap map susceptibility` computes the classes over the full map"
    )

    # curves for the figures (primary sampling) ---------------------------------------------------------
    curve_data: dict[str, dict[str, Any]] = {}
    rates: dict[str, dict[str, Any]] = {}
    for split in ("random", "blocked"):
        test = samples.subset(primary["splits"][split].test)
        curve_data[split] = {m: curves(test.y, s.p_test) for m, s in primary["results"][split].items()}
        rates[split] = {}
        for m, s in primary["results"][split].items():
            rates[split][m] = {"success": rate_curve(s.p_area, s.p_train_positives),
                               "prediction": rate_curve(s.p_area, s.p_test[test.y == 1])}
            results[m][split]["success_rate_auc"] = rates[split][m]["success"]["auc"]
            results[m][split]["prediction_rate_auc"] = rates[split][m]["prediction"]["auc"]

    report = {
        "kind": "lsm",
        "synthetic": data.synthetic,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": run_id,
        "data": {
            "region": data.region_dir.name,
            "fingerprint": data.fingerprint,
            "grid": data.grid.to_dict(),
            "factor_names": data.factor_names,
            "channels": data.encoding.channel_names,
            "window_channels": [data.encoding.channel_names[i] for i in run.inputs.window_channels],
            "imagery_factors_from": data.imagery_factors_from,
            "planted_rule": planted_rule(data.region_dir) if data.synthetic else None,
            "detected_inventory": detected_path.name if detected_path else None,
            "samples": int(len(samples)),
            "positives": int(samples.y.sum()),
            "sources": samples.counts(),
            "per_polygon_cap": cfg.per_polygon_cap,
            "negatives": cfg.negatives,
            "negatives_rule": primary["rule"],
            "samplings": {
                neg: {"samples": int(len(r["samples"])), "positives": int(r["samples"].y.sum()), "rule": r["rule"],
                      "splits": {k: {"train": int(len(s.train)), "test": int(len(s.test)), **s.info}
                                 for k, s in r["splits"].items()}}
                for neg, r in per_sampling.items()
            },
            "splits": {k: {"train": int(len(s.train)), "test": int(len(s.test)), **s.info}
                       for k, s in primary["splits"].items()},
            "cv": ({"folds": cfg.cv_folds, "repeats": cfg.cv_repeats,
                    "mean_train": float(np.mean([len(f.train) for f in primary["folds"]])),
                    "mean_test": float(np.mean([len(f.test) for f in primary["folds"]])),
                    "dropped_in_buffer": int(sum(f.info["dropped_in_buffer"] for f in primary["folds"]))}
                   if primary["use_cv"] else None),
            "single_factor_auc": single_factor_auc(data, samples),
        },
        "preset": cfg.preset,
        "config": cfg.model_dump(mode="json"),
        "threshold_rule": THRESHOLD_RULE,
        "ranking": ranking,
        "ranking_rule": ("spatial CV mean ROC-AUC" if primary["use_cv"] else "blocked-test ROC-AUC")
        + " on the " + cfg.negatives + " negatives; skill = 95 % interval above 0.5",
        "default_model": best,
        "model_versions": versions,
        "models": results,
        "fast_forms": {m: ff.card(cfg.fast_agreement) for m, ff in fast_forms.items()},
        "mcnemar": mcnemar,
        "classes": classes,
        "timings_s": {**run.timings, "total": round(time.perf_counter() - t0, 1)},
    }
    bar.close()
    if write:
        out_dir = RegionLayout.of(region_dir).report_dir("lsm", run_id)
        write_report(report, curve_data, rates, out_dir)
        report["report_dir"] = str(out_dir)
    return report
