"""Attention U-Net: shapes, gates, search records, scene splits on small regions, early stopping,
skill, a tiny end-to-end run with its card, report and region default."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from slidemap.compute.maps.image_norm import image_stats
from slidemap.compute.models.select import default_model, resolve_model
from slidemap.errors import BuildError, ModelError
from slidemap.training import scene as sc
from slidemap.training import unet_fit, unet_report, unet_train
from slidemap.training.scene import scene_from_region, split_scene
from slidemap.training.search import SEED_PROPOSER, bayesian_search, seed_won
from slidemap.training.seg_data import Evaluation, scene_split_data
from slidemap.training.unet import attention_maps, build_unet, flops_per_tile
from slidemap.training.unet_fit import EarlyStopping, FitConfig, fit_network, learning_rate_schedule, validation_scores
from tiny_region import tiny_region as _tiny_region


@pytest.mark.parametrize("tile", [16, 48, 64, 128])
def test_output_shape_for_tile_sizes(tile):
    model = build_unet(4, base_width=2)
    out = model(np.random.default_rng(0).random((2, tile, tile, 4)).astype("float32"))
    assert tuple(out.shape) == (2, tile, tile, 1)
    values = np.asarray(out)
    assert values.min() >= 0 and values.max() <= 1


def test_rgb_and_rectangular_tiles():
    model = build_unet(3, base_width=2)
    assert tuple(model(np.zeros((1, 32, 80, 3), "float32")).shape) == (1, 32, 80, 1)


def test_attention_gates_on_every_skip_and_in_unit_range():
    keras.utils.set_random_seed(0)
    model = build_unet(4, base_width=4)
    maps = attention_maps(model)(np.random.default_rng(1).normal(size=(2, 64, 64, 4)).astype("float32"))
    assert len(maps) == 4  # one gate per skip connection
    sizes = sorted(m.shape[1] for m in maps)
    assert sizes == [4, 8, 16, 32]  # computed at the coarse (gating) scale of each level
    for m in maps:
        a = np.asarray(m)
        assert a.shape[-1] == 1 and a.min() >= 0.0 and a.max() <= 1.0
    plain = build_unet(4, base_width=4, attention=False)
    with pytest.raises(ValueError):
        attention_maps(plain)


def test_deep_supervision_head_fuses_one_full_size_map_per_decoder_level():
    keras.utils.set_random_seed(0)
    model = build_unet(3, base_width=4, side_outputs=True)
    x = np.random.default_rng(2).normal(size=(2, 48, 32, 3)).astype("float32")
    out = np.asarray(model(x))
    assert out.shape == (2, 48, 32, 1) and out.min() >= 0 and out.max() <= 1
    sides = keras.Model(model.inputs[0], model.get_layer("sides").output)(x)
    assert tuple(sides.shape) == (2, 48, 32, 4)  # side1..side4, each brought to full size
    assert model.get_layer("probability").input.shape[-1] == 4  # the output sees only the fused maps
    assert all(not layer.name.startswith("side") for layer in build_unet(3, base_width=4).layers)
    cfg = unet_train.preset("demo", side_outputs=True, baselines=True)
    specs = {s.name: s.side_outputs for s in unet_train.model_specs(cfg)}
    assert specs == {"attention-unet-focal": True, "unet-bce": False, "pixel-hgb": False}  # the peers stay plain


def test_flops_scale_with_tile_area():
    model = build_unet(4, base_width=4)
    f64, f128 = flops_per_tile(model, 64), flops_per_tile(model, 128)
    assert f64 > 0 and f128 / f64 == pytest.approx(4.0, rel=0.01)


# ---- search ------------------------------------------------------------------------------------
def test_search_records_every_iteration_with_its_proposer():
    seen = []
    best, records = bayesian_search(lambda hp: 1.0 - abs(hp.alpha - 0.3) - 0.1 * hp.gamma, 3, seed=0,
                                    on_iteration=seen.append)
    assert [r["iteration"] for r in records] == [1, 2, 3] and len(seen) == 3
    for r in records:
        assert {"iteration", "optimizer", "learning_rate", "alpha", "gamma", "score", "proposed_by"} <= set(r)
        assert r["optimizer"] in ("adam", "sgd") and r["learning_rate"] in (1e-2, 1e-3, 1e-4)
        assert 0 <= r["alpha"] <= 1 and 0 <= r["gamma"] <= 5
    assert best.alpha == max(records, key=lambda r: r["score"])["alpha"]
    # the paper's set first, then a random start, then at least one point chosen by EI
    assert [r["proposed_by"] for r in records] == [SEED_PROPOSER, "random (initial design)", "GP + expected improvement"]


def test_focal_space_keeps_optimizer_and_rate_and_says_when_the_seed_wins():
    from slidemap.training.search import HyperParams

    fixed = HyperParams("adam", 3e-4, 0.5, 2.0)
    # a score that peaks exactly at the paper's alpha/gamma: the seed must win and be reported
    best, records = bayesian_search(lambda hp: -abs(hp.alpha - 0.338) - abs(hp.gamma - 3.809), 4, seed=1,
                                    space="focal", fixed=fixed)
    assert all(r["optimizer"] == "adam" and r["learning_rate"] == 3e-4 for r in records)
    assert seed_won(records) and best.alpha == pytest.approx(0.338)
    report_note = unet_report.search_note({"seed_won": True, "space": "focal"}, records)
    assert "seeded point" in report_note and "won" in report_note
    _, others = bayesian_search(lambda hp: hp.alpha, 4, seed=1, space="focal", fixed=fixed)
    assert not seed_won(others)  # alpha 0.338 is beaten by any larger alpha


# ---- scenes and splits -------------------------------------------------------------------------
def test_small_region_produces_both_splits_with_buffers(tmp_path):
    """A 4 km-like scene (400 px at 10 m) keeps training, validation and test landslides on both splits."""
    scene = scene_from_region(_tiny_region(tmp_path, size=400, seed=3, n_slides=40))
    assert scene.synthetic and scene.bands == ["B2", "B3", "B4", "B8"]
    assert (scene.labels[:6, :6] == 255).all()  # NaN imagery -> ignored label
    for kind in ("blocked", "random"):
        s = split_scene(scene, kind, chip=128, buffer=16, seed=0)
        areas = s.summary["landslide_areas"]
        assert areas["train"] >= 6 and areas["validation"] >= 2 and areas["test"] >= 2, (kind, s.summary)
        assert s.summary["pixel_share"]["train"] > 0.3
        assert s.summary["seed"] == 0  # recorded, so that the card's split can be made again
        held = (s.roles == sc.TEST) | (s.roles == sc.VALIDATION)
        trained_on = s.train_labels != 255
        assert not (trained_on & held).any()
        if kind == "blocked":
            near = sc._dilate(held, 16)
            assert not (trained_on & near).any()  # the ring is used by nobody
            ids, _ = sc.landslide_areas(scene.labels)
            for area in np.unique(ids[held & (ids > 0)]):  # a landslide is never on both sides
                assert not (trained_on & (ids == area)).any()
    data = scene_split_data(scene, "blocked", chip=64, buffer=16, seed=0, positive_share=0.5)
    x, y = data.sampler.batch(np.random.default_rng(0), 8)
    assert x.shape == (8, 64, 64, 4) and y.shape == (8, 64, 64)
    assert data.normalisation["method"] == "robust" and data.normalisation["scope"] == "scene"
    assert data.normalisation["reference"] == image_stats(scene.image).to_dict()  # recorded: the scene's own
    assert len(data.val_x) > 0 and (data.val_y == 1).any()


def test_too_few_landslides_is_one_clear_error(tmp_path, capsys):
    root = _tiny_region(tmp_path, size=192, seed=1, n_slides=3)
    with pytest.raises(BuildError, match=r"only 3 landslide areas; a blocked split needs at least 10"):
        split_scene(scene_from_region(root), "blocked", chip=64)
    from slidemap.cli import main

    assert main(["train", "unet", str(root), "--preset", "quick", "--chip", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slidemap: error:") and "needs at least 10" in err[0]


# ---- early stopping ----------------------------------------------------------------------------
class _Weights:
    def __init__(self) -> None:
        self.w = [np.zeros(2)]

    def get_weights(self):
        return [a.copy() for a in self.w]

    def set_weights(self, w):
        self.w = [a.copy() for a in w]


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    model = _Weights()
    stopper = EarlyStopping(patience=2, min_epochs=1)
    stops = []
    for epoch, score in enumerate([0.1, 0.5, 0.3, 0.2, 0.9], start=1):
        model.w = [np.full(2, float(epoch))]  # the weights after this epoch
        stops.append(stopper.update(epoch, score, model))
        if stops[-1]:
            break
    assert stops == [False, False, False, True] and stopper.best_epoch == 2
    stopper.restore(model)
    np.testing.assert_array_equal(model.w[0], [2.0, 2.0])
    late = EarlyStopping(patience=1, min_epochs=5)
    assert not any(late.update(e, 1.0 if e == 1 else 0.0, model) for e in range(1, 5))  # not before min_epochs
    # a warm-up epoch's lucky score is not a candidate: the best and the patience start at min_epochs
    late = EarlyStopping(patience=1, min_epochs=5)
    for epoch, score in enumerate([0.9, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45], start=1):
        model.w = [np.full(2, float(epoch))]
        if late.update(epoch, score, model):
            break
    assert (late.best_epoch, epoch) == (6, 7)
    late.restore(model)
    np.testing.assert_array_equal(model.w[0], [6.0, 6.0])


def _tiny_split(tmp_path):
    """A blocked split of a tiny SYNTHETIC region's scene, for the fitting tests."""
    scene = scene_from_region(_tiny_region(tmp_path, size=192, seed=2, n_slides=30))
    return scene_split_data(scene, "blocked", chip=32, buffer=8, seed=0, positive_share=0.5)


