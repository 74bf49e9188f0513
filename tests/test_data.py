"""Building datasets: synthetic, cifar10 through torchvision's loader, image folders."""

import os
import re
import time

import pytest
import torch
from PIL import Image

from sagan.config import DataConfig
from sagan.data.datasets import (
    DataError,
    FolderImages,
    InMemoryImages,
    build_dataset,
    dataset_fingerprint,
)
from sagan.data.synthetic import consistency
from tests.datafiles import (
    BORDER,
    CLASS_COLOURS,
    accept_cifar10_md5s,
    write_tiny_cifar10,
    write_tiny_imagefolder,
)


def synthetic_cfg(**kw):
    return DataConfig(
        name="synthetic", resolution=32, synthetic={"n_images": 64, "n_classes": 3, "seed": 7, **kw}
    )


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    tiny = write_tiny_cifar10(tmp_path, n_train=23, n_test=9)
    accept_cifar10_md5s(monkeypatch, tiny.md5s)
    return DataConfig(name="cifar10", root=str(tmp_path), resolution=32), tiny


def folder_cfg(root, resolution=32, conditional=True):
    return DataConfig(
        name="imagefolder", root=str(root), resolution=resolution, conditional=conditional
    )


# --- synthetic ---------------------------------------------------------------------


def test_synthetic_is_in_memory_with_config_shape():
    ds = build_dataset(synthetic_cfg(), "train")
    assert isinstance(ds, InMemoryImages)
    assert len(ds) == 64 and ds.num_classes == 3
    assert ds.images.shape == (64, 3, 32, 32) and ds.images.dtype == torch.uint8
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and isinstance(y, int)
    assert consistency(ds.images).all()


def test_synthetic_test_split_differs_from_train_and_is_stable():
    train = build_dataset(synthetic_cfg(), "train")
    test = build_dataset(synthetic_cfg(), "test")
    assert not torch.equal(train.images, test.images)
    assert torch.equal(test.images, build_dataset(synthetic_cfg(), "test").images)


def test_unknown_split_is_a_data_error():
    with pytest.raises(DataError, match="'val'"):
        build_dataset(synthetic_cfg(), "val")


def test_synthetic_fingerprint_follows_generator_params():
    fp = dataset_fingerprint(synthetic_cfg(), "train")
    assert fp == dataset_fingerprint(synthetic_cfg(), "train")
    assert fp.startswith("synthetic-")
    assert fp != dataset_fingerprint(synthetic_cfg(seed=8), "train")
    assert fp != dataset_fingerprint(synthetic_cfg(n_images=65), "train")
    assert fp != dataset_fingerprint(synthetic_cfg(), "test")


# --- cifar10 -----------------------------------------------------------------------


def test_cifar10_loads_through_torchvision(cifar):
    cfg, tiny = cifar
    train = build_dataset(cfg, "train")
    test = build_dataset(cfg, "test")
    assert isinstance(train, InMemoryImages) and train.num_classes == 10
    assert len(train) == 23 and len(test) == 9
    assert train.images.dtype == torch.uint8 and train.images.shape == (23, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(tiny.train_images))
    assert torch.equal(test.images, torch.from_numpy(tiny.test_images))
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == tiny.train_labels.tolist()
    x, y = test[3]
    assert x.shape == (3, 32, 32) and y == int(tiny.test_labels[3])


def test_cifar10_missing_names_directory_and_prefetch_command(tmp_path):
    cfg = DataConfig(name="cifar10", root=str(tmp_path / "nowhere"), resolution=32)
    with pytest.raises(DataError) as e:
        build_dataset(cfg)
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg
    assert f"python -m sagan.prefetch --data cifar10 --root {tmp_path / 'nowhere'}" in msg


def test_cifar10_corrupted_file_is_a_data_error(cifar):
    cfg, _ = cifar
    batch = os.path.join(cfg.root, "cifar-10-batches-py", "data_batch_3")
    with open(batch, "ab") as f:
        f.write(b"extra")
    with pytest.raises(DataError, match="missing or corrupted.*sagan.prefetch"):
        build_dataset(cfg)


def test_cifar10_fingerprint_changes_with_files(tmp_path, cifar):
    cfg, _ = cifar
    fp = dataset_fingerprint(cfg, "train")
    assert fp == dataset_fingerprint(cfg, "train") and fp.startswith("cifar10-")
    assert fp != dataset_fingerprint(cfg, "test")
    write_tiny_cifar10(cfg.root, n_train=23, n_test=9, seed=1)
    assert fp != dataset_fingerprint(cfg, "train")


