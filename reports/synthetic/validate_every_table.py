"""The table of ``detector_validate_every.md`` from the run reports in ``detector-validate-every/``.

    .venv/bin/python reports/synthetic/validate_every_table.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "detector-validate-every"


def main() -> None:
    rows = []
    for path in sorted(HERE.glob("seed*-every*.json")):
        seed, km, every, old = re.match(r"seed(\d+)-(\d+)km-every(\d)(-warmupcandidates)?$", path.stem).groups()
        rep = json.loads(path.read_text())
        areas = rep["splits"]["blocked"]["landslide_areas"]
        train = rep["model_details"]["attention-unet-focal"]["blocked"]["training"]
        test = rep["models"]["attention-unet-focal"]["blocked"]
        rows.append({"region": f"{int(km):2d} km, seed {seed}", "every": int(every),
                     "rule": "warm-up epochs compete (before)" if old else "from min_epochs",
                     "landslides": f"{areas['train']} / {areas['validation']} / {areas['test']}",
                     "epochs": f"{train['epochs_run']} ({train['best_epoch']})", "seconds": train["seconds"],
                     "val": train["best_validation"]["val_pr_auc"], "f1": test["f1"], "pr_auc": test["pr_auc"],
                     "paired": not old})
    print("| region | validate every | best-epoch candidates | training / validation / test landslides "
          "| epochs run (best) | best val PR-AUC | test F1 | test PR-AUC | training s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["region"], r["rule"], r["every"])):
        print(f"| {r['region']} | {r['every']} | {r['rule']} | {r['landslides']} | {r['epochs']} | {r['val']:.3f} "
              f"| {r['f1']:.3f} | {r['pr_auc']:.3f} | {r['seconds']:.0f} |")
    paired = [r for r in rows if r["paired"]]
    for every in sorted({r["every"] for r in paired}):
        sel = [r for r in paired if r["every"] == every]
        print(f"| **mean of {len(sel)}** | {every} | from min_epochs | | | {np.mean([r['val'] for r in sel]):.3f} "
              f"| {np.mean([r['f1'] for r in sel]):.3f} | {np.mean([r['pr_auc'] for r in sel]):.3f} "
              f"| {np.mean([r['seconds'] for r in sel]):.0f} |")


if __name__ == "__main__":
    main()
