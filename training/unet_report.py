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
import secrets
from pathlib import Path
from typing import Any

from slidemap.compute.io import atomic_path, write_bytes_atomic, write_json_atomic
from slidemap.training.seg_metrics import METRIC_KEYS

METRIC_NOTE = (
    "Pixel metrics pooled over all valid pixels of the test chips; precision, recall, F1 and IoU "
    "are those of the landslide class; mIoU is the mean of the landslide IoU and the background IoU; "
    "PR-AUC is the average precision of the landslide probabilities; the threshold maximises landslide "
    "F1 on a validation part carved from the training chips and is then applied unchanged to the test chips."
)


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def _m(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {k: metrics.get(k) for k in METRIC_KEYS}
    for extra in ("iou_background", "pixels", "landslide_pixels", "confusion"):
        if extra in metrics:
            out[extra] = metrics[extra]
    if "validation" in metrics:
        out["validation"] = {k: metrics["validation"].get(k) for k in ("f1", "miou", "pr_auc")}
    return out


def build_report(result: Any, model_versions: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    """Report dict from a :class:`~slidemap.training.unet_train.RunResult`."""
    models: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    for t in result.trained:
        models.setdefault(t.spec.name, {})[t.split] = _m(t.metrics)
        details.setdefault(t.spec.name, {"label": t.spec.label, "loss": t.spec.loss})[t.split] = {
            "hyperparameters": t.hyperparameters,
            "chips": {"train": t.n_train, "validation": t.n_val, "test": t.n_test},
            "seconds": round(t.seconds, 1),
        }
    return {
        "kind": "unet",
        "synthetic": bool(result.chips.synthetic),
        "data": data,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_versions": model_versions,
        "config": result.config.to_dict(),
        "splits": result.splits,
        "hpo": [
            {k: r[k] for k in ("iteration", "optimizer", "learning_rate", "alpha", "gamma", "score")}
            for r in result.hpo
        ],
        "hpo_objective": "validation PR-AUC (blocked validation part of the chips that are training chips in every split)",
        "best": result.best,
        "models": models,
        "model_details": details,
        "primary_model": result.primary.spec.name,
        "metric_definitions": METRIC_NOTE,
    }


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
    lines += [f"- data: `{data.get('path', '')}` ({data.get('chips', '?')} chips of {data.get('chip', '?')} px, "
              f"bands {', '.join(data.get('bands', []))})", f"- created: {report.get('created')}",
              f"- preset: {report.get('config', {}).get('preset')}",
              f"- splits: {report.get('splits')}", ""]
    lines += ["## Test-split metrics (like the paper's Table 4)", "", METRIC_NOTE, ""]
    lines += ["| model | split | accuracy | precision | recall | F1 | mIoU | PR-AUC | threshold |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, per_split in report["models"].items():
        for split_name in ("random", "blocked"):
            m = per_split.get(split_name)
            if not m:
                continue
            lines.append(
                f"| {name} | {split_name} | " + " | ".join(_fmt(m.get(k)) for k in
                                                            ("accuracy", "precision", "recall", "f1", "miou", "pr_auc", "threshold")) + " |"
            )
    lines.append("")
    details = report.get("model_details", {})
    if details:
        lines += ["Models:", ""]
        for name, d in details.items():
            lines.append(f"- `{name}`: {d.get('label', '')}")
        lines.append("")
    if report.get("hpo"):
        best = report.get("best", {})
        lines += ["## Bayesian search (GP surrogate + expected improvement, scikit-optimize), like Table 3", "",
                  f"Objective: {report.get('hpo_objective')}. Best: iteration {best.get('iteration')}, "
                  f"{best.get('optimizer')}, lr {best.get('learning_rate')}, alpha {_fmt(best.get('alpha'))}, "
                  f"gamma {_fmt(best.get('gamma'))}, score {_fmt(best.get('score'))}.", "",
                  "| iteration | optimizer | learning rate | alpha | gamma | score |", "|---|---|---|---|---|---|"]
        for r in report["hpo"]:
            lines.append(f"| {r['iteration']} | {r['optimizer']} | {r['learning_rate']:g} | {r['alpha']:.3f} | "
                         f"{r['gamma']:.3f} | {r['score']:.4f} |")
        lines.append("")
    if report.get("model_versions"):
        lines += ["## Saved models", ""] + [f"- {k}: `{v}`" for k, v in report["model_versions"].items()] + [""]
    return "\n".join(lines)


def plot_curves(result: Any, out_dir: Path) -> list[str]:
    """One PNG per model: training and validation loss per epoch, both splits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = dict.fromkeys(t.spec.name for t in result.trained if t.history)
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in result.trained:
            if t.spec.name != name or not t.history:
                continue
            for key, style in (("loss", "-"), ("val_loss", "--")):
                if key in t.history:
                    ax.plot(range(1, len(t.history[key]) + 1), t.history[key], style, label=f"{t.split} {key}")
        prefix = "SYNTHETIC — " if result.chips.synthetic else ""
        ax.set_title(f"{prefix}{name}: training curves")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend()
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
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", markdown(report, title).encode())
    return out_dir