# --- imagefolder -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_imagefolder_resizes_and_center_crops(tmp_path, fmt):
    write_tiny_imagefolder(tmp_path, n_classes=3, n_per_class=4, size=(80, 40), fmt=fmt)
    ds = build_dataset(folder_cfg(tmp_path), "train")
    assert isinstance(ds, FolderImages)
    assert len(ds) == 12 and ds.num_classes == 3
    tol = 2 if fmt == "png" else 12
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert y == i // 4
        # the border columns are cropped away: only the class colour is left
        expected = torch.tensor(CLASS_COLOURS[y]).view(3, 1, 1)
        assert (x.int() - expected).abs().max() <= tol


def test_imagefolder_without_crop_would_keep_the_border(tmp_path):
    """Guards the test above: the border survives a plain resize, so its absence means a crop."""
    write_tiny_imagefolder(tmp_path, n_classes=2, n_per_class=1, size=(80, 40))
    img = Image.open(tmp_path / "class_0" / "img_000.png").resize((32, 32))
    assert img.getpixel((0, 16)) == BORDER


def test_imagefolder_uses_train_and_val_subfolders(tmp_path):
    write_tiny_imagefolder(tmp_path / "train", n_classes=2, n_per_class=3, size=(40, 40))
    write_tiny_imagefolder(tmp_path / "val", n_classes=2, n_per_class=1, size=(40, 40))
    assert len(build_dataset(folder_cfg(tmp_path), "train")) == 6
    assert len(build_dataset(folder_cfg(tmp_path), "test")) == 2
    # data.root pointing at .../train finds the sibling val folder
    assert len(build_dataset(folder_cfg(tmp_path / "train"), "test")) == 2


def test_imagefolder_without_val_has_no_test_split(tmp_path):
    write_tiny_imagefolder(tmp_path, n_classes=2, n_per_class=2, size=(40, 40))
    with pytest.raises(DataError, match="no test split.*eval.reference.split: train"):
        build_dataset(folder_cfg(tmp_path), "test")


def test_imagefolder_missing_root(tmp_path):
    with pytest.raises(
        DataError, match=re.escape(f"data.root: {tmp_path / 'absent'} does not exist")
    ):
        build_dataset(folder_cfg(tmp_path / "absent"))


def test_imagefolder_without_class_folders(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        build_dataset(folder_cfg(tmp_path))


def test_imagefolder_with_empty_class_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=re.escape(str(tmp_path)) + ".*no valid file"):
        build_dataset(folder_cfg(tmp_path))


def test_single_class_needs_conditional_false(tmp_path):
    write_tiny_imagefolder(tmp_path, n_classes=1, n_per_class=3, size=(40, 40))
    with pytest.raises(DataError, match="data.conditional: false"):
        build_dataset(folder_cfg(tmp_path))
    ds = build_dataset(folder_cfg(tmp_path, conditional=False))
    assert ds.num_classes == 1 and len(ds) == 3


def test_unreadable_first_image_fails_at_build_time(tmp_path):
    write_tiny_imagefolder(tmp_path, n_classes=2, n_per_class=2, size=(40, 40))
    broken = tmp_path / "class_0" / "000_broken.png"
    broken.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot read this image")):
        build_dataset(folder_cfg(tmp_path))


def test_unreadable_later_image_names_its_path(tmp_path):
    write_tiny_imagefolder(tmp_path, n_classes=2, n_per_class=2, size=(40, 40))
    broken = tmp_path / "class_1" / "zzz_broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    ds = build_dataset(folder_cfg(tmp_path))
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot read this image")):
        ds[len(ds) - 1]


def test_imagefolder_fingerprint_changes_when_a_file_changes(tmp_path):
    paths = write_tiny_imagefolder(tmp_path, n_classes=2, n_per_class=2, size=(40, 40))
    cfg = folder_cfg(tmp_path)
    fp = dataset_fingerprint(cfg, "train")
    assert fp == dataset_fingerprint(cfg, "train") and fp.startswith("imagefolder-")
    assert fp != dataset_fingerprint(folder_cfg(tmp_path, resolution=64), "train")
    Image.new("RGB", (41, 40), (1, 2, 3)).save(paths[0])
    # The fingerprint comes from the folder's cached identity, keyed by the folders'
    # mtimes: a file rewritten in place is seen once its folder is touched (docs/training.md).
    os.utime(paths[0].parent, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = dataset_fingerprint(cfg, "train")
    assert changed != fp
    (tmp_path / "class_1" / "extra.png").write_bytes(paths[1].read_bytes())
    assert dataset_fingerprint(cfg, "train") != changed
