"""Score saved detectors on their own blocked split with 1, 2, 4 and 8 averaged views.

The evidence behind the demo preset's ``views``: a trained model is re-scored, without retraining, on
the validation and test parts of the split it was trained on (same seed, chip and buffer as the
preset), with the threshold chosen on the validation part for each view count. The choice is read
from the validation columns; the test columns are for the record.

    .venv/bin/python reports/synthetic/score_views.py REGION_OR_CHIP_FOLDER [MODEL_DIR] [...]

A region folder's detector defaults to the newest under ``models/unet``; a chip folder needs MODEL_DIR.
Arguments come in pairs only when a MODEL_DIR follows (``REGION MODEL REGION MODEL`` or ``REGION REGION``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


from slidemap.compute.models.runtime import configure_tensorflow
from slidemap.compute.models.views import VIEWS, ViewAveraged


def _pairs(args: list[str]) -> list[tuple[Path, Path]]:
    out, i = [], 0
    while i < len(args):
        source = Path(args[i])
        if i + 1 < len(args) and (Path(args[i + 1]) / "card.json").exists():
            out.append((source, Path(args[i + 1])))
            i += 2
            continue
        models = sorted((source / "models" / "unet").glob("*/card.json"), key=lambda p: p.stat().st_mtime)
        if not models:
            raise SystemExit(f"{source}: no detector under models/unet; name one after it")
        out.append((source, models[-1].parent))
        i += 1
    return out


def score(source_path: Path, model_dir: Path) -> list[dict[str, float]]:
    configure_tensorflow()
    import keras

    from slidemap.training import unet_train
    from slidemap.training.chips import chips_from_folder
    from slidemap.training.scene import scene_from_region
    from slidemap.training.seg_metrics import choose_threshold, segmentation_metrics

    card = json.loads((model_dir / "card.json").read_text())
    model = keras.saving.load_model(model_dir / card.get("weights", "model.keras"), compile=False)
    region = (source_path / "build").is_dir()
    source = scene_from_region(source_path) if region else chips_from_folder(source_path)
    cfg = unet_train.preset("demo").for_source(not region)  # the preset's seed-0 split, as the models were trained
    data = unet_train._split_data(source, "blocked", cfg)
    rows = []
    for views in VIEWS:
        scorer = ViewAveraged(model, views)
        val, test = data.predict_val(scorer), data.predict_test(scorer)
        threshold = choose_threshold(val.labels, val.prob, plateau=1.0)  # the rule of its report's date
        v, t = segmentation_metrics(val.labels, val.prob, threshold), segmentation_metrics(test.labels, test.prob, threshold)
        rows.append({"views": views, "val_pr_auc": v["pr_auc"], "val_f1": v["f1"], "threshold": threshold,
                     "test_f1": t["f1"], "test_pr_auc": t["pr_auc"]})
    return rows


def main(args: list[str]) -> None:
    print("| data | model | views | validation PR-AUC | validation F1 | threshold | test F1 | test PR-AUC |")
    print("|---|---|---|---|---|---|---|---|")
    for source, model_dir in _pairs(args):
        for r in score(source, model_dir):
            print(f"| {source.name} | {model_dir.name} | {r['views']} | {r['val_pr_auc']:.3f} | {r['val_f1']:.3f} | "
                  f"{r['threshold']:.3f} | {r['test_f1']:.3f} | {r['test_pr_auc']:.3f} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
