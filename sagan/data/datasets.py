"""Datasets as the training loop and the metrics see them: uint8 ``[3,R,R]`` and a label.

Three sources, chosen by ``data.name``:

- ``synthetic``: :func:`sagan.data.synthetic.make_synthetic` (``data.synthetic.mode: objects``)
  or :func:`sagan.data.mirror.make_mirror` (``mirror``), generated in memory.
- ``cifar10``: torchvision's on-disk format under ``data.root``
  (``ROOT/cifar-10-batches-py/``), never downloaded here.
- ``imagefolder``: one subfolder per class (``torchvision.datasets.ImageFolder``),
  resized (shorter side to R) and center-cropped to R x R.
- ``prepared``: an image folder resized once by ``python -m sagan.prepare`` into
  memory-mapped uint8 arrays under ``data.root`` (:mod:`sagan.data.prepared`): the same
  pixels, labels and batches as the folder, without decoding.

Every problem with the data on disk is raised as a :class:`DataError` that names
the path or config key at fault and what to do about it.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets

from sagan.config import DataConfig
from sagan.data import mirror, synthetic
from sagan.data.folders import (
    DataError,
    FolderImages,
    InMemoryImages,
    check_split,
    imagefolder_dir,
    load_rgb,
)
from sagan.data.hashing import file_digest
from sagan.data.identity import folder_identity

PREFETCH = "python -m sagan.prefetch --data cifar10 --root {root}"


def build_dataset(cfg: DataConfig, split: str = "train") -> Dataset:
    """The dataset named by ``cfg.name`` for ``split`` ("train" or "test").

    Returns:
        A dataset with ``.num_classes`` and items ``(uint8 [3,R,R], int label)``;
        :class:`InMemoryImages` for synthetic and cifar10, :class:`FolderImages`
        for imagefolder. Labels are returned even when ``cfg.conditional`` is false.

    Raises:
        DataError: missing, empty or unreadable data, or a single class with
            ``data.conditional: true``.
    """
    check_split(split)
    if cfg.name == "synthetic":
        s = cfg.synthetic
        make = mirror.make_mirror if s.mode == "mirror" else synthetic.make_synthetic
        images, labels = make(
            s.n_images, cfg.resolution, s.n_classes, synthetic_seed(s.seed, split)
        )
        return InMemoryImages(images, labels, s.n_classes)
    if cfg.name == "cifar10":
        return _cifar10(cfg, split)
    if cfg.name == "imagefolder":
        return _imagefolder(cfg, split)
    if cfg.name == "prepared":
        return _prepared(cfg, split)
    raise DataError(
        f"data.name: unknown dataset {cfg.name!r}; use synthetic, cifar10, imagefolder or prepared"
    )


def synthetic_seed(seed: int, split: str) -> int:
    """The generator seed of a synthetic split: ``seed`` for train, a derived one for test."""
    check_split(split)
    if split == "train":
        return seed
    digest = hashlib.sha256(f"sagan-synthetic-test:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _cifar10_dir(cfg: DataConfig) -> Path:
    folder = Path(cfg.root) / datasets.CIFAR10.base_folder
    if not folder.is_dir():
        raise DataError(
            f"data.root: CIFAR-10 not found: expected the directory {folder} "
            f"(torchvision's cifar-10-batches-py format). Fetch it with: "
            f"{PREFETCH.format(root=cfg.root)}"
        )
    return folder


def _cifar10(cfg: DataConfig, split: str) -> InMemoryImages:
    if cfg.resolution != 32:
        raise DataError(
            f"data.resolution: cifar10 images are 32x32, got {cfg.resolution}; set data.resolution: 32"
        )
    folder = _cifar10_dir(cfg)
    try:
        ds = datasets.CIFAR10(cfg.root, train=split == "train", download=False)
    except RuntimeError as e:
        # torchvision checks the md5 of every batch file: a missing, partial or
        # foreign file lands here.
        raise DataError(
            f"{folder}: CIFAR-10 files are missing or corrupted ({e}). Delete the directory "
            f"and fetch it again with: {PREFETCH.format(root=cfg.root)}"
        ) from None
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DataError(
            f"{folder}: cannot read the CIFAR-10 batch files ({type(e).__name__}: {e})"
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return InMemoryImages(images, labels, 10)


def _imagefolder(cfg: DataConfig, split: str) -> FolderImages:
    folder = imagefolder_dir(cfg, split)
    if not any(p.is_dir() for p in folder.iterdir()):
        raise DataError(
            f"{folder}: no class folders. An imagefolder dataset needs one subfolder per "
            f"class holding its images ({folder}/CLASS/IMAGE.png); put single-class data in "
            f"one subfolder and set data.conditional: false."
        )
    try:
        ds = FolderImages(folder, cfg.resolution)
    except FileNotFoundError as e:
        # torchvision's message names the empty class folder and the extensions it accepts.
        raise DataError(f"{folder}: {e}") from None
    if cfg.conditional and ds.num_classes < 2:
        raise DataError(
            f"{folder}: a single class folder ({ds.classes[0]}) but data.conditional is true. "
            "Set data.conditional: false to train unconditionally, or add class folders."
        )
    _ = ds[0]  # read one image now, so a broken folder fails at start rather than mid-run
    return ds


def _prepared(cfg: DataConfig, split: str) -> InMemoryImages:
    from sagan.data.prepared import open_prepared

    ds = open_prepared(Path(cfg.root), split, cfg.resolution)
    if cfg.conditional and ds.num_classes < 2:
        raise DataError(
            f"{cfg.root}: a single class but data.conditional is true. "
            "Set data.conditional: false to train unconditionally."
        )
    return ds


def dataset_fingerprint(cfg: DataConfig, split: str) -> str:
    """A short stable string identifying the data ``build_dataset(cfg, split)`` reads.

    For keys of caches of dataset statistics. Synthetic: the generator's version and
    parameters. cifar10: md5s of the split's batch files. imagefolder: the sorted
    relative paths and sizes of the split's image files; not their mtimes, so that a
    copied dataset keeps its caches, at the price of missing an edit that keeps a
    file's size. The name, split and resolution are always included. prepared: the
    fingerprint its source folder had (recorded in its ``meta.json``), as the
    same pixels give the same statistics (see :mod:`sagan.data.prepared`).

    Returns:
        ``"<name>-<16 hex digits>"``.
    """
    check_split(split)
    if cfg.name == "prepared":
        from sagan.data.prepared_meta import prepared_identity

        source = prepared_identity(Path(cfg.root), split, cfg.resolution)
        h = hashlib.sha256(f"imagefolder|{split}|{cfg.resolution}|".encode())
        h.update(f"files:{source['files_sha256']}|".encode())
        return f"imagefolder-{h.hexdigest()[:16]}"
    h = hashlib.sha256(f"{cfg.name}|{split}|{cfg.resolution}|".encode())
    if cfg.name == "synthetic":
        s = cfg.synthetic
        h.update(
            f"v{synthetic.VERSION}|{s.n_images}|{s.n_classes}|{synthetic_seed(s.seed, split)}".encode()
        )
        if s.mode != "objects":  # the objects mode's fingerprints predate modes: kept as they were
            h.update(f"|{s.mode}:v{mirror.VERSION}".encode())
    elif cfg.name == "cifar10":
        folder = _cifar10_dir(cfg)
        files = datasets.CIFAR10.train_list if split == "train" else datasets.CIFAR10.test_list
        for name, _ in files:
            path = folder / name
            if not path.is_file():
                raise DataError(
                    f"{path}: missing CIFAR-10 batch file. Fetch it with: {PREFETCH.format(root=cfg.root)}"
                )
            h.update(f"{name}:{file_digest(path, 'md5')}|".encode())
    else:
        # The folder's cached identity (sha256 of every file's relative path and size):
        # stat-ing 1.3M files at every evaluation is what the cache saves. Its key
        # misses a file rewritten in place under the same name; see sagan.data.identity.
        h.update(f"files:{folder_identity(imagefolder_dir(cfg, split))['files_sha256']}|".encode())
    return f"{cfg.name}-{h.hexdigest()[:16]}"


__all__ = [
    "DataError",
    "FolderImages",
    "InMemoryImages",
    "build_dataset",
    "dataset_fingerprint",
    "imagefolder_dir",
    "load_rgb",
    "synthetic_seed",
]


def check_available(cfg: DataConfig, split: str = "train") -> None:
    """Cheaply check that the data ``cfg`` names is on disk, without reading images.

    For checks before anything starts (a grid of runs, a job submission); a run
    still reads and checks its data fully when it builds the dataset.

    Raises:
        DataError: as :func:`build_dataset` would for a missing or malformed layout.
    """
    check_split(split)
    if cfg.name == "cifar10":
        folder = _cifar10_dir(cfg)
        files = datasets.CIFAR10.train_list if split == "train" else datasets.CIFAR10.test_list
        missing = [name for name, _ in files if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"{folder}: missing CIFAR-10 batch files {', '.join(missing)}. "
                f"Fetch them with: {PREFETCH.format(root=cfg.root)}"
            )
    elif cfg.name == "prepared":
        from sagan.data.prepared_meta import read_meta, split_meta

        split_meta(read_meta(Path(cfg.root)), Path(cfg.root), split, cfg.resolution)
    elif cfg.name == "imagefolder":
        folder = imagefolder_dir(cfg, split)
        classes = [p for p in folder.iterdir() if p.is_dir()]
        if not classes:
            raise DataError(f"{folder}: no class folders ({folder}/CLASS/IMAGE.png expected)")
        if cfg.conditional and len(classes) < 2:
            raise DataError(
                f"{folder}: a single class folder but data.conditional is true; "
                "set data.conditional: false or add class folders."
            )
