"""The table of ``detector_weight_average.md`` from the run reports in ``detector-weight-average/``.

    .venv/bin/python reports/synthetic/weight_average_table.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "detector-weight-average"


def main() -> None:
    rows = []
    for path in sorted(HERE.glob("seed*-ema*.json")):
        seed, km, ema = re.match(r"seed(\d+)-(\d+)km-ema([\d.]+)", path.stem).groups()
        rep = json.loads(path.read_text())
        areas = rep["splits"]["blocked"]["landslide_areas"]
        train = rep["model_details"]["attention-unet-focal"]["blocked"]["training"]
        test = rep["models"]["attention-unet-focal"]["blocked"]
        by_views = [v for v in train["views"]["validation_pr_auc"].values() if v is not None]
        rows.append({"region": f"{km} km, seed {seed}", "ema": float(ema), "landslides": f"{areas['train']} / {areas['test']}",
                     "epochs": f"{train['epochs_run']} ({train['best_epoch']})",
                     "val": train["best_validation"]["val_pr_auc"], "val_views": max(by_views),
                     "views": train["views"]["chosen"], "f1": test["f1"], "pr_auc": test["pr_auc"]})
    print("| region | weight average (epochs) | training / test landslides | epochs run (best) | best val PR-AUC "
          "| val PR-AUC with views (count) | test F1 | test PR-AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["region"], r["ema"])):
        print(f"| {r['region']} | {r['ema']:g} | {r['landslides']} | {r['epochs']} | {r['val']:.3f} "
              f"| {r['val_views']:.3f} ({r['views']}) | {r['f1']:.3f} | {r['pr_auc']:.3f} |")
    for ema in sorted({r["ema"] for r in rows}):
        sel = [r for r in rows if r["ema"] == ema]
        print(f"| **mean of {len(sel)}** | {ema:g} | | | {np.mean([r['val'] for r in sel]):.3f} "
              f"| {np.mean([r['val_views'] for r in sel]):.3f} | {np.mean([r['f1'] for r in sel]):.3f} "
              f"| {np.mean([r['pr_auc'] for r in sel]):.3f} |")


if __name__ == "__main__":
    main()
