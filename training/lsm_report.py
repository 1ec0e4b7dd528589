"""Susceptibility report: JSON, Markdown (the paper's Tables 6 and 7 per split), figures, Jenks classes.

Written to ``REGION/reports/lsm/<run_id>/``: ``report.json``, ``report.md``, ``roc_pr_<split>.png``
(ROC and PR curves of every model on that split's test samples) and ``rates_<split>.png``
(success-rate curves: training landslides; prediction-rate curves: test landslides; both against the
share of the region's area ranked by susceptibility). Everything derived from synthetic data says
SYNTHETIC in its title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.raster_io import atomic_path, write_bytes_atomic, write_json_atomic
from slidemap.report_schema import validate_report

def _network_epochs(report: dict[str, Any]) -> list[str]:
    """Each network's best epoch per split (and per CV fold): with the centre-linear start, 0 means
    no epoch beat the logistic regression it started from, so on that split it *is* that regression."""
    rows = []
    for name, per in report["models"].items():
        epochs = {s: per[s]["best_epochs"] for s in ("random", "blocked") if isinstance(per.get(s), dict)
                  and per[s].get("best_epochs")}
        if isinstance(per.get("cv"), dict) and per["cv"].get("best_epochs"):
            epochs["CV folds"] = per["cv"]["best_epochs"]
        if epochs:
            kept = sum(e == 0 for v in epochs.values() for e in v)
            total = sum(len(v) for v in epochs.values())
            rows.append(f"| {name} | " + "; ".join(f"{s}: {', '.join(map(str, v))}" for s, v in epochs.items())
                        + f" | {kept} of {total} |")
    if not rows:
        return []
    start = (report.get("config") or {}).get("centre_linear")
    head = ("Best epoch of each network (early stopping on validation ROC-AUC). The networks start at the "
            "logistic regression of their training part (centre-linear path); best epoch 0 means no epoch "
            "improved on it, so there the network answers as that logistic regression." if start else
            "Best epoch of each network (early stopping on validation ROC-AUC).")
    return ["## Networks: best epochs", "", head, "", "| network | best epochs | kept the start |", "|---|---|---|",
            *rows, ""]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _p(value: float | None) -> str:
    """A p-value as people read it: 0.003, 2.1e-05, < 1e-10."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if value < 1e-10:
        return "< 1e-10"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def planted_rule(region_dir: str | Path) -> dict[str, Any] | None:
    """The SYNTHETIC demo region's landslide rule (its ``truth.json``), for the report."""
    import json

    path = Path(region_dir) / "truth.json"
    if not path.is_file():
        return None
    try:
        rule = json.loads(path.read_text()).get("rule") or {}
    except (OSError, ValueError):
        return None
    keys = ("name", "formula", "soil_depth", "context_term", "wetness", "cohesion", "trigger")
    return {k: rule[k] for k in keys if k in rule}


