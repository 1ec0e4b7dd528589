"""Test-time view averaging: each view maps back exactly, the average is the mean of the mapped-back
answers, a detector averages the views its card names (and refuses a count it cannot), and a
training run scores with the views it records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slidemap.compute.maps.detection import Detector, load_detector
from slidemap.compute.models.views import ViewAveraged, average_views, from_view, to_view
from slidemap.errors import ModelError


def _card(views: int | None) -> dict:
    card = {"bands": ["a"], "inputs": ["a"], "tile_multiple": 16, "halo": 0, "threshold": 0.5,
            "normalisation": {"method": "standardise", "bands": ["a"], "mean": [0.0], "std": [1.0]}}
    if views is not None:
        card["inference"] = {"views": views}
    return card


class _ColumnRamp:
    """An orientation-dependent stand-in network: its input plus the column index (x position)."""

    def predict_on_batch(self, x):
        return x[..., :1] + np.arange(x.shape[2], dtype="float32")[None, None, :, None]


@pytest.mark.parametrize("k", range(8))
def test_every_view_maps_back_exactly_on_rectangular_windows(k):
    x = np.random.default_rng(k).normal(size=(2, 32, 48, 3)).astype("float32")
    v = to_view(x, k)
    assert v.shape == ((2, 48, 32, 3) if k >= 4 else x.shape)
    np.testing.assert_array_equal(from_view(v, k), x)


def test_the_eight_views_are_the_eight_symmetries_of_the_square():
    x = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    seen = {to_view(x, k).tobytes() for k in range(8)}
    assert len(seen) == 8
    assert np.array_equal(to_view(x, 3), np.rot90(x, 2, axes=(1, 2)))  # both flips: a half turn


def test_average_is_the_mean_of_the_mapped_back_answers():
    x = np.random.default_rng(0).normal(size=(3, 16, 32, 1)).astype("float32")
    net = _ColumnRamp()
    np.testing.assert_array_equal(average_views(net.predict_on_batch, x, 1), net.predict_on_batch(x))
    cols = np.arange(32, dtype="float32")
    # a mirrored window sees column c at 31 - c: the mean of the two ramps is flat at 15.5
    np.testing.assert_allclose(average_views(net.predict_on_batch, x, 2)[..., 0], x[..., 0] + 15.5, atol=1e-5)
    four = average_views(net.predict_on_batch, x, 4)[..., 0]
    np.testing.assert_allclose(four, x[..., 0] + 15.5, atol=1e-5)
    eight = average_views(net.predict_on_batch, x, 8)[..., 0]
    rows = np.arange(16, dtype="float32")[:, None]
    # transposed views see the row index instead: half the weight on the mean column, half on the mean row
    expected = x[..., 0] + 0.5 * 15.5 + 0.5 * (0.5 * rows + 0.5 * (15 - rows)) + 0 * cols
    np.testing.assert_allclose(eight, expected, atol=1e-5)
    assert np.array_equal(ViewAveraged(net, 4).predict_on_batch(x), average_views(net.predict_on_batch, x, 4))
    with pytest.raises(ValueError, match="views must be one of"):
        average_views(net.predict_on_batch, x, 3)


@pytest.mark.parametrize("views", [None, 1, 2, 4, 8])
def test_a_detector_averages_the_views_its_card_names(views):
    det = Detector(_ColumnRamp(), _card(views), Path("."), tile=64, overlap=0)
    x = np.zeros((1, 32, 64, 1), "float32")
    out = det.predict_batch(x)
    assert det.views == (views or 1)
    np.testing.assert_allclose(out, average_views(_ColumnRamp().predict_on_batch, x, views or 1)[..., 0])
    assert (out.std() > 1) == (views in (None, 1))  # one view keeps the ramp; mirrors flatten it


def test_a_card_with_an_unknown_view_count_is_refused(tmp_path):
    from slidemap.compute.models.store import save_artefact
    from slidemap.training.unet import build_unet

    model = build_unet(1, base_width=2)
    folder = save_artefact(tmp_path, "unet", "odd-views", {**_card(3), "synthetic": True}, lambda p: model.save(p))
    with pytest.raises(ModelError, match=r"inference.views is 3, not one of"):
        load_detector(folder)


def test_a_training_run_chooses_the_view_count_on_validation_and_records_it(tmp_path):
    from tiny_region import tiny_region

    from slidemap.training import unet_train
    from slidemap.training.scene import scene_from_region

    root = tiny_region(tmp_path, size=160, seed=5, n_slides=20)
    cfg = unet_train.preset("quick", base_width=2, chip=32, epochs=1, epoch_chips=4, batch_size=4, buffer=8,
                            views=4)
    result = unet_train.run(scene_from_region(root), cfg, progress=False)
    card = json.loads(json.dumps(unet_train.model_card(result, result.primary, "run")))
    chosen = result.primary.training["views"]
    assert set(chosen["validation_pr_auc"]) == {1, 2, 4}  # every count up to the configured most
    scores = {k: v for k, v in chosen["validation_pr_auc"].items() if v is not None}
    assert chosen["chosen"] == (max(scores, key=lambda k: (scores[k], -k)) if scores else 1)
    assert card["inference"]["views"] == chosen["chosen"] == result.primary.views
    assert unet_train.preset("demo").views == 4 and unet_train.preset("paper").views == 1
