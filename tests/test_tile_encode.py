"""The server's tiles are Pillow run-length PNGs (and WebP) that decode to titiler's own rendering."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image
from rio_tiler.colormap import cmap
from rio_tiler.models import ImageData
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image

from slidemap.server.layers import Layer
from slidemap.server.tiles import RenderParams, _image_to_bytes

RNG = np.random.default_rng(7)


def _image(bands: int, dtype: str = "float32", hole: bool = True, low: float = 0.0, high: float = 1.0) -> ImageData:
    data = RNG.uniform(low, high, (bands, 256, 256)).astype(dtype)
    mask = np.zeros_like(data, dtype=bool)
    if hole:
        mask[:, :40, :] = True  # a transparent edge, as at a region's border
    return ImageData(np.ma.MaskedArray(data, mask=mask))


def _titiler(img: ImageData, fmt: str, colormap=None, rescale=None) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        content, _ = render_image(ImageData(img.array.copy()), colormap=colormap, rescale=rescale,
                                  output_format=ImageType.png if fmt == "png" else ImageType.webp)
    return content


def _rgba(content: bytes) -> np.ndarray:
    """Decoded RGBA, fully transparent pixels as transparent black (what is under them is unseen)."""
    rgba = np.asarray(Image.open(io.BytesIO(content)).convert("RGBA")).astype(int)
    rgba[rgba[..., 3] == 0] = 0
    return rgba


CLASSES = {1: (10, 120, 10, 255), 2: (250, 200, 0, 255), 3: (200, 0, 0, 255)}
CASES = [
    ("rgb imagery, rescaled", Layer("imagery", "I", "imagery", "", indexes=(3, 2, 1), rescale=((0.1, 0.9),)),
     lambda: _image(3), dict(rescale=((0.1, 0.9),))),
    ("rgb imagery, opaque", Layer("imagery", "I", "imagery", "", indexes=(3, 2, 1), rescale=((0.1, 0.9),)),
     lambda: _image(3, hole=False), dict(rescale=((0.1, 0.9),))),
    ("one band, named colormap", Layer("slope", "S", "factor", "deg", rescale=((0, 60),), colormap_name="viridis"),
     lambda: _image(1, high=70), dict(rescale=((0, 60),), colormap=cmap.get("viridis"))),
    ("one band, grey", Layer("twi", "T", "factor", "", rescale=((2, 12),)),
     lambda: _image(1, low=0, high=14), dict(rescale=((2, 12),))),
    ("one band, no rescale (dtype range)", Layer("prob", "P", "detection", ""),
     lambda: _image(1, dtype="uint8", low=0, high=255), dict()),
    ("classes, colormap", Layer("classes", "C", "factor", "", colormap=CLASSES, categorical=True),
     lambda: ImageData(np.ma.MaskedArray(RNG.integers(1, 4, (1, 256, 256)).astype(np.uint8),
                                         mask=np.zeros((1, 256, 256), bool))), dict(colormap=CLASSES)),
]


@pytest.mark.parametrize("name,layer,make,titiler_args", CASES, ids=[c[0] for c in CASES])
def test_png_tiles_decode_to_titilers_rendering(name, layer, make, titiler_args):
    img = make()
    ours = _image_to_bytes(ImageData(img.array.copy()), layer, "png", RenderParams())
    want = _titiler(img, "png", **titiler_args)
    assert np.array_equal(_rgba(ours), _rgba(want)), name
    assert len(ours) <= len(want) * 1.05  # run-length coding is not bought with bigger tiles
    if not np.ma.getmaskarray(img.array).any():
        assert Image.open(io.BytesIO(ours)).mode in ("RGB", "L", "P")  # opaque: no alpha channel


def test_webp_tiles_are_close_to_titilers():
    layer, make, args = CASES[0][1], CASES[0][2], CASES[0][3]
    img = make()
    ours = _rgba(_image_to_bytes(ImageData(img.array.copy()), layer, "webp", RenderParams()))
    want = _rgba(_titiler(img, "webp", **args))
    assert np.array_equal(ours[..., 3], want[..., 3])
    assert np.abs(ours[..., :3] - want[..., :3]).mean() < 3  # both lossy libwebp at the same quality


def test_sixteen_bit_output_stays_with_titilers_renderer():
    img = _image(1, dtype="uint16", low=0, high=60000)
    layer = Layer("raw", "R", "factor", "")
    ours = _image_to_bytes(ImageData(img.array.copy()), layer, "png", RenderParams())
    assert ours == _titiler(img, "png")