def single_factor_auc(data: Any, samples: Any) -> dict[str, float]:
    """ROC-AUC of each factor alone (max(AUC, 1 - AUC), physical values) over all samples: a factor
    near 1.0 on its own is a leak to look for (e.g. NDVI from a post-event scene)."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    y = samples.y
    if len(np.unique(y)) < 2:
        return out
    for i, name in enumerate(data.factor_names):
        values = data.stack[i][samples.rows, samples.cols]
        ok = np.isfinite(values)
        if ok.sum() < 10 or len(np.unique(y[ok])) < 2:
            continue
        auc = float(roc_auc_score(y[ok], values[ok]))
        out[name] = round(max(auc, 1.0 - auc), 4)
    return out


METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "threshold",
           "success_rate_auc", "prediction_rate_auc")


def _metric_table(report: dict[str, Any], key: str) -> list[str]:
    lines = [
        "| model | accuracy | precision | recall | F1 | ROC-AUC | PR-AUC | threshold | success-rate AUC | prediction-rate AUC | train / val |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, per in report["models"].items():
        m = per.get(key)
        if not m:
            continue
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k, float("nan"))) for k in METRICS)
                     + f" | {m.get('n_train', '')} / {m.get('n_val', '')} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    tag = "SYNTHETIC — " if report.get("synthetic") else ""
    data = report["data"]
    lines = [
        f"# {tag}Landslide susceptibility report ({report['run_id']})",
        "",
        f"Region `{data['region']}`; factors ({len(data['factor_names'])}): {', '.join(data['factor_names'])}; "
        f"model input channels: {len(data['channels'])} (aspect as sine, cosine and a flat flag; classes one-hot), "
        f"of which {len(data['window_channels'])} in the windows.",
        f"Samples: {data['samples']} ({data['positives']} landslide; at most {data['per_polygon_cap']} cells per "
        f"polygon), sources {data['sources']}. Negatives (`{data['negatives']}`): {data['negatives_rule']}.",
        f"Preset `{report['preset']}`. Threshold: {report['threshold_rule']}.",
    ]
    if data.get("imagery_factors_from"):
        lines.append(f"Imagery-derived factors (NDVI) from: {data['imagery_factors_from']}.")
    lines.append("")
    rule = data.get("planted_rule")
    if rule:
        lines += ["## The planted rule (SYNTHETIC demo region)", ""]
        lines += [f"- {k}: {v}" for k, v in rule.items()]
        lines.append("")
    lines += [
        "## Ranking",
        "",
        f"By {report['ranking_rule']}. Default model of the region: "
        f"**{report.get('default_model') or 'none (no model has skill)'}**.",
        "",
        "| rank | model | ROC-AUC | 95 % interval | skill | how |",
        "|---|---|---|---|---|---|",
    ]
    for e in report["ranking"]:
        lo, hi = e["ci95"]
        lines.append(f"| {e['rank']} | {e['model']} | {e['value']:.3f} | [{lo:.3f}, {hi:.3f}] | "
                     f"{'yes' if e['has_skill'] else '**NO SKILL**'} | {e['method']} |")
    lines.append("")
    lines += _network_epochs(report)
    for split, info in data["splits"].items():
        extra = ""
        if split == "blocked":
            extra = (f"; blocks of {info.get('block_cells')} cells ({info.get('n_test_blocks')} of "
                     f"{info.get('n_blocks')} to test), buffer {info.get('buffer_cells')} cells "
                     f"({info.get('dropped_in_buffer')} training samples dropped in it)")
            if "variogram" in info:
                extra += f"; variogram range {info['variogram']['range_cells']} cells"
        lines += [f"## Table 6 — {split} split, {data['negatives']} negatives (train {info['train']}, "
                  f"test {info['test']}){extra}", ""]
        lines += _metric_table(report, split)
        lines += ["", f"![ROC and PR, {split}](roc_pr_{split}.png) ![rates, {split}](rates_{split}.png)", ""]
    for neg, info in data.get("samplings", {}).items():
        if neg == data["negatives"]:
            continue
        left_out = [m for m, per in report["models"].items() if f"{neg}_blocked" not in per]
        lines += [f"## Beside it: negatives from `{neg}` ({info['rule']})", "",
                  "The same models trained and tested with these easier negatives; the gap to the tables "
                  "above is how much such sampling flatters a model."
                  + (f" Not run in this preset: {', '.join(left_out)} (`--set anywhere_networks=true`)."
                     if left_out else ""), ""]
        for split in ("random", "blocked"):
            lines += [f"### {split} split", ""] + _metric_table(report, f"{neg}_{split}") + [""]
    if data.get("cv"):
        cv = data["cv"]
        lines += [f"## Spatial cross-validation ({cv['folds']} folds x {cv['repeats']} repeats; mean train "
                  f"{cv['mean_train']:.0f}, test {cv['mean_test']:.0f} samples per fold)", "",
                  "| model | mean ROC-AUC | 95 % interval (corrected resampled t) |", "|---|---|---|"]
        for name, per in report["models"].items():
            if "cv" in per:
                lo, hi = per["cv"]["ci95"]
                lines.append(f"| {name} | {per['cv']['roc_auc']:.3f} | [{lo:.3f}, {hi:.3f}] |")
        lines.append("")
    if report.get("fast_forms"):
        lines += ["## Fast forms (dense networks distilled from the window models)", "",
                  "| window model | Pearson r (cells not trained on) | ROC-AUC window / fast (blocked test) | "
                  "cells/s window | cells/s fast | speed-up | tiles from |",
                  "|---|---|---|---|---|---|---|"]
        for name, ff in report["fast_forms"].items():
            lines.append(f"| {name} | {ff['pearson_r']:.3f} ({ff['agreement_cells']} cells) | {ff['auc_window']:.3f} / "
                         f"{ff['auc_fast']:.3f} | {ff['cells_per_s_window']:.0f} | {ff['cells_per_s_fast']:.0f} | "
                         f"{ff['speedup']:.0f}x | {'fast form' if ff['use'] else 'window path'} |")
        lines += ["", "Cells per second measured in this process, start-up excluded.", ""]
    if report.get("mcnemar"):
        for split, tests in report["mcnemar"].items():
            lines += [
                f"## Table 7 — McNemar, multiscale vs each model ({split} split)",
                "",
                "| other model | chi2 | p | both right | only multiscale right | only other right | both wrong | test |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for other, t in tests.items():
                (a, b), (c, d) = t["table"]
                chi2 = "" if t.get("chi2") is None else f"{t['chi2']:.3f}"
                lines.append(f"| {other} | {chi2} | {_p(t['p'])} | {a} | {b} | {c} | {d} | {t.get('method', '')} |")
            lines.append("")
    sfa = data.get("single_factor_auc")
    if sfa:
        lines += ["## Each factor alone (ROC-AUC over all samples, either direction)", "",
                  " ".join(f"{k} {v:.3f};" for k, v in sorted(sfa.items(), key=lambda kv: -kv[1])), ""]
    cls = report.get("classes")
    if cls:
        lines += [
            f"## Susceptibility classes ({cls.get('method')}, model `{cls.get('model')}`)",
            "",
            f"Estimated from {cls.get('estimated_from')}.",
            "",
            "| class | upper break | area share | landslide share |",
            "|---|---|---|---|",
        ]
        for i, name in enumerate(cls["names"]):
            ls = cls.get("landslide_share", [float("nan")] * len(cls["names"]))[i]
            lines.append(f"| {name} | {cls['breaks'][i]:.4f} | {cls['area_share'][i]:.3f} | {ls:.3f} |")
        lines.append("")
    lines += [f"Model versions: {report.get('model_versions')}", "", f"Timings (s): {report.get('timings_s')}", ""]
    return "\n".join(lines)


def _plot(path: Path, fn) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = fn(plt)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(
    report: dict[str, Any],
    curve_data: dict[str, dict[str, dict[str, np.ndarray]]],
    rates: dict[str, dict[str, Any]],
    out_dir: str | Path,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "SYNTHETIC — " if report.get("synthetic") else ""
    for split, per_model in curve_data.items():

        def roc_pr(plt, split=split, per_model=per_model):
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
            for name, c in per_model.items():
                if not report["models"][name].get(split):
                    continue
                auc = report["models"][name][split]["roc_auc"]
                ap = report["models"][name][split]["pr_auc"]
                ax1.plot(c["fpr"], c["tpr"], label=f"{name} ({auc:.3f})")
                ax2.plot(c["recall"], c["precision"], label=f"{name} ({ap:.3f})")
            ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUC)")
            ax2.set(xlabel="recall", ylabel="precision", title="precision-recall (AP)")
            for ax in (ax1, ax2):
                ax.legend(fontsize=7)
            fig.suptitle(f"{tag}susceptibility, {split} split, test samples")
            fig.tight_layout()
            return fig

        _plot(out_dir / f"roc_pr_{split}.png", roc_pr)

        def rate_plot(plt, split=split):
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
            for name, r in rates[split].items():
                ax1.plot(r["success"]["area"], r["success"]["landslides"], label=f"{name} ({r['success']['auc']:.3f})")
                ax2.plot(r["prediction"]["area"], r["prediction"]["landslides"], label=f"{name} ({r['prediction']['auc']:.3f})")
            for ax, title in ((ax1, "success rate (training landslides)"), (ax2, "prediction rate (test landslides)")):
                ax.plot([0, 1], [0, 1], "k:", lw=0.8)
                ax.set(xlabel="share of area (most susceptible first)", ylabel="share of landslides", title=title)
                ax.legend(fontsize=7)
            fig.suptitle(f"{tag}success- and prediction-rate curves, {split} split")
            fig.tight_layout()
            return fig

        _plot(out_dir / f"rates_{split}.png", rate_plot)
    report = {**report, "rate_curves": rates}
    validate_report(report)  # the shape the dashboard reads (slidemap.report_schema)
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", render_markdown(report).encode())
    return out_dir