def _tiny_fit(**changes) -> FitConfig:
    """A width-4 network's fitting budget of a few two-step epochs; ``changes`` set the rest."""
    return FitConfig(**{"base_width": 4, "batch_size": 4, "epoch_chips": 8, "learning_rate": 1e-2,
                        "warmup_epochs": 1, "seed": 0, **changes})


def test_a_search_never_sees_another_splits_test_imagery(tmp_path):
    """The search's split blanks the other split's test pixels: labels and imagery alike."""
    scene = scene_from_region(_tiny_region(tmp_path, size=192, seed=2, n_slides=30))
    exclude = np.zeros(scene.labels.shape, dtype=bool)
    exclude[:48, :48] = True
    data = scene_split_data(scene, "blocked", chip=32, buffer=8, seed=0, positive_share=0.5, exclude=exclude)
    for sampler in (data.sampler, data.refit_sampler):
        assert (sampler.image[exclude] == 0).all() and (sampler.labels[exclude] == 255).all()
    plain = scene_split_data(scene, "blocked", chip=32, buffer=8, seed=0, positive_share=0.5)
    assert (plain.sampler.image[exclude] != 0).any()  # without it, that imagery would be there


def test_fit_network_ends_with_the_best_validation_weights(tmp_path):
    data = _tiny_split(tmp_path)
    cfg = _tiny_fit(max_epochs=6, min_epochs=1, patience=2)
    fit = fit_network(data.sampler, data.val_x, data.val_y, 4, cfg, "focal", 0.75, 1.0)
    history = fit.history["val_pr_auc"]
    assert fit.best_epoch == int(np.argmax(history)) + 1
    again = validation_scores(fit.model, data.val_x, data.val_y, 4)["val_pr_auc"]
    assert again == pytest.approx(max(history), abs=1e-6)  # the model holds the best epoch's weights
    assert len(fit.history["lr"]) == fit.epochs_run
    lrs = fit.history["lr"]
    assert lrs[0] == pytest.approx(1e-2) and all(b < a for a, b in zip(lrs, lrs[1:], strict=False))  # peak, then decay
    schedule = learning_rate_schedule(1e-2, steps_per_epoch=2, epochs=6, warmup_epochs=1)
    assert float(schedule(0)) == pytest.approx(1e-3) and float(schedule(2)) == pytest.approx(1e-2)  # warm-up


