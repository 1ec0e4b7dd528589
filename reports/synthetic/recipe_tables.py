"""The tables of recipe explorations on fresh SYNTHETIC regions, from the run reports beside them:

    .venv/bin/python reports/synthetic/recipe_tables.py weight-average   # detector_weight_average.md
    .venv/bin/python reports/synthetic/recipe_tables.py validate-every   # detector_validate_every.md
    .venv/bin/python reports/synthetic/recipe_tables.py scene-refit      # detector_scene_refit.md
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
NETWORK = "attention-unet-focal"


def runs(folder: str, pattern: str, name: str) -> Iterator[tuple[tuple[str, ...], dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """``(name groups, landslide areas, training block, test metrics)`` of each blocked run report."""
    for path in sorted((HERE / folder).glob(pattern)):
        groups = re.match(name, path.stem)
        assert groups is not None, path
        rep = json.loads(path.read_text())
        yield (groups.groups(), rep["splits"]["blocked"]["landslide_areas"],
               rep["model_details"][NETWORK]["blocked"]["training"], rep["models"][NETWORK]["blocked"])


def weight_average() -> None:
    rows = []
    for (seed, km, ema), areas, train, test in runs("detector-weight-average", "seed*-ema*.json",
                                                    r"seed(\d+)-(\d+)km-ema([\d.]+)"):
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


def validate_every() -> None:
    rows = []
    for (seed, km, every, old), areas, train, test in runs(
            "detector-validate-every", "seed*-every*.json", r"seed(\d+)-(\d+)km-every(\d)(-warmupcandidates)?$"):
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


def scene_refit() -> None:
    """One run per region gives both: the first fit's test figures are kept in the refit's record.
    ``seed*.json``: ``--refit`` given (the rule's evidence); ``check-seed*.json``: the demo preset's rule
    deciding, on regions drawn after it was set."""
    rows = []
    for (check, seed, km), areas, train, test in runs("detector-scene-refit", "*seed*.json",
                                                      r"(check-)?seed(\d+)-(\d+)km$"):
        refit = train.get("refit")
        first = refit["test_before_refit"] if refit else test
        rows.append({"region": f"{int(km):2d} km, seed {seed}", "km": int(km), "check": bool(check),
                     "landslides": f"{areas['train']} / {areas['validation']} / {areas['test']}",
                     "epochs": f"{train['epochs_run']} ({train['best_epoch']})",
                     "f1_first": first["f1"], "pr_first": first["pr_auc"],
                     "f1": test["f1"], "ci": test["skill"]["ci95"], "pr": test["pr_auc"],
                     "f1_kept_cut": refit["test_at_first_fit_threshold"]["f1"] if refit else float("nan"),
                     "cuts": f"{refit['first_fit_threshold']:.3f} -> {test['threshold']:.3f}" if refit else "no refit",
                     "seconds": f"{train['seconds']:.0f} + {refit['seconds']:.0f} (+{refit['seconds'] / train['seconds']:.0%})"
                     if refit else f"{train['seconds']:.0f}"})
    print("| region | refit | training / validation / test landslides | epochs run (best) | first fit: test F1 / PR-AUC "
          "| shipped: test F1 [95 % CI] / PR-AUC | refit at the first fit's cut: F1 | cut, first fit -> refit "
          "| training s, first fit + refit (the refit's share) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for check in (False, True):
        sel = sorted((r for r in rows if r["check"] == check), key=lambda r: (r["km"], r["region"]))
        how = "the preset's rule" if check else "`--refit`"
        for r in sel:
            print(f"| {r['region']} | {how} | {r['landslides']} | {r['epochs']} | {r['f1_first']:.3f} / {r['pr_first']:.3f} "
                  f"| **{r['f1']:.3f}** [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] / {r['pr']:.3f} | {r['f1_kept_cut']:.3f} "
                  f"| {r['cuts']} | {r['seconds']} |")
        if sel:
            print(f"| **mean of {len(sel)}** | {how} | | | {np.mean([r['f1_first'] for r in sel]):.3f} / "
                  f"{np.mean([r['pr_first'] for r in sel]):.3f} | **{np.mean([r['f1'] for r in sel]):.3f}** / "
                  f"{np.mean([r['pr'] for r in sel]):.3f} | | | |")


TABLES: dict[str, Callable[[], None]] = {"weight-average": weight_average, "validate-every": validate_every,
                                         "scene-refit": scene_refit}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TABLES:
        raise SystemExit(__doc__)
    TABLES[sys.argv[1]]()
