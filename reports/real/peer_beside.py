"""Train the plain U-Net peer (BCE) on a chip folder's blocked split, with the demo preset's recipe, and
set it beside a detector already trained on the same split, paired over the same test chips.

For when the attention U-Net of a recipe change has been trained on its own (one network of the
``--baselines`` run, at a third of its cost) and its peer is wanted on the very same chips.

    .venv/bin/python reports/real/peer_beside.py CHIP_DIR MODEL_DIR [OUT.md] [--seed N]

MODEL_DIR is the saved detector (its card gives the threshold and the view count it was scored with);
the peer gets the preset's rules for a chip folder (early stopping, refit, views chosen on validation).
--seed is the split's seed, as `slidemap train unet ... --set seed=N` gave the detector (default 0, the
preset's); it also seeds the peer's training.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(chip_dir: Path, model_dir: Path, out: Path | None, seed: int = 0) -> None:
    from slidemap.compute.models.runtime import configure_tensorflow

    configure_tensorflow()
    import keras

    from slidemap.compute.models.views import ViewAveraged
    from slidemap.training import unet_train
    from slidemap.training.chips import chips_from_folder
    from slidemap.training.search import HyperParams
    from slidemap.training.seg_metrics import paired_f1_difference, segmentation_metrics

    source = chips_from_folder(chip_dir)
    if (model_dir / "card.json").is_file():  # when it is already there, check it before the peer's training
        _same_chips(model_dir, chip_dir, source.fingerprint(), seed)
    cfg = unet_train.preset("demo", seed=seed).for_source(True)
    data = unet_train._split_data(source, "blocked", cfg)
    spec = next(s for s in unet_train.model_specs(replace(cfg, baselines=True)) if s.name == "unet-bce")
    hp = HyperParams(cfg.optimizer, cfg.learning_rate, cfg.alpha, cfg.gamma)
    # the peer trains first, so that it can run beside the detector's own training (MODEL_DIR is read
    # once the peer is done, and waited for while its card is not there)
    peer = unet_train.train_and_evaluate(data, spec, hp, cfg, progress=False)
    while not (model_dir / "card.json").is_file():  # the detector beside it is still training
        print(f"waiting for {model_dir / 'card.json'}", file=sys.stderr, flush=True)
        time.sleep(60)
    card = _same_chips(model_dir, chip_dir, source.fingerprint(), seed)
    model = keras.saving.load_model(model_dir / card.get("weights", "model.keras"), compile=False)
    views = int(card.get("inference", {}).get("views", 1))
    test = data.predict_test(ViewAveraged(model, views))
    saved = segmentation_metrics(test.labels, test.prob, card["threshold"])
    diff = paired_f1_difference(peer.test_counts, test.counts_by_unit(card["threshold"]), seed=cfg.seed)
    keys = ("f1", "precision", "recall", "miou", "pr_auc")
    result = {
        "chips": str(chip_dir), "detector": str(model_dir), "split": f"blocked, seed {seed}" + (" (the demo preset's)" if seed == 0 else ""),
        "detector_metrics": {k: saved[k] for k in keys}, "detector_views": views,
        "peer": spec.label, "peer_metrics": {k: peer.metrics[k] for k in keys}, "peer_skill": peer.skill,
        "peer_views": peer.views, "peer_training": peer.training,
        "peer_minus_detector_f1": diff,
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if out:  # Markdown, not JSON: every JSON document under reports/real is a training report
        out.write_text(note(result, text))


def _same_chips(model_dir: Path, chip_dir: Path, fingerprint: str, seed: int) -> dict:
    card = json.loads((model_dir / "card.json").read_text())
    if card["training_data"]["fingerprint"] != fingerprint:
        raise SystemExit(f"{model_dir}: trained on other chips than {chip_dir}")
    recorded = (card["training_data"].get("split_summary") or {}).get("seed")  # cards before 2026-12-05 lack it
    if recorded is not None and int(recorded) != seed:
        raise SystemExit(f"{model_dir}: trained on the split of seed {recorded}; give --seed {recorded}")
    return card


def note(result: dict, text: str) -> str:
    d, p, diff = result["detector_metrics"], result["peer_metrics"], result["peer_minus_detector_f1"]
    low, high = diff["ci95"]
    return (f"# {result['peer']} beside `{result['detector']}`\n\n"
            f"Same chips ({result['chips']}), same split ({result['split']}).\n\n"
            "| model | F1 | precision | recall | PR-AUC | views |\n|---|---|---|---|---|---|\n"
            f"| detector | {d['f1']:.3f} | {d['precision']:.3f} | {d['recall']:.3f} | {d['pr_auc']:.3f} | {result['detector_views']} |\n"
            f"| {result['peer']} | {p['f1']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | {p['pr_auc']:.3f} | {result['peer_views']} |\n\n"
            f"Peer F1 minus the detector's: {diff['difference']:+.3f} [{low:+.3f}, {high:+.3f}] ({diff['method']}).\n\n"
            f"```json\n{text}\n```\n")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chip_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (default 0, the preset's)")
    args = parser.parse_args()
    main(args.chip_dir, args.model_dir, args.out, args.seed)