def test_validation_every_second_epoch_scores_only_those_and_the_last(tmp_path, monkeypatch):
    data = _tiny_split(tmp_path)
    cfg = _tiny_fit(max_epochs=5, min_epochs=1, patience=0, ema_epochs=1.0, validate_every=2)
    calls = []
    score = unet_fit.validation_scores
    monkeypatch.setattr(unet_fit, "validation_scores", lambda *a: calls.append(1) or score(*a))
    fit = fit_network(data.sampler, data.val_x, data.val_y, 4, cfg, "focal", 0.75, 1.0)
    history = np.asarray(fit.history["val_pr_auc"])
    assert len(calls) == 3 and len(history) == fit.epochs_run == 5  # epochs 2, 4 and the last, 5
    np.testing.assert_array_equal(np.isfinite(history), [False, True, False, True, True])
    assert fit.best_epoch in (2, 4, 5) and fit.best_epoch == int(np.nanargmax(history)) + 1
    assert validation_scores(fit.model, data.val_x, data.val_y, 4)["val_pr_auc"] == pytest.approx(np.nanmax(history), abs=1e-6)
    assert unet_train.preset("demo").fit_config().validate_every == 2
    assert unet_train.preset("paper").fit_config().validate_every == 1


def test_weight_averaging_scores_keeps_and_ships_the_averaged_weights(tmp_path, monkeypatch):
    data = _tiny_split(tmp_path)
    cfg = _tiny_fit(max_epochs=3, min_epochs=1, patience=0, ema_epochs=1.0)
    assert cfg.ema_momentum == pytest.approx(0.5) and FitConfig().ema_momentum is None  # 2 steps per epoch
    seen: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    score = unet_fit.validation_scores

    models: list = []

    def spy(model, *args):  # inside the swap: the model holds the average, the optimizer the raw weights
        models[:] = [model]
        seen.append(([v.numpy() for v in model.trainable_variables],
                     [v.numpy() for v in model.optimizer._model_variables_moving_average]))
        return score(model, *args)

    monkeypatch.setattr(unet_fit, "validation_scores", spy)
    after: list[list[np.ndarray]] = []
    fit = fit_network(data.sampler, data.val_x, data.val_y, 4, cfg, "focal", 0.75, 1.0,
                      on_epoch=lambda epoch, logs: after.append([v.numpy() for v in models[0].trainable_variables]))
    monkeypatch.undo()
    assert len(seen) == 3
    for (scored, raw), trained_on in zip(seen, after, strict=True):
        assert not all(np.allclose(a, b) for a, b in zip(scored, raw, strict=True))  # the average was scored
        assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(raw, trained_on, strict=True))  # raw ones back
    best = seen[fit.best_epoch - 1][0]
    assert all(np.allclose(a, b.numpy(), atol=1e-6) for a, b in zip(best, fit.model.trainable_variables, strict=True))
    refit = fit_network(data.sampler, None, None, 4, cfg, "focal", 0.75, 1.0, epochs=2)  # no validation
    final = [v.numpy() for v in refit.model.trainable_variables]
    kept = [v.numpy() for v in refit.model.optimizer._model_variables_moving_average]
    assert all(np.array_equal(a, b) for a, b in zip(final, kept, strict=True))  # ships the average


