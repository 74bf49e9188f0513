"""What a run's training data is, independent of where it lies.

A run records the identity of its data when it starts and refuses to resume on
other data; the ablation store hashes it into the run id, so that two datasets never
share a run and the same folder copied elsewhere keeps its runs.

- ``synthetic``: the generator's version and parameters (no I/O).
- ``cifar10``: the md5s torchvision checks every batch file against when it loads
  them (no I/O: files that differ from these never load).
- ``imagefolder``: the class names, the image count, and a sha256 of every image's
  relative path and size, the files ``torchvision.datasets.ImageFolder`` reads.
- ``prepared``: the identity its source folder had when it was prepared (same
  digest: the same data stored otherwise, see :mod:`sagan.data.prepared`), plus a
  ``stored_as`` entry outside the digest that says so.

Walking a large folder (ImageNet: 1.3M files) takes minutes on a shared file
system, so an imagefolder identity is cached per process and on disk under a key of
the folder's resolved path, its number of image files and the newest mtime of the
folder and its subfolders. Listing names and stat-ing folders is cheap; stat-ing
every file is what the cache saves. The key changes when a file is added, removed
or renamed, not when one is rewritten in place under the same name: for that, touch
the class folder or delete the cache entry (``$SAGAN_BENCH_DATA_CACHE``, default
``~/.cache/sagan-bench/data``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from torchvision import datasets

from sagan.config import DataConfig
from sagan.data import mirror, synthetic

log = logging.getLogger(__name__)

CACHE_ENV = "SAGAN_BENCH_DATA_CACHE"
_FORMAT = 1
_memory: dict[str, dict[str, Any]] = {}


def cache_dir() -> Path:
    """``$SAGAN_BENCH_DATA_CACHE``, or ``~/.cache/sagan-bench/data``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "sagan-bench" / "data"


def digest(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_identity(cfg: DataConfig) -> dict[str, Any]:
    """The identity of the training split ``cfg`` names, with its ``digest``.

    Returns:
        A JSON-able dict; equal dicts (equal ``digest``) mean the same data.

    Raises:
        DataError: an imagefolder root that is missing or malformed.
    """
    if cfg.name == "synthetic":
        s = cfg.synthetic
        ident: dict[str, Any] = {
            "name": "synthetic",
            "version": synthetic.VERSION,
            "n_images": s.n_images,
            "n_classes": s.n_classes,
            "seed": s.seed,
        }
        if s.mode != "objects":  # the objects mode's identities predate modes: kept as they were
            ident.update(mode=s.mode, version=mirror.VERSION)
    elif cfg.name == "cifar10":
        ident = {
            "name": "cifar10",
            "md5": {name: md5 for name, md5 in datasets.CIFAR10.train_list},
        }
    elif cfg.name == "prepared":
        from sagan.data.prepared_meta import prepared_identity

        ident = prepared_identity(Path(cfg.root), "train", cfg.resolution)
        stored = {"stored_as": f"prepared at {cfg.resolution}x{cfg.resolution}"}
        return {**ident, "digest": digest(ident), **stored}
    else:
        from sagan.data.folders import imagefolder_dir

        ident = _folder_identity(imagefolder_dir(cfg, "train"))
    return {**ident, "digest": digest(ident)}


def describe(ident: dict[str, Any] | None) -> str:
    """One line for people: ``imagefolder, 1000 classes, 1281167 images (digest 3fa2...)``."""
    if not ident:
        return "unknown (the checkpoint predates data identities)"
    if ident["name"] == "imagefolder":
        what = f"{ident['n_classes']} classes, {ident['n_images']} images"
    elif ident["name"] == "synthetic":
        what = f"{ident['n_images']} images, {ident['n_classes']} classes, seed {ident['seed']}"
        if "mode" in ident:
            what = f"{ident['mode']} mode, {what}"
    else:
        what = "torchvision's CIFAR-10 files"
    return f"{ident['name']}, {what} (digest {ident['digest']})"


def list_image_files(folder: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file ``ImageFolder`` would read, sorted."""
    out = []
    for dirpath, _, names in os.walk(folder, followlinks=True):
        if Path(dirpath) == folder:
            continue  # ImageFolder reads class subfolders only
        for name in names:
            if name.lower().endswith(datasets.folder.IMG_EXTENSIONS):
                path = Path(dirpath) / name
                out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
    return sorted(out)


def _cache_key(folder: Path) -> str:
    """Resolved path, image count and newest folder mtime: no file is stat-ed."""
    n, newest = 0, 0
    for dirpath, _, names in os.walk(folder, followlinks=True):
        newest = max(newest, os.stat(dirpath).st_mtime_ns)
        if Path(dirpath) != folder:
            n += sum(name.lower().endswith(datasets.folder.IMG_EXTENSIONS) for name in names)
    return digest([_FORMAT, str(folder.resolve()), n, newest])


def folder_identity(folder: Path) -> dict[str, Any]:
    """The identity of one image folder (classes, image count, files' sha256), from the
    cache when its key matches: what training and evaluation use to avoid re-stat-ing
    every file of a large folder."""
    return _folder_identity(Path(folder))


def _folder_identity(folder: Path) -> dict[str, Any]:
    key = _cache_key(folder)
    if key in _memory:
        return _memory[key]
    path = cache_dir() / f"imagefolder-{key}.json"
    try:
        ident = json.loads(path.read_text())
    except (OSError, ValueError):
        ident = None
    if not isinstance(ident, dict) or "files_sha256" not in ident:
        files = list_image_files(folder)
        h = hashlib.sha256()
        for rel, size in files:
            h.update(f"{rel}:{size}|".encode())
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        ident = {
            "name": "imagefolder",
            "classes": classes,
            "n_classes": len(classes),
            "n_images": len(files),
            "files_sha256": h.hexdigest(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(ident) + "\n")
            os.replace(tmp, path)
        except OSError as e:  # a read-only home costs a re-walk, nothing else
            log.warning("could not cache the data identity in %s (%s)", path.parent, e)
    _memory[key] = ident
    return ident


__all__ = [
    "cache_dir",
    "data_identity",
    "describe",
    "digest",
    "folder_identity",
    "list_image_files",
]
