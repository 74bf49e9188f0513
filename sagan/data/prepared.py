"""Prepared datasets: an image folder resized once into uint8 arrays at one resolution.

Written by ``python -m sagan.prepare`` (:func:`write_prepared`), read with
``data.name: prepared`` and ``data.root: OUT`` (:func:`open_prepared`). A prepared
root holds, per split it was made from (``train``, and ``test`` when the folder has
one, found as :func:`sagan.data.folders.imagefolder_dir` finds it):

- ``SPLIT.images.u8``: uint8 ``[N, 3, R, R]``, C order, memory-mapped on read;
- ``SPLIT.labels.i64``: int64 ``[N]``, little-endian;
- ``meta.json``: the format version, the resolution, the transform and the library
  versions that produced the pixels, and per split its shape, classes, the sha256 of
  both arrays and the identity of the source folder
  (:func:`sagan.data.identity.folder_identity`). Written last, so a prepare that
  stopped part way leaves no ``meta.json``.

The pixels are those :class:`sagan.data.folders.FolderImages` yields (the same PIL decode,
``Resize(R, antialias=True)`` of the shorter side, ``CenterCrop(R)``), item by item
in the folder's order, so the same indices give the same images and labels.

Identity. A prepared split *is* its source folder's data, stored otherwise (the
test in ``tests/test_prepare.py`` trains both bit for bit alike). Its data identity
is therefore the source folder's, recorded at prepare time, and so are its run ids
and its reference-statistics fingerprint: a folder and its prepared copy share runs
and caches, which is correct because they hold the same pixels. What guards that
claim is the arrays' sha256 in ``meta.json``, checked on first use of each file
version (size always; content once per path, size and mtime, cached beside the
folder identities), so an array edited, truncated or corrupted after preparing is
refused instead of being trusted under the folder's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sagan.data.folders import DataError, FolderImages, InMemoryImages, imagefolder_dir
from sagan.data.prepared_meta import FORMAT, META, VERSION, read_meta, split_meta

TRANSFORM = "PIL RGB decode, Resize(R, antialias=True) of the shorter side, CenterCrop(R)"
_verified: set[str] = set()


def array_files(root: Path, split: str) -> tuple[Path, Path]:
    """``(images, labels)`` paths of one split under a prepared root."""
    return root / f"{split}.images.u8", root / f"{split}.labels.i64"


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import PIL
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
    }


def write_prepared(
    folder: Path, out: Path, resolution: int, num_workers: int = 0, batch_size: int = 64
) -> dict[str, Any]:
    """Resize ``folder`` (an imagefolder ``data.root``) into a prepared root ``out``.

    Returns:
        The ``meta.json`` written.

    Raises:
        DataError: ``folder`` missing or not an image folder, ``out`` already
            prepared, or an unreadable image (named).
    """
    from sagan.config import DataConfig
    from sagan.data.identity import folder_identity

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        what = "is a file, not a directory" if folder.exists() else "does not exist"
        raise DataError(
            f"IMAGE_FOLDER: {folder} {what}; give a folder with one subfolder per class"
        )
    if (out / META).exists():
        raise DataError(
            f"OUT: {out / META} exists: {out} is already prepared; remove it or pick another OUT"
        )
    out.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig(name="imagefolder", root=str(folder), resolution=resolution, conditional=False)
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        try:
            src = imagefolder_dir(cfg, split)
        except DataError:
            if split == "train":
                raise
            continue  # no test split in this layout
        if not any(p.is_dir() for p in src.iterdir()):
            raise DataError(f"{src}: no class folders ({src}/CLASS/IMAGE.png expected)")
        ds = FolderImages(src, resolution)
        splits[split] = _write_split(ds, src, out, split, resolution, num_workers, batch_size)
        splits[split]["source"] = folder_identity(src)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "resolution": resolution,
        "transform": TRANSFORM,
        "versions": _versions(),
        "splits": splits,
    }
    tmp = out / f".{META}.{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out / META)
    return meta


def _write_split(
    ds: FolderImages, src: Path, out: Path, split: str, r: int, num_workers: int, batch_size: int
) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    n = len(ds)
    images_path, labels_path = array_files(out, split)
    images = np.memmap(images_path, dtype=np.uint8, mode="w+", shape=(n, 3, r, r))
    labels = np.empty(n, dtype="<i8")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    i = 0
    for x, y in loader:  # in index order: item k of the folder is row k
        images[i : i + len(x)] = x.numpy()
        labels[i : i + len(x)] = y.numpy()
        i += len(x)
    images.flush()
    del images
    labels.tofile(labels_path)
    return {
        "n_images": n,
        "shape": [n, 3, r, r],
        "classes": list(ds.classes),
        "images_sha256": _sha256(images_path),
        "labels_sha256": _sha256(labels_path),
        "folder": str(src),
    }


def _check_file(path: Path, size: int, sha256: str) -> None:
    from sagan.data.identity import cache_dir, digest

    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; prepare the dataset again") from None
    if st.st_size != size:
        raise DataError(
            f"{path}: {st.st_size} bytes, expected {size} (meta.json's shape): the file is "
            "truncated or not this dataset's; prepare the dataset again"
        )
    key = digest([str(path.resolve()), st.st_size, st.st_mtime_ns, sha256])
    marker = cache_dir() / f"prepared-{key}.ok"
    if key in _verified or marker.exists():
        _verified.add(key)
        return
    got = _sha256(path)
    if got != sha256:
        raise DataError(
            f"{path}: sha256 {got[:16]}..., expected {sha256[:16]}... (meta.json): the array "
            "changed or is corrupted since it was prepared; prepare the dataset again"
        )
    _verified.add(key)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{path}\n")
    except OSError:
        pass  # an unwritable cache costs a re-hash next process, nothing else


def open_prepared(root: Path, split: str, resolution: int) -> InMemoryImages:
    """The prepared split as an :class:`InMemoryImages` over a memory-mapped array,
    which :class:`sagan.data.batches.Batches` indexes directly (no workers, no decoding).

    Raises:
        DataError: bad metadata, a resolution other than the config's, or an array
            missing, truncated or changed since preparing (each naming the file).
    """
    root = Path(root)
    meta = read_meta(root)
    s = split_meta(meta, root, split, resolution)
    images_path, labels_path = array_files(root, split)
    n, r = s["n_images"], meta["resolution"]
    _check_file(images_path, n * 3 * r * r, s["images_sha256"])
    _check_file(labels_path, n * 8, s["labels_sha256"])
    # mode "c": copy-on-write, so torch gets a writable view and nothing reaches the file.
    images = torch.from_numpy(np.memmap(images_path, dtype=np.uint8, mode="c", shape=(n, 3, r, r)))
    labels = torch.from_numpy(np.fromfile(labels_path, dtype="<i8"))
    k = len(s["classes"])
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise DataError(f"{labels_path}: labels outside 0..{k - 1} (meta.json lists {k} classes)")
    return InMemoryImages(images, labels, k)


__all__ = [
    "array_files",
    "open_prepared",
    "write_prepared",
]