# ---- skill -------------------------------------------------------------------------------------
def test_no_skill_flag():
    rng = np.random.default_rng(0)
    labels = (rng.random(40 * 256) < 0.05).astype(np.uint8)
    units = np.repeat(np.arange(40), 256)
    noise = Evaluation(labels, rng.random(labels.size).astype(np.float32), units)
    skill = unet_train.detection_skill(noise, 0.5, pr=0.05, seed=0)
    assert not skill["has_skill"] and skill["ci95"][0] <= skill["chance"] + 0.05
    good_prob = np.clip(labels * 0.8 + rng.random(labels.size) * 0.3, 0, 1).astype(np.float32)
    good = unet_train.detection_skill(Evaluation(labels, good_prob, units), 0.5, pr=0.9, seed=0)
    assert good["has_skill"] and good["ci95"][0] > 0.5 and good["metric"] == "f1"
    assert good["ci95"][0] <= good["value"] <= good["ci95"][1]


# ---- a tiny run end to end -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = _tiny_region(tmp_path_factory.mktemp("region"), size=192, seed=4, n_slides=30)
    cfg = unet_train.preset("quick", base_width=4, chip=32, epochs=4, epoch_chips=8, batch_size=4, patience=2,
                            min_epochs=2, refit=False, scene_refit_below_areas=1000, learning_rate=1e-2, alpha=0.75,
                            gamma=1.0, buffer=8)  # refitted by the small-region rule
    return root, unet_train.run(scene_from_region(root), cfg, progress=False)


