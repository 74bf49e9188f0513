"""Run ids: one id, one computation, on the same data, across versions of the code."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

import ablations.grid
from ablations.grid import load_grid
from ablations.runid import FROZEN_DEFAULTS, current_defaults, hashed_values, run_id, run_id_of
from sagan.config import build_config, flatten, to_dict
from sagan.data.identity import data_identity
from tests.datafiles import write_tiny_imagefolder

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((Path(__file__).parent / "pinned_run_ids.json").read_text())
FAKE_IMAGENET_DIGEST = "0123456789abcdef"

BASE = {
    "data": {"name": "synthetic", "resolution": 32},
    "model": {"ch": 16, "z_dim": 32},
    "train": {"steps": 10, "batch_size": 8, "device": "cpu"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_bundled_grids_keep_their_run_ids(name, monkeypatch):
    """A store made by an earlier version must keep matching its grids.

    If this fails, an existing user's finished runs would be trained again. Add new
    config keys with a default that keeps the old behaviour; never edit FROZEN_DEFAULTS.
    """
    real = ablations.grid.data_identity

    def identity(cfg):  # the paper grids read ImageNet, which is not here
        if cfg.name == "imagefolder":
            return {"name": "imagefolder", "digest": FAKE_IMAGENET_DIGEST}
        return real(cfg)

    monkeypatch.setattr(ablations.grid, "data_identity", identity)
    g = load_grid(REPO / "ablations" / "grids" / f"{name}.yaml")
    assert {c.label(): c.run_id for c in g.cells} == PINNED[name]


def test_a_new_key_at_its_default_changes_no_id():
    flat = flatten(to_dict(build_config(BASE)))
    defaults = current_defaults()
    before = run_id_of(hashed_values(flat, defaults), "d")
    # A key added in a later version, left at its (behaviour-keeping) default...
    newer = dict(flat, **{"train.new_option": "off"})
    assert run_id_of(hashed_values(newer, {**defaults, "train.new_option": "off"}), "d") == before
    # ...and set to something else: a different computation, a different id.
    assert run_id_of(hashed_values(dict(newer, **{"train.new_option": "on"}), defaults), "d") != (
        before
    )


def test_a_changed_default_does_not_move_old_ids():
    """Ids compare with the frozen defaults, not with whatever the code defaults to now."""
    flat = flatten(to_dict(build_config(BASE)))
    assert FROZEN_DEFAULTS["train.betas"] == [0.0, 0.999]
    later = {**current_defaults(), "train.betas": [0.0, 0.9]}
    assert hashed_values(flat, later) == hashed_values(flat, current_defaults())
    assert "train.betas" not in hashed_values(flat, later)


def test_run_id_ignores_paths_cadence_and_evaluation():
    a = build_config(BASE)
    b = build_config(
        BASE,
        {
            "data.root": "/elsewhere",
            "data.num_workers": 4,
            "train.log_every": 7,
            "eval.n_samples": 99,
            "train.device": "cuda",
        },
    )
    assert run_id(a) == run_id(b)
    assert len(run_id(a)) == 12 and int(run_id(a), 16) >= 0
    assert run_id(build_config(BASE, {"train.steps": 11})) != run_id(a)
    assert run_id(build_config(BASE, {"model.sn_g": False})) != run_id(a)
    assert run_id(build_config(BASE, {"data.synthetic.seed": 1})) != run_id(a)


def _folder_grid(tmp_path, name, root):
    grid = {
        "name": name,
        "base": {
            "data": {"name": "imagefolder", "root": str(root), "resolution": 32},
            "model": {"ch": 8, "z_dim": 8},
            "train": {"steps": 10, "batch_size": 4, "device": "cpu"},
        },
        "axes": {"sn": {"d_only": {"model.sn_g": False}, "both": {}}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid))
    return {c.label(): c.run_id for c in load_grid(path).cells}


def test_grids_on_different_data_get_different_run_ids(tmp_path):
    write_tiny_imagefolder(tmp_path / "lsun", n_classes=2, n_per_class=3, size=(40, 40))
    write_tiny_imagefolder(tmp_path / "celeba", n_classes=2, n_per_class=4, size=(40, 40))
    lsun = _folder_grid(tmp_path, "lsun", tmp_path / "lsun")
    celeba = _folder_grid(tmp_path, "celeba", tmp_path / "celeba")
    assert lsun.keys() == celeba.keys()
    assert not set(lsun.values()) & set(celeba.values())


def test_the_same_data_copied_elsewhere_keeps_its_run_ids(tmp_path):
    write_tiny_imagefolder(tmp_path / "a", n_classes=2, n_per_class=3, size=(40, 40))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert _folder_grid(tmp_path, "a", tmp_path / "a") == _folder_grid(
        tmp_path, "b", tmp_path / "b"
    )


def test_folder_identity_is_cached_on_disk_and_sees_added_files(tmp_path, monkeypatch):
    import sagan.data.identity as di

    monkeypatch.setenv(di.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(di, "_memory", {})
    paths = write_tiny_imagefolder(tmp_path / "d", n_classes=2, n_per_class=3, size=(40, 40))
    cfg = build_config({**BASE, "data": {"name": "imagefolder", "root": str(tmp_path / "d")}}).data
    first = data_identity(cfg)
    assert first["n_images"] == 6 and first["classes"] == ["class_0", "class_1"]
    assert len(list((tmp_path / "cache").glob("imagefolder-*.json"))) == 1
    # A second process (empty memory) reads the walk from disk instead of stat-ing files.
    monkeypatch.setattr(di, "_memory", {})
    monkeypatch.setattr(di, "list_image_files", lambda folder: pytest.fail("walked again"))
    assert data_identity(cfg) == first
    monkeypatch.undo()
    monkeypatch.setenv(di.CACHE_ENV, str(tmp_path / "cache"))
    shutil.copy(paths[0], tmp_path / "d" / "class_1" / "extra.png")
    grown = data_identity(cfg)
    assert grown["n_images"] == 7 and grown["digest"] != first["digest"]


# smoke's ids before the official batch-norm momenta and the held power iteration
# became the defaults: the legacy values of those keys must give them back.
SMOKE_BEFORE_FIDELITY = {
    "attention=none,sn=d_only,lr=ttur,seed=0": "b50ad988f5bb",
    "attention=none,sn=both,lr=equal,seed=0": "be385a81d1c5",
}


def test_the_legacy_values_of_new_keys_give_the_old_ids():
    g = load_grid(REPO / "ablations" / "grids" / "smoke.yaml")
    for c in g.cells:
        if c.label() in SMOKE_BEFORE_FIDELITY:
            cfg = c.config.model_copy(deep=True)
            cfg.model.bn_momentum, cfg.model.sn_g_step = 0.1, "advance"
            cfg.train.ema = 0.999  # the smoke grid's EMA back then
            assert run_id(cfg) == SMOKE_BEFORE_FIDELITY[c.label()]
            assert c.run_id != SMOKE_BEFORE_FIDELITY[c.label()]


def test_every_key_newer_than_the_frozen_table_says_what_it_meant_before():
    """A checkpoint written before a key existed resumes only if the key's old meaning
    is known (sagan.config.LEGACY_DEFAULTS): without it, every older run would be
    refused as 'changed' the day the key is added."""
    from sagan.config import LEGACY_DEFAULTS, RESUME_SAFE, key_matches

    unknown = [
        k
        for k in current_defaults()
        if not k.startswith("data.")  # the data's identity stands for these
        and not key_matches(k, RESUME_SAFE)
        and k not in FROZEN_DEFAULTS
        and k not in LEGACY_DEFAULTS
    ]
    assert unknown == []


def test_tf32_enters_the_run_id_only_when_switched_on_and_cudnn_benchmark_never():
    base = run_id(build_config(BASE))
    assert run_id(build_config(BASE, {"train.tf32": False})) == base
    assert run_id(build_config(BASE, {"train.tf32": True})) != base
    assert run_id(build_config(BASE, {"train.cudnn_benchmark": False})) == base
