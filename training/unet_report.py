"""The U-Net run report: JSON, a Markdown table like the paper's Table 4, training-curve PNGs.

``REGION/reports/unet/<run_id>/report.json``::

    {"kind": "unet", "synthetic": bool, "data": {...}, "created": ..., "model_versions": {...},
     "hpo": [{"iteration", "optimizer", "learning_rate", "alpha", "gamma", "score"}, ...],
     "best": {...}, "models": {"<name>": {"random": M, "blocked": M}}, ...}

where M holds accuracy, precision, recall, f1, miou, pr_auc and threshold (see
:mod:`slidemap.training.seg_metrics` for how each is pooled and averaged).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.raster_io import atomic_path, write_bytes_atomic, write_json_atomic
from slidemap.training.seg_metrics import METRIC_KEYS, paired_f1_difference, threshold_rule
from slidemap.report_schema import validate_report

def metric_note(plateau: float) -> str:
    return (
        "Pixel metrics pooled over all valid pixels of the test chips; precision, recall, F1 and IoU "
        "are those of the landslide class; mIoU is the mean of the landslide IoU and the background IoU; "
        f"PR-AUC is the average precision of the landslide probabilities; the threshold is {threshold_rule(plateau)}, "
        "the validation part being carved from the training side, and is then applied unchanged to the test "
        "part. The F1 interval is a percentile bootstrap over test chips."
    )


def _refit_rule(cfg: dict[str, Any]) -> str:
    below = cfg.get("scene_refit_below_areas")
    if below is not None and not cfg.get("refit"):
        return f"for a region when its training part holds fewer than {below} landslide areas"
    return str(cfg.get("refit"))


def _m(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {k: metrics.get(k) for k in METRIC_KEYS}
    for extra in ("iou_background", "pixels", "landslide_pixels", "confusion"):
        if extra in metrics:
            out[extra] = metrics[extra]
    if "validation" in metrics:
        out["validation"] = {k: metrics["validation"].get(k) for k in ("f1", "miou", "pr_auc")}
    return out


def build_report(result: Any, model_versions: dict[str, str], data: dict[str, Any],
                 run_id: str | None = None, default: str | None = None) -> dict[str, Any]:
    """Report dict from a :class:`~slidemap.training.unet_train.RunResult`."""
    models: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    for t in result.trained:
        models.setdefault(t.spec.name, {})[t.split] = {**_m(t.metrics), "skill": t.skill}
        details.setdefault(t.spec.name, {"label": t.spec.label, "loss": t.spec.loss})[t.split] = {
            "hyperparameters": t.hyperparameters,
            "training": t.training,
            "threshold": t.threshold,
            "sampling": t.balance,
            "parameters": int(t.model.count_params()) if hasattr(t.model, "count_params") else None,
            "seconds": round(t.seconds, 1),
        }
    hpo = [{k: r.get(k) for k in ("iteration", "optimizer", "learning_rate", "alpha", "gamma", "score", "proposed_by")}
           for r in result.hpo]
    return {
        "kind": "unet",
        "run_id": run_id,
        "synthetic": bool(result.synthetic),
        "data": data,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_versions": model_versions,
        "default_detector": default,
        "config": result.config.to_dict(),
        "splits": result.splits,
        "hpo": hpo,
        "hpo_objective": (result.hpo[0].get("objective", "validation PR-AUC") + " (fit and validation parts of "
                          "the blocked split; no test pixel of any split)") if result.hpo else None,
        "best": result.best,
        "search_note": search_note(result.best, result.hpo),
        "models": models,
        "paired": paired_differences(result),
        "model_details": details,
        "primary_model": result.primary.spec.name,
        "seconds": round(result.seconds, 1),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "metric_definitions": metric_note(result.config.threshold_plateau),
        "skill_definition": result.primary.skill.get("rule"),
    }


def paired_differences(result: Any) -> dict[str, list[dict[str, Any]]]:
    """Split -> the primary model's F1 minus each peer's, on the same test chips (paired bootstrap)."""
    out: dict[str, list[dict[str, Any]]] = {}
    name = result.primary.spec.name
    for split in dict.fromkeys(t.split for t in result.trained):
        here = [t for t in result.trained if t.split == split and t.test_counts is not None]
        primary = next((t for t in here if t.spec.name == name), None)
        if primary is None:
            continue
        rows = []
        for peer in here:
            if peer is primary or peer.test_counts.shape != primary.test_counts.shape:
                continue
            rows.append({"model": name, "versus": peer.spec.name,
                         **paired_f1_difference(primary.test_counts, peer.test_counts, seed=result.config.seed)})
        if rows:
            out[split] = rows
    return out


def search_note(best: dict[str, Any], hpo: list[dict[str, Any]]) -> str:
    """One sentence on what the search found, saying so when the seeded paper point won."""
    if not hpo:
        return "Search off: the preset's hyperparameters were used as they are."
    if best.get("seed_won"):
        return (f"The seeded point (the paper's best alpha/gamma{' and optimiser/rate' if best.get('space') == 'paper' else ''}) "
                f"won: none of the {len(hpo) - 1} other trials beat it, so the search confirmed the paper's set "
                "rather than finding a better one.")
    return (f"Best: trial {best.get('iteration')} ({best.get('source')}), validation score {best.get('score'):.4f}, "
            "ahead of the seeded paper point.")


def _skill_cell(split_name: str, skill: dict[str, Any]) -> str:
    """Skill is judged on the blocked test only: a random split's test neighbours its training chips."""
    if split_name != "blocked":
        return "n/a (random split)"
    return "yes" if skill.get("has_skill") else "NO SKILL"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}"
    return str(v)