def test_tiny_model_beats_constant_predictor(trained):
    _, result = trained
    for t in result.trained:
        m = t.metrics
        prevalence = m["landslide_pixels"] / m["pixels"]
        constant_f1 = 2 * prevalence / (1 + prevalence)  # predicting landslide everywhere
        assert m["f1"] > constant_f1 + 0.2, (t.spec.name, m)
        assert m["pr_auc"] > prevalence + 0.2
    primary = result.primary
    assert result.splits["blocked"]["refit"].startswith("on: ")  # few landslides: the rule refits, and says why
    assert primary.training["refit"]["epochs"] == primary.training["best_epoch"]
    assert [t.spec.name for t in result.trained] == ["attention-unet-focal"]
    # a scene's refit keeps the operating point too, measured on (a sample of) the fit part's cells
    assert 0 < primary.training["refit"]["fit_part_share_called_landslide"] < 1


def test_pixel_gradient_boosting_peer_uses_the_network_interface():
    rng = np.random.default_rng(0)
    y = (rng.random((6, 32, 32)) > 0.9).astype(np.uint8)
    x = (y[..., None] * 2.0 + rng.normal(0, 0.3, (6, 32, 32, 3))).astype(np.float32)
    model = unet_train.PixelGradientBoosting(seed=0).fit(x[:4], y[:4])
    prob = model.predict_on_batch(x[4:])
    assert prob.shape == (2, 32, 32, 1)
    assert prob[..., 0][y[4:] == 1].mean() > 0.8 > 0.2 > prob[..., 0][y[4:] == 0].mean()


def _with_peer(result):
    """The run plus a weaker copy of its network under another name (ranking needs two networks)."""
    import copy

    peer = copy.copy(result.primary)
    peer.spec = unet_train.ModelSpec("unet-bce", "bce", 4, attention=False, label="plain U-Net, BCE")
    peer.skill = {**peer.skill, "value": peer.skill["value"] - 0.1}
    out = copy.copy(result)
    out.trained = [result.primary, peer]
    return out


