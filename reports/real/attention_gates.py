"""What the attention gates of a saved detector do on a chip folder's seed-0 blocked test chips.

The attention U-Net and the plain U-Net score level on the real L4S chips (reports/real/unet_real_data.md);
this asks whether the gates learned anything at all. For every gate it prints the coefficient map's
mean and spread, its mean on landslide and on background cells (the chips' masks averaged down to the
gate's grid, a cell counting as landslide when most of it is), and the ROC-AUC of the coefficient
as a landslide score at that resolution (0.5: the gate ignores where landslides are).

    .venv/bin/python reports/real/attention_gates.py CHIP_DIR MODEL_DIR

Each chip is normalised as the model's card says (the same call ``detect`` makes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def main(chip_dir: Path, model_dir: Path) -> None:
    from slidemap.compute.maps.image_norm import normalise
    from slidemap.compute.models.runtime import configure_tensorflow
    from slidemap.training import unet_train
    from slidemap.training.chips import chips_from_folder
    from slidemap.training.unet import attention_maps

    configure_tensorflow()
    import keras

    card = json.loads((model_dir / "card.json").read_text())
    source = chips_from_folder(chip_dir)
    test = unet_train._test_part(source, "blocked", unet_train.preset("demo"))  # the one owner of the split
    x = np.stack([normalise(source.images[i], card["normalisation"]) for i in test])
    masks = source.masks[test]
    gates = attention_maps(keras.models.load_model(model_dir / "model.keras", compile=False))
    coeffs = gates.predict(x, batch_size=8, verbose=0)
    print(f"{len(test)} seed-0 test chips of {chip_dir.name}; model {model_dir.name}")
    print("| gate | grid | mean | sd | on landslide | on background | ROC-AUC as a landslide score |")
    print("|---|---|---|---|---|---|---|")
    for name, c in zip(gates.output_names, coeffs):
        c = c[..., 0]
        step = masks.shape[1] // c.shape[1]
        cells = masks.reshape(len(masks), c.shape[1], step, c.shape[2], step)
        valid = (cells != 255).all(axis=(2, 4))
        slide = (cells == 1).mean(axis=(2, 4)) > 0.5
        on, off = c[valid & slide], c[valid & ~slide]
        auc = roc_auc_score(np.r_[np.ones(len(on)), np.zeros(len(off))], np.r_[on, off]) if len(on) and len(off) else float("nan")
        print(f"| {name.removesuffix('_coeff')} | {c.shape[1]} x {c.shape[2]} | {c.mean():.3f} | {c.std():.3f} | "
              f"{on.mean():.3f} | {off.mean():.3f} | {auc:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
