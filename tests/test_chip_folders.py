"""Chip folders as `train unet --chips` reads them: no data as `detect` reads it, mask encodings,
and one clear error for a folder that cannot train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from slidemap.compute.maps.image_norm import apply_stats, image_stats
from slidemap.compute.region.image_files import read_mask_file
from slidemap.errors import InputError
from slidemap.compute.region.image_files import IGNORE
from slidemap.training.chips import chips_from_folder
from slidemap.training.seg_data import chip_split_data, normalise_chips


def _geotiff(path: Path, data: np.ndarray) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32649", transform=Affine(10, 0, 500000, 0, -10, 3000000)) as dst:
        dst.write(data)


def _png_folder(root: Path, n: int, landslides: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype("uint8")).save(root / "images" / f"image_{k}.png")
        mask = np.zeros((32, 32), "uint8")
        if landslides:
            mask[8:16, 8:16] = 255
        Image.fromarray(mask).save(root / "masks" / f"mask_{k}.png")
    return root


def test_zero_fill_of_geotiff_chips_is_no_data_as_detect_reads_it(tmp_path):
    """The fill stays out of the chip's percentiles and is 0 once normalised, as in `detect`."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    image = (0.1 + 0.05 * rng.random((4, 32, 32))).astype("float32")
    image[:, :, :10] = 0  # outside the area
    _geotiff(tmp_path / "images" / "image_0.tif", image)
    mask = np.zeros((1, 32, 32), "uint8")
    mask[0, 12:20, 12:20] = 1
    _geotiff(tmp_path / "masks" / "mask_0.tif", mask)
    chips = chips_from_folder(tmp_path)
    assert np.isnan(chips.images[0, :, :10]).all() and np.isfinite(chips.images[0, :, 10:]).all()
    assert (chips.masks[0, :, :10] == IGNORE).all() and (chips.masks[0] == 1).sum() == 64
    z = normalise_chips(chips.images, "chip")[0]
    assert (z[:, :10] == 0).all()
    as_detect = np.moveaxis(image, 0, -1).copy()
    as_detect[:, :10] = np.nan
    np.testing.assert_allclose(z, apply_stats(as_detect, image_stats(as_detect, channel_axis=-1)), atol=1e-6)


def test_an_rgb_mask_of_zeros_and_ones_is_binary(tmp_path):
    mask = np.zeros((32, 32, 3), "uint8")
    mask[4:9, 4:9] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert (read_mask_file(tmp_path / "m.png") == 1).sum() == 25
    mask[4:9, 4:9] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert (read_mask_file(tmp_path / "m.png") == 1).sum() == 25


def test_a_folder_whose_masks_hold_no_landslide_is_one_clear_error(tmp_path):
    folder = _png_folder(tmp_path / "chips", 6, landslides=False)
    with pytest.raises(InputError, match=r"masks: no mask marks a landslide pixel.*--mask-encoding"):
        chips_from_folder(folder)


def test_too_few_chips_for_the_blocked_split_is_one_clear_error(tmp_path):
    chips = chips_from_folder(_png_folder(tmp_path / "chips", 10))
    with pytest.raises(InputError, match=r"10 chips leave 0 to fit.*add chips .*or lower --buffer"):
        chip_split_data(chips, "blocked", seed=0, positive_share=0.5)
    data = chip_split_data(chips, "blocked", seed=0, positive_share=0.5, buffer=0)  # no buffer: it splits
    assert min(data.summary["chips"]["fit"], data.summary["chips"]["validation"], data.summary["chips"]["test"]) > 0