def test_cards_report_and_region_default(trained):
    from slidemap.compute.maps.detection import load_detector

    root, result = trained
    result = _with_peer(result)
    saved = unet_train.save_models(result, "run-x", root / "models", "attention-unet")
    assert [s.name for s in saved] == ["attention-unet", "unet-bce"]  # best first
    default = unet_train.record_region_default(root, saved)
    best = max(saved, key=lambda s: s.card["skill"]["value"])
    assert default is not None and default.path == best.path
    assert default_model(root, "detection").path == best.path
    card = next(s.card for s in saved if s.name == "attention-unet")
    assert card["bands"] == ["B2", "B3", "B4", "B8"] and card["tile_multiple"] == 16 and card["run_id"] == "run-x"
    assert card["normalisation"]["method"] == "robust" and card["normalisation"]["scope"] == "scene"
    assert card["architecture"]["base_width"] == 4 and card["architecture"]["parameters"] > 1000
    assert card["skill"]["metric"] == "f1" and card["skill"]["has_skill"] is True and card["skill"]["rank"] == 1
    assert card["synthetic"] is True and len(card["training_data"]["fingerprint"]) == 64
    assert card["training_data"]["sampling"]["chips_with_landslide"] > 0
    det = load_detector(resolve_model(root, "detection", "attention-unet").path)
    assert det.threshold == card["threshold"] and det.robust
    report = unet_report.build_report(result, {s.name: s.card["version"] for s in saved}, {"path": str(root)},
                                      "run-x", default.name)
    out = unet_report.write_report(report, root / "reports" / "unet" / "r1", result)
    saved_report = json.loads((out / "report.json").read_text())
    assert saved_report["kind"] == "unet" and saved_report["synthetic"] is True
    assert set(saved_report["models"]) == {"attention-unet-focal", "unet-bce"}
    for k in ("accuracy", "precision", "recall", "f1", "miou", "pr_auc", "threshold", "skill"):
        assert k in saved_report["models"]["attention-unet-focal"]["blocked"]
    md = (out / "report.md").read_text()
    assert md.startswith("# SYNTHETIC") and "| attention-unet-focal | blocked |" in md
    # the peer is scored on the same test chips: a paired difference (zero here: the peer is a copy)
    (pair,) = saved_report["paired"]["blocked"]
    assert pair["model"] == "attention-unet-focal" and pair["versus"] == "unet-bce" and pair["difference"] == 0.0
    assert "Paired differences on the blocked test chips" in md and "| unet-bce | +0.000 |" in md
    assert list(out.glob("curves_*.png"))
    # tamper with the weights: loading must refuse
    weights = default.path / "model.keras"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(ModelError, match="SHA-256"):
        load_detector(default.path)


def test_no_skilled_detector_is_never_the_default(trained, tmp_path):
    import copy

    root, result = trained
    region = tmp_path / "region"
    region.mkdir()
    flat = copy.copy(_with_peer(result))
    flat.trained = [copy.copy(t) for t in flat.trained]
    for t in flat.trained:
        t.skill = {**t.skill, "has_skill": False}
    flat.primary = next(t for t in flat.trained if t.spec.name == result.primary.spec.name)
    saved = unet_train.save_models(flat, "run-y", region / "models", "attention-unet")
    assert unet_train.record_region_default(region, saved) is None
    assert default_model(region, "detection") is None
    with pytest.raises(ModelError, match="no detection model has skill"):
        resolve_model(region, "detection")
    assert resolve_model(region, "detection", "attention-unet").name == "attention-unet"  # by name it still works


def test_a_random_split_run_is_no_evidence_of_skill_and_leaves_the_default(trained, tmp_path):
    """`--splits random` scores neighbouring ground: never skill, and the region's default stays."""
    import copy

    root, result = trained
    region = tmp_path / "region"
    region.mkdir()
    blocked = unet_train.save_models(_with_peer(result), "run-b", region / "models", "attention-unet")
    before = unet_train.record_region_default(region, blocked)
    assert before is not None
    rng = np.random.default_rng(0)
    labels = (rng.random(40 * 256) < 0.05).astype(np.uint8)
    good = np.clip(labels * 0.8 + rng.random(labels.size) * 0.3, 0, 1).astype(np.float32)
    skill = unet_train.detection_skill(Evaluation(labels, good, np.repeat(np.arange(40), 256)), 0.5, 0.9, 0, "random")
    assert not skill["has_skill"] and skill["split"] == "random" and skill["method"].startswith("random test")
    rand = copy.copy(result)
    rand.trained = [copy.copy(t) for t in result.trained]
    for t in rand.trained:
        t.split, t.skill = "random", {**skill, "value": 0.99}
    rand.primary = rand.trained[0]
    saved = unet_train.save_models(rand, "run-r", region / "models", "attention-unet")
    assert unet_train.record_region_default(region, saved) is None
    assert default_model(region, "detection").path == before.path  # unchanged, not the inflated 0.99