def markdown(report: dict[str, Any], title: str = "Attention U-Net landslide inventory mapping") -> str:
    synthetic = report.get("synthetic")
    lines = [f"# {'SYNTHETIC DATA — ' if synthetic else ''}{title}", ""]
    if synthetic:
        lines += ["**SYNTHETIC**: computed on generated demo data; the figures say nothing about real terrain.", ""]
    data = report.get("data", {})
    cfg = report.get("config", {})
    lines += [f"- data: `{data.get('path', '')}` ({data.get('kind', '')}, chips of {data.get('chip', '?')} px, "
              f"bands {', '.join(data.get('bands', []))})", f"- created: {report.get('created')}",
              f"- preset: {cfg.get('preset')} (base width {cfg.get('base_width')}, loss {cfg.get('loss')}, "
              f"at most {cfg.get('epochs')} epochs of {cfg.get('epoch_chips') or 'the default number of'} chips, patience {cfg.get('patience')} "
              f"on validation {cfg.get('monitor')}, refit {_refit_rule(cfg)}; validation and test parts scored "
              f"with {cfg.get('views', 1)} symmetric view(s) averaged, for every model)",
              f"- time: {report.get('seconds')} s wall, {report.get('cpu_seconds')} CPU s", ""]
    for kind, info in (report.get("splits") or {}).items():
        if isinstance(info, dict) and "rule" in info:
            lines.append(f"- {kind} split: {info['rule']}; landslide areas {info.get('landslide_areas')}, "
                         f"pixel shares {info.get('pixel_share')}" + (f"; refit {info['refit']}" if info.get("refit") else ""))
        elif isinstance(info, dict):
            lines.append(f"- {kind} split: {json.dumps(info)}")
    lines.append("")
    lines += ["## Test-split metrics (like the paper's Table 4)", "", str(report.get("metric_definitions") or ""), ""]
    lines += ["| model | split | accuracy | precision | recall | F1 | F1 95 % CI | mIoU | PR-AUC | threshold | skill |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per_split in report["models"].items():
        for split_name in ("random", "blocked"):
            m = per_split.get(split_name)
            if not m:
                continue
            sk = m.get("skill") or {}
            ci = sk.get("ci95") or [None, None]
            lines.append(
                f"| {name} | {split_name} | " + " | ".join(_fmt(m.get(k)) for k in
                                                            ("accuracy", "precision", "recall", "f1")) +
                f" | {_fmt(ci[0])}-{_fmt(ci[1])} | " + " | ".join(_fmt(m.get(k)) for k in ("miou", "pr_auc", "threshold")) +
                f" | {_skill_cell(split_name, sk)} |"
            )
    lines.append("")
    for split_name, rows in (report.get("paired") or {}).items():
        lines += [f"Paired differences on the {split_name} test chips (F1 of `{rows[0]['model']}` minus the peer's, "
                  "the same chips resampled for both; an interval across 0 means no detectable difference):", "",
                  "| peer | F1 difference | 95 % CI | draws where the primary leads |", "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['versus']} | {r['difference']:+.3f} | {r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f} | "
                         f"{r['share_a_ahead']:.0%} |")
        lines.append("")
    if report.get("skill_definition"):
        lines += [f"Skill: {report['skill_definition']}. Default detector: {report.get('default_detector') or 'none'}.", ""]
    details = report.get("model_details", {})
    if details:
        lines += ["Models:", ""]
        for name, d in details.items():
            lines.append(f"- `{name}`: {d.get('label', '')}")
            for split_name, info in d.items():
                if not isinstance(info, dict) or "training" not in info:
                    continue
                tr = info.get("training") or {}
                if tr.get("epochs_run") is not None:
                    refit = tr.get("refit")
                    lines.append(f"  - {split_name}: {info.get('parameters')} parameters; {tr.get('epochs_run')} epochs, "
                                 f"best {tr.get('best_epoch')}{' (stopped early)' if tr.get('stopped_early') else ''}, "
                                 f"{tr.get('cpu_seconds')} CPU s" + (f"; refit {refit['epochs']} epochs on fit + validation "
                                 f"(test F1 before refit {refit['test_before_refit']['f1']:.3f})" if refit else ""))
                if refit and refit.get("fit_part_share_called_landslide") is not None:
                    kept = refit.get("test_at_first_fit_threshold") or {}
                    lines.append(f"  - refit threshold: the first fit's cut {refit['first_fit_threshold']:.3f} called "
                                 f"{refit['fit_part_share_called_landslide']:.2%} of fit-part pixels landslide; the refitted "
                                 f"network's cut for that share is {info.get('threshold', float('nan')):.3f}, "
                                 f"which calls {refit.get('fit_part_share_reached', float('nan')):.2%}"
                                 + (f"; test F1 at the first fit's cut, for the record: {kept['f1']:.3f}" if "f1" in kept else ""))
                views = tr.get("views")
                if views:
                    by_count = ", ".join(f"{k}: {_fmt(v)}" for k, v in (views.get("validation_pr_auc") or {}).items())
                    lines.append(f"  - views averaged: {views.get('chosen')} (validation PR-AUC by count: {by_count})")
                samp = info.get("sampling") or {}
                if samp.get("chips_with_landslide") is not None:
                    lines.append(f"  - sampling: {samp.get('chips_with_landslide'):.0%} of training chips hold a landslide; "
                                 f"landslide pixel share {samp.get('landslide_pixel_share_drawn')} drawn vs "
                                 f"{samp.get('landslide_pixel_share_training_area', samp.get('landslide_pixel_share_training_chips'))} "
                                 f"in the training data ({samp.get('rule')})")
        lines.append("")
    if report.get("hpo"):
        best = report.get("best", {})
        lines += ["## Bayesian search (GP surrogate + expected improvement, scikit-optimize), like Table 3", "",
                  f"Objective: {report.get('hpo_objective')}. Best: iteration {best.get('iteration')}, "
                  f"{best.get('optimizer')}, lr {best.get('learning_rate')}, alpha {_fmt(best.get('alpha'))}, "
                  f"gamma {_fmt(best.get('gamma'))}, score {_fmt(best.get('score'))}.", "",
                  str(report.get("search_note") or ""), "",
                  "| iteration | proposed by | optimizer | learning rate | alpha | gamma | score |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["hpo"]:
            lines.append(f"| {r['iteration']} | {r.get('proposed_by') or '-'} | {r['optimizer']} | {r['learning_rate']:g} | "
                         f"{r['alpha']:.3f} | {r['gamma']:.3f} | {r['score']:.4f} |")
        lines.append("")
    if report.get("model_versions"):
        lines += ["## Saved models", ""] + [f"- {k}: `{v}`" for k, v in report["model_versions"].items()] + [""]
    return "\n".join(lines)


def plot_curves(result: Any, out_dir: Path) -> list[str]:
    """One PNG per model: training loss and validation PR-AUC per epoch, every split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = dict.fromkeys(t.spec.name for t in result.trained if t.history)
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax2 = ax.twinx()
        for t in result.trained:
            if t.spec.name != name or not t.history:
                continue
            for key, axis, style in (("loss", ax, "-"), ("refit_loss", ax, ":"), ("val_pr_auc", ax2, "--")):
                if key in t.history:
                    values = np.asarray(t.history[key], dtype=float)
                    scored = np.flatnonzero(np.isfinite(values))  # validation may skip epochs (NaN there)
                    axis.plot(scored + 1, values[scored], style, label=f"{t.split} {key}")
            best = (t.training or {}).get("best_epoch")
            if best:
                ax2.axvline(best, color="grey", lw=0.8)
        prefix = "SYNTHETIC — " if result.synthetic else ""
        ax.set_title(f"{prefix}{name}: training curves")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax2.set_ylabel("validation PR-AUC")
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8)
        fig.tight_layout()
        target = out_dir / f"curves_{name}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(target.name)
    return written


def write_report(report: dict[str, Any], out_dir: str | Path, result: Any | None = None,
                 title: str = "Attention U-Net landslide inventory mapping") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result is not None:
        report["figures"] = plot_curves(result, out_dir)
    validate_report(report)  # the shape the dashboard reads (slidemap.report_schema)
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", markdown(report, title).encode())
    return out_dir
