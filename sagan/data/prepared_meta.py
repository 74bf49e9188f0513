"""A prepared dataset's ``meta.json``: its format, and reading and checking it.

Apart from :mod:`sagan.data.prepared` (which writes and opens the arrays) so that the
data identity can read where a prepared folder came from without importing the
writer, which itself records folder identities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sagan.data.folders import DataError

FORMAT = "sagan-prepared"
VERSION = 1
META = "meta.json"


def read_meta(root: Path) -> dict[str, Any]:
    """``root/meta.json``, checked: the format, version and keys this reader needs.

    Raises:
        DataError: missing, unparsable or foreign metadata, naming the file and the key.
    """
    path = Path(root) / META
    if not Path(root).is_dir():
        what = "is a file, not a directory" if Path(root).exists() else "does not exist"
        raise DataError(
            f"data.root: {root} {what}. Make it with: python -m sagan.prepare IMAGE_FOLDER {root} --resolution R"
        )
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path}: missing: {root} is not a prepared dataset (or its prepare did not finish). "
            f"Make it with: python -m sagan.prepare IMAGE_FOLDER {root} --resolution R"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: cannot read it as JSON ({e}); prepare the dataset again"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise DataError(f"{path}: format: expected {FORMAT!r}, got {got!r}")
    if meta.get("version") != VERSION:
        raise DataError(
            f"{path}: version: this code reads version {VERSION}, got {meta.get('version')!r}; prepare again"
        )
    for key, kind in (("resolution", int), ("splits", dict)):
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{path}: {key}: expected {kind.__name__}, got {meta.get(key)!r}")
    return meta


def split_meta(meta: dict[str, Any], root: Path, split: str, resolution: int) -> dict[str, Any]:
    """One split's entry of ``meta``, checked against the config's resolution."""
    path = Path(root) / META
    if meta["resolution"] != resolution:
        raise DataError(
            f"data.resolution: {resolution}, but {path} holds {meta['resolution']}x{meta['resolution']} "
            f"images; set data.resolution: {meta['resolution']} or prepare again with --resolution {resolution}"
        )
    if split not in meta["splits"]:
        raise DataError(
            f"{path}: no {split!r} split (it has {', '.join(meta['splits']) or 'none'}): its folder had "
            "none; evaluate against the training images (eval.reference.split: train)"
        )
    s = meta["splits"][split]
    r = meta["resolution"]
    need = {
        "n_images": int,
        "classes": list,
        "images_sha256": str,
        "labels_sha256": str,
        "source": dict,
    }
    for key, kind in need.items():
        if not isinstance(s.get(key), kind):
            raise DataError(
                f"{path}: splits.{split}.{key}: expected {kind.__name__}, got {s.get(key)!r}"
            )
    if s.get("shape") != [s["n_images"], 3, r, r]:
        raise DataError(
            f"{path}: splits.{split}.shape: expected {[s['n_images'], 3, r, r]}, got {s.get('shape')!r}"
        )
    return s


def prepared_identity(root: Path, split: str, resolution: int) -> dict[str, Any]:
    """The source folder's identity recorded in ``meta.json`` (see the module docstring)."""
    root = Path(root)
    return split_meta(read_meta(root), root, split, resolution)["source"]


__all__ = ["FORMAT", "META", "VERSION", "prepared_identity", "read_meta", "split_meta"]
