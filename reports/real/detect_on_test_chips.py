"""Score ``slidemap detect`` on a chip folder's blocked test chips with a saved detector.

Checks that the chip-folder path of ``detect`` (per-chip normalisation, the card's threshold and
views, the 0/255 masks it writes) gives the figure training reported on the same chips.

    .venv/bin/python reports/real/detect_on_test_chips.py CHIP_DIR MODEL_DIR

Prints the pooled landslide F1 of the ``--mask`` output against the chips' own masks. The split's seed
is the card's (``training_data.split_summary.seed``; 0, the preset's, for cards made before it was recorded).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main(chip_dir: Path, model_dir: Path) -> None:
    from slidemap.training import unet_train
    from slidemap.training.chips import chips_from_folder

    source = chips_from_folder(chip_dir)
    card = json.loads((model_dir / "card.json").read_text())
    seed = int((card["training_data"].get("split_summary") or {}).get("seed", 0))
    test = unet_train._test_part(source, "blocked", unet_train.preset("demo", seed=seed))  # the one owner of the split
    names = [source.names[i] for i in test]
    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "images", Path(tmp) / "out"
        images.mkdir()
        for name in names:
            shutil.copy(chip_dir / "images" / name, images / name)
        subprocess.run([str(Path(sys.executable).with_name("slidemap")), "detect", str(model_dir), str(images), str(out),
                        "--mask", "-q"], check=True, stdout=subprocess.DEVNULL)
        tp = fp = fn = 0
        for name in names:
            truth = np.asarray(Image.open(chip_dir / "masks" / name.replace("image", "mask")))[..., 0] > 127
            found = np.asarray(Image.open(out / "masks" / name)) > 127  # 0/255 PNGs
            tp += int((found & truth).sum())
            fp += int((found & ~truth).sum())
            fn += int((~found & truth).sum())
    print(f"{len(names)} test chips (blocked split, seed {seed}); F1 of `slidemap detect --mask`: {2 * tp / (2 * tp + fp + fn):.4f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
