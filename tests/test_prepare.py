"""Prepared datasets (``python -m sagan.prepare``): the folder's pixels, batches, identity
and training, bit for bit; and bad input refused before anything trains."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ablations.runid import run_id
from sagan.config import DataConfig, build_config
from sagan.data import identity as di
from sagan.data.datasets import DataError, build_dataset, dataset_fingerprint
from sagan.data.identity import data_identity
from sagan.data.prepared import array_files
from sagan.data.prepared_meta import META
from sagan.prepare import main as prepare_main
from sagan.train import train
from tests.test_resume import BASE, _assert_same_end


def _write_noise_folder(root, n_classes=2, n_per_class=16):
    """Random-pixel images of uneven sizes, so the resize and the crop both matter."""
    rng = np.random.default_rng(0)
    for k in range(n_classes):
        (root / "train" / f"c{k}").mkdir(parents=True)
        (root / "val" / f"c{k}").mkdir(parents=True)
        for i in range(n_per_class):
            w, h = 36 + 3 * i, 60 - 2 * i
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "train" / f"c{k}" / f"{i:02d}.png"
            )
        Image.fromarray(rng.integers(0, 256, (41, 33, 3), dtype=np.uint8)).save(
            root / "val" / f"c{k}" / "v.jpg"
        )


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    monkeypatch.setenv(di.CACHE_ENV, str(tmp_path / "cache"))
    folder, out = tmp_path / "images", tmp_path / "prepared"
    _write_noise_folder(folder)
    assert prepare_main([str(folder), str(out), "--resolution", "32"]) == 0
    return folder, out


def _cfg(name, root, **overrides):
    return build_config(BASE, {"data.name": name, "data.root": str(root), **overrides})


def test_prepared_items_identity_and_fingerprint_equal_the_folders(prepared):
    folder, out = prepared
    for split in ("train", "test"):
        a = build_dataset(_cfg("imagefolder", folder).data, split)
        b = build_dataset(_cfg("prepared", out).data, split)
        assert len(a) == len(b) and a.num_classes == b.num_classes
        for i in range(len(a)):
            assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1], (split, i)
        assert dataset_fingerprint(_cfg("imagefolder", folder).data, split) == dataset_fingerprint(
            _cfg("prepared", out).data, split
        )
    ia, ib = (
        data_identity(_cfg("imagefolder", folder).data),
        data_identity(_cfg("prepared", out).data),
    )
    assert ia["digest"] == ib["digest"] and ib["stored_as"] == "prepared at 32x32"
    assert run_id(_cfg("imagefolder", folder)) == run_id(_cfg("prepared", out))


def test_a_prepared_dataset_trains_bit_identically_to_its_folder(prepared, tmp_path):
    folder, out = prepared
    steps = {"train.steps": 6, "train.ckpt_every": 6, "train.log_every": 1}
    assert train(_cfg("imagefolder", folder, **steps), tmp_path / "a", progress=False) == "done"
    assert train(_cfg("prepared", out, **steps), tmp_path / "b", progress=False) == "done"
    _assert_same_end(tmp_path / "a", tmp_path / "b")


def test_a_run_begun_on_the_folder_resumes_on_its_prepared_copy(prepared, tmp_path):
    folder, out = prepared
    few = {"train.steps": 4, "train.ckpt_every": 4}
    assert train(_cfg("imagefolder", folder, **few), tmp_path / "r", progress=False) == "done"
    more = {"train.steps": 8, "train.ckpt_every": 4}
    assert train(_cfg("prepared", out, **more), tmp_path / "r", progress=False) == "done"
    assert train(_cfg("imagefolder", folder, **more), tmp_path / "full", progress=False) == "done"
    _assert_same_end(tmp_path / "full", tmp_path / "r")


def _truncate(out):
    images, _ = array_files(out, "train")
    images.write_bytes(images.read_bytes()[:-100])
    return rf"{images}: \d+ bytes, expected \d+"


def _corrupt(out):
    images, _ = array_files(out, "train")
    raw = bytearray(images.read_bytes())
    raw[1234] ^= 0xFF
    images.write_bytes(bytes(raw))
    return rf"{images}: sha256 .*changed or is corrupted"


def _foreign_format(out):
    meta = json.loads((out / META).read_text())
    (out / META).write_text(json.dumps({**meta, "format": "npz"}))
    return rf"{out / META}: format: expected 'sagan-prepared', got 'npz'"


def _bad_shape(out):
    meta = json.loads((out / META).read_text())
    meta["splits"]["train"]["shape"] = [5, 3, 32, 32]
    (out / META).write_text(json.dumps(meta))
    return rf"{out / META}: splits.train.shape: expected \[32, 3, 32, 32\], got \[5, 3, 32, 32\]"


def _no_meta(out):
    (out / META).unlink()
    return rf"{out / META}: missing"


def _unparsable_meta(out):
    (out / META).write_text("{not json")
    return rf"{out / META}: cannot read it as JSON"


@pytest.mark.parametrize(
    "damage", [_truncate, _corrupt, _foreign_format, _bad_shape, _no_meta, _unparsable_meta]
)
def test_a_damaged_prepared_dataset_is_refused_naming_file_and_value(prepared, tmp_path, damage):
    _, out = prepared
    want = damage(out)
    with pytest.raises(DataError, match=want):
        train(_cfg("prepared", out), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def test_a_resolution_other_than_the_prepared_one_is_refused_before_training(prepared, tmp_path):
    _, out = prepared
    cfg = _cfg("prepared", out, **{"data.resolution": 64, "model.attn_g": [32]})
    with pytest.raises(DataError, match=r"data.resolution: 64, but .*meta.json holds 32x32"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_prepare_refuses_a_missing_folder_and_an_existing_output(prepared, tmp_path, capsys):
    folder, out = prepared
    assert prepare_main([str(tmp_path / "nope"), str(tmp_path / "o"), "--resolution", "32"]) == 2
    assert f"IMAGE_FOLDER: {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert prepare_main([str(folder), str(out), "--resolution", "32"]) == 2
    assert f"{out / META} exists" in capsys.readouterr().err


def test_a_copied_prepared_root_is_verified_again_and_loads(prepared, tmp_path):
    _, out = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ds = build_dataset(DataConfig(name="prepared", root=str(copy), resolution=32), "train")
    assert len(ds) == 32