def test_a_budget_shorter_than_the_warm_up_ships_its_scored_last_epoch(tmp_path):
    data = _tiny_split(tmp_path)
    cfg = _tiny_fit(max_epochs=2, min_epochs=8, patience=2)
    fit = fit_network(data.sampler, data.val_x, data.val_y, 4, cfg, "focal", 0.75, 1.0)
    assert fit.epochs_run == 2 and fit.best_epoch == 2  # the warm-up shrinks to the budget; epoch 2 is a candidate
    again = validation_scores(fit.model, data.val_x, data.val_y, 4)["val_pr_auc"]
    assert again == pytest.approx(fit.history["val_pr_auc"][-1], abs=1e-6)  # the shipped weights are the scored ones


def test_a_chip_folder_gets_the_presets_folder_budget():
    """demo: 60 epochs / patience 8 on a region's scenes, 60 / 12 on a chip folder (one pass over the
    fit chips per epoch; validation still improved at 30 on the real chips); a budget the user gives wins."""
    from slidemap.training.unet_train import apply_settings, preset

    demo = preset("demo")
    assert (demo.for_source(folder=False).epochs, demo.for_source(folder=False).patience) == (60, 8)
    assert (demo.for_source(folder=True).epochs, demo.for_source(folder=True).patience) == (60, 12)
    given = preset("demo", epochs=40)
    assert given.for_source(folder=True).epochs == 40 and given.for_source(folder=True).patience == 12
    given = apply_settings(preset("demo"), {"epochs": "45", "patience": "5"})
    assert (given.for_source(folder=True).epochs, given.for_source(folder=True).patience) == (45, 5)
    assert preset("quick").for_source(folder=True).epochs == 3  # no folder budget: unchanged


def test_a_chip_folder_ships_a_model_refitted_on_fit_and_validation():
    """demo: a region's scenes are refitted when their training part holds few landslides and keep the
    first model when it holds many (the main job's time); a chip folder refits on fit + validation; a
    refit rule the user gives applies to every source."""
    from slidemap.training.unet_train import apply_settings, preset

    demo = preset("demo")
    assert demo.for_source(folder=False).refit is False and demo.for_source(folder=True).refit is True
    few, many = {"landslide_areas": {"train": 40}}, {"landslide_areas": {"train": 566}}
    scenes = demo.for_source(folder=False)
    (on_few, why_few), (on_many, why_many) = scenes.for_split(few), scenes.for_split(many)
    assert on_few.refit is True and on_many.refit is False
    assert why_few.startswith("on: 40 training landslide areas, fewer than 100") and why_many.startswith("off: 566")
    assert demo.for_source(folder=True).for_split({"chips": {"fit": 400}}) == (demo.for_source(folder=True), None)
    off = apply_settings(demo, {"refit": "false"})
    assert off.for_source(folder=True).refit is False
    assert off.for_source(folder=False).for_split(few)[0].refit is False
    assert preset("demo", refit=False).for_split(few)[0].refit is False  # --no-refit
    on = apply_settings(demo, {"refit": "true"})
    assert on.for_source(folder=False).refit is True
    assert on.for_source(folder=False).for_split(many)[0].refit is True
    assert preset("quick").for_source(folder=True).refit is False  # no folder rule: as refit


