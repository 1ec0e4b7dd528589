"""Exploratory: rules for a detector's threshold, compared on saved demo-preset U-Nets (no rule changed).

Each rule is chosen on the validation part only; the table gives the blocked test F1 each would
have given (``detector_threshold_rules.md``). The split is rebuilt as ``train unet`` builds it
(``unet_train._split_data`` with the demo preset), the probabilities averaged over the card's views.

    .venv/bin/python reports/synthetic/threshold_rules.py predict REGION_DIR MODEL_DIR NAME   # -> $THR_CACHE/NAME.npz
    .venv/bin/python reports/synthetic/threshold_rules.py analyse                             # the table

``THR_CACHE`` defaults to /tmp/thr/cache; NAME ends in ``-<KM>km`` (the table groups by size).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("THR_CACHE", "/tmp/thr/cache"))


def predict(region, model_dir, name):
    import keras
    from slidemap.compute.models.views import ViewAveraged
    from slidemap.training import unet_train
    from slidemap.training.scene import scene_from_region
    from slidemap.training.seg_metrics import segmentation_metrics
    card = json.loads((Path(model_dir) / "card.json").read_text())
    cfg = unet_train.preset("demo")
    scene = scene_from_region(region, card["bands"])
    data = unet_train._split_data(scene, "blocked", cfg)
    model = keras.models.load_model(Path(model_dir) / "model.keras", compile=False)
    views = int(card.get("inference", {}).get("views", 1))
    vm = ViewAveraged(model, views)
    val = data.predict_val(vm)
    test = data.predict_test(vm)
    thr = card["threshold"]
    m = segmentation_metrics(test.labels, test.prob, thr)
    print(name, "views", views, "card thr", thr, "card test F1", card["metrics"]["blocked"]["f1"],
          "reproduced", round(m["f1"], 4), "summary", data.summary.get("landslide_pixels"), flush=True)
    np.savez_compressed(CACHE / f"{name}.npz", vy=val.labels, vp=val.prob, ty=test.labels, tp=test.prob,
                        card_thr=thr, card_f1=card["metrics"]["blocked"]["f1"], views=views)


def f1_at(y, p, t):
    pred = p >= t
    tp = np.count_nonzero(pred & (y == 1)); fp = np.count_nonzero(pred & (y == 0)); fn = np.count_nonzero(~pred & (y == 1))
    return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0


def exact_curve(y, p):
    from sklearn.metrics import precision_recall_curve
    pr, rc, th = precision_recall_curve(y, p.astype(np.float64))
    f1 = np.where(pr + rc > 0, 2 * pr * rc / np.maximum(pr + rc, 1e-12), 0)[:-1]
    return th, f1


def rules(vy, vp):
    from slidemap.training.seg_metrics import choose_threshold  # a and b are the training code's own rule

    th, f1 = exact_curve(vy, vp)
    out = {"a_argmax": choose_threshold(vy, vp, plateau=1.0)}
    for frac in (0.95, 0.90):
        out[f"b_plateau{int(frac*100)}"] = choose_threshold(vy, vp, plateau=frac)
    k = int(vy.sum())  # predicted positives = true positives count: the k-th largest probability
    out["c_prevalence"] = float(np.sort(vp)[::-1][k - 1])
    out["d_fixed0.5"] = 0.5
    grid = np.linspace(0, 1, 101)
    gf = np.array([f1_at(vy, vp, t) for t in grid])
    sm = np.convolve(gf, np.ones(5), "same") / np.convolve(np.ones_like(gf), np.ones(5), "same")
    out["e_smooth5"] = float(grid[np.argmax(sm)])
    return out, float(f1.max())


def analyse():
    from sklearn.metrics import average_precision_score
    rows = []
    for f in sorted(CACHE.glob("*.npz")):
        d = np.load(f)
        vy, vp, ty, tp = d["vy"], d["vp"].astype(np.float64), d["ty"], d["tp"].astype(np.float64)
        r, vmax = rules(vy, vp)
        res = {k: (t, f1_at(ty, tp, t)) for k, t in r.items()}
        tth, tf1 = exact_curve(ty, tp)
        rows.append(dict(name=f.stem, val_px=int(vy.sum()), test_px=int(ty.sum()), val_f1max=vmax,
                         pr_auc=float(average_precision_score(ty, tp)), oracle=(float(tth[np.argmax(tf1)]), float(tf1.max())),
                         card=(float(d["card_thr"]), float(d["card_f1"])), res=res))
    keys = list(rows[0]["res"])
    print("| region | val px | test px | val F1max | test PR-AUC | " + " | ".join(keys) + " | oracle |")
    print("|" + "---|" * (6 + len(keys)))
    for r in rows:
        cells = [f"{r['res'][k][0]:.3f} / **{r['res'][k][1]:.3f}**" for k in keys]
        print(f"| {r['name']} | {r['val_px']} | {r['test_px']} | {r['val_f1max']:.3f} | {r['pr_auc']:.3f} | " + " | ".join(cells)
              + f" | {r['oracle'][0]:.3f} / {r['oracle'][1]:.3f} |")
    size = lambda n: int(n.split("-")[-1].replace("km", ""))
    for label, sel in (("all", rows), ("<=6 km", [r for r in rows if size(r["name"]) <= 6]),
                       (">6 km", [r for r in rows if size(r["name"]) > 6])):
        if not sel:
            continue
        means = [np.mean([r["res"][k][1] for r in sel]) for k in keys] + [np.mean([r["oracle"][1] for r in sel])]
        print(f"| mean {label} (n={len(sel)}) | | | | | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    (CACHE.parent / "results.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(r["name"], "card", r["card"], "reproduced(a)", r["res"]["a_argmax"])


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("predict", "analyse"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "predict":
        CACHE.mkdir(parents=True, exist_ok=True)
        predict(*sys.argv[2:5])
    else:
        analyse()
