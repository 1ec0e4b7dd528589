"""Choosing a model: by name, by version hash, the region's default, never one without skill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slidemap.compute.models.select import (
    default_model,
    default_models_status,
    has_skill,
    record_default,
    resolve_model,
)
from slidemap.compute.models.store import list_models, save_artefact
from slidemap.errors import BuildError, ModelError


def _save(region: Path, name: str, value: float, skilled: bool, run_id: str = "run-1", payload: str = "") -> Path:
    card = {"skill": {"metric": "roc_auc", "value": value, "ci95": [value - 0.05, value + 0.05],
                      "has_skill": skilled}, "run_id": run_id}
    return save_artefact(region / "models", "lsm", name, card,
                         lambda p: p.write_bytes(f"{name}{payload}".encode()), weights_file="model.joblib")


def test_newest_is_by_sequence_not_by_second(tmp_path: Path) -> None:
    first = _save(tmp_path, "random_forest", 0.8, True, payload="a")
    second = _save(tmp_path, "random_forest", 0.8, True, payload="b")
    infos = list_models(tmp_path, "lsm")
    assert [i.path for i in infos] == [second, first]  # saved within the same second, still ordered
    assert infos[0].card["sequence"] == infos[1].card["sequence"] + 1


def test_resolve_by_name_version_and_prefix(tmp_path: Path) -> None:
    rf = _save(tmp_path, "random_forest", 0.9, True)
    lr = _save(tmp_path, "logreg", 0.8, True)
    version = rf.name.rsplit("-", 1)[1]
    assert resolve_model(tmp_path, "susceptibility", "random_forest").path == rf
    assert resolve_model(tmp_path, "susceptibility", version).path == rf
    assert resolve_model(tmp_path, "susceptibility", version[:8]).path == rf
    assert resolve_model(tmp_path, "susceptibility", "logreg").path == lr
    with pytest.raises(ModelError, match="random_forest"):  # the message lists the names
        resolve_model(tmp_path, "susceptibility", "multiscale")
    # a folder is accepted only where paths are allowed (the CLI), never from a URL
    with pytest.raises(ModelError):
        resolve_model(tmp_path, "susceptibility", str(rf))
    assert resolve_model(tmp_path, "susceptibility", str(rf), allow_path=True).path == rf


def test_default_is_best_with_skill_and_recorded(tmp_path: Path) -> None:
    _save(tmp_path, "logreg", 0.80, True)
    rf = _save(tmp_path, "random_forest", 0.90, True)
    _save(tmp_path, "multiscale", 0.95, False)  # highest score, but no skill: never the default
    assert default_model(tmp_path, "susceptibility").path == rf
    info = resolve_model(tmp_path, "susceptibility", "logreg")
    record_default(tmp_path, "susceptibility", info, "test")
    assert default_model(tmp_path, "susceptibility").name == "logreg"
    status = default_models_status(tmp_path)
    assert status["susceptibility"]["name"] == "logreg" and status["detection"] is None
    assert json.loads((tmp_path / "models" / "defaults.json").read_text())["susceptibility"]["reason"] == "test"


def test_no_model_with_skill_means_no_default(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="train lsm"):
        resolve_model(tmp_path, "susceptibility")
    ms = _save(tmp_path, "multiscale", 0.52, False)
    assert not has_skill(json.loads((ms / "card.json").read_text()))
    assert default_model(tmp_path, "susceptibility") is None
    with pytest.raises(ModelError, match="no susceptibility model has skill"):
        resolve_model(tmp_path, "susceptibility")
    record_default(tmp_path, "susceptibility", None, "no model with skill")
    assert default_model(tmp_path, "susceptibility") is None
    # naming it still works: the user chose it knowingly
    assert resolve_model(tmp_path, "susceptibility", "multiscale").path == ms


def test_default_comes_from_the_newest_run(tmp_path: Path) -> None:
    _save(tmp_path, "random_forest", 0.95, True, run_id="old")
    new = _save(tmp_path, "logreg", 0.70, True, run_id="new")
    assert default_model(tmp_path, "susceptibility").path == new


def test_class_breaks_have_one_owner():
    """The card's five breaks or a clear error: the tiles, the map COG and the report use this one rule."""
    from slidemap.compute.maps.classes import card_breaks
    from slidemap.errors import ModelError

    assert card_breaks({"class_breaks": [0.1, 0.2, 0.4, 0.6, 1]}) == [0.1, 0.2, 0.4, 0.6, 1.0]
    for card in ({}, {"class_breaks": [0.1, 0.2]}, {"class_breaks": ["a"] * 5}):
        with pytest.raises(ModelError, match="no class_breaks"):
            card_breaks(card, "multiscale", "abc123")