_TWICE = """
import hashlib, sys
import numpy as np
from slidemap.training.scene import scene_from_region
from slidemap.training.seg_data import scene_split_data
from slidemap.training.unet_fit import FitConfig, fit_network
data = scene_split_data(scene_from_region(sys.argv[1]), "blocked", chip=32, buffer=8, seed=0, positive_share=0.5)
cfg = FitConfig(base_width=4, batch_size=4, epoch_chips=8, max_epochs=3, min_epochs=3, patience=3,
                learning_rate=1e-2, warmup_epochs=1, seed=0)
for _ in range(2):
    weights = fit_network(data.sampler, data.val_x, data.val_y, 4, cfg, "focal", 0.75, 1.0).model.get_weights()
    print(hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in weights)).hexdigest())
"""


def test_one_thread_training_is_bit_identical(tmp_path):
    """The README's promise: with SLIDEMAP_TF_THREADS=1 the same seed gives the same weights. Fails
    if any source of randomness in training (sampling, augmentation, initialisation) is unseeded. (At
    the demo widths more threads reorder floating-point sums and runs drift apart; this tiny network
    is too small for that to show, so the test guards the seeding, not the threading.)"""
    import os
    import subprocess
    import sys

    root = _tiny_region(tmp_path, size=192, seed=3, n_slides=30)
    done = subprocess.run([sys.executable, "-c", _TWICE, str(root)], env={**os.environ, "SLIDEMAP_TF_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.split()[-2:]
    assert first == second


def test_a_chip_folder_run_refits_on_fit_and_validation_chips():
    """The demo preset on a (tiny) chip folder: the shipped network is the refit, for the best epoch
    count, and the report keeps the test figures from before it."""
    from slidemap.training.chips import ChipSet

    rng = np.random.default_rng(3)
    n, size = 40, 32
    images = rng.normal(0.3, 0.05, (n, size, size, 3)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(2, size - 12, 2)
        masks[i, r:r + 10, c:c + 10] = 1
        images[i, r:r + 10, c:c + 10] += 0.4
    index = np.arange(n, dtype=np.int64)
    chips = ChipSet(images, masks, [f"c{i}" for i in index], ["R", "G", "B"], index * 10 // n,
                    np.column_stack([index, np.zeros(n, np.int64), index + 1, np.ones(n, np.int64)]),
                    {"kind": "folder", "path": "tiny", "synthetic": True, "units": "file",
                     "blocking": "10 contiguous blocks of file index"})
    cfg = unet_train.preset("demo", base_width=4, epochs=2, min_epochs=1, patience=2, batch_size=8,
                            learning_rate=1e-2, views=1)
    result = unet_train.run(chips, cfg, progress=False)
    assert result.config.refit is True
    assert result.splits["blocked"]["seed"] == cfg.seed  # the card's split summary names its seed
    refit = result.primary.training["refit"]
    assert refit["epochs"] == result.primary.training["best_epoch"]
    assert set(refit["test_before_refit"]) >= {"f1", "pr_auc"}
    # the shipped cut calls landslide the share of fit-part pixels the first fit's validation cut did
    from slidemap.compute.models.views import ViewAveraged

    data = unet_train._split_data(chips, "blocked", result.config)
    prob = data.predict_fit(ViewAveraged(result.primary.model, result.primary.views)).prob
    share = refit["fit_part_share_called_landslide"]
    assert 0 < share < 1
    assert np.mean(prob >= result.primary.threshold) == pytest.approx(share, abs=2e-3)


def test_a_scene_refit_scores_a_seeded_sample_of_fit_cells():
    from slidemap.training.seg_data import sample_cells

    mask = np.zeros((512, 512), bool)
    mask[:, :300] = True  # 8 x 5 cells of 64 px hold a fit pixel
    kept = sample_cells(mask, 64, 10, seed=3)
    assert not (kept & ~mask).any()
    cells = {(r // 64, c // 64) for r, c in zip(*np.nonzero(kept), strict=True)}
    assert len(cells) == 10 and np.array_equal(kept, sample_cells(mask, 64, 10, seed=3))
    assert np.array_equal(sample_cells(mask, 64, 40, seed=3), mask)  # no more than asked: all of them
