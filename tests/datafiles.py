"""Write small fake datasets in the real on-disk formats, for tests.

``write_tiny_cifar10`` writes torchvision's CIFAR-10 pickles; torchvision checks
their md5s against a hard-coded table, so tests pass the returned md5s to
``accept_cifar10_md5s`` (with pytest's ``monkeypatch``), which points that table at
the files just written. Everything else about loading stays real.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import CIFAR10

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

# Solid colours for imagefolder classes, and the border colour the center crop must remove.
CLASS_COLOURS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (200, 200, 30),
    (30, 200, 200),
    (200, 30, 200),
    (230, 230, 230),
    (110, 110, 110),
]
BORDER = (255, 0, 255)


@dataclass
class TinyCifar10:
    """What ``write_tiny_cifar10`` wrote: md5s by file name, and the images (NCHW uint8)."""

    md5s: dict[str, str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    entry = {
        "batch_label": name,
        "labels": [int(x) for x in labels],
        "data": images.reshape(len(images), -1),  # rows of 3072: R plane, G plane, B plane
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def write_tiny_cifar10(
    root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> TinyCifar10:
    """Write ``ROOT/cifar-10-batches-py/`` with random images in torchvision's format.

    The ``n_train`` training images are spread over ``data_batch_1..5``; labels are
    random in 0..9.

    Returns:
        The md5 of every written file and the images and labels written.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    train_images = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    train_labels = rng.integers(0, 10, n_train)
    test_images = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    test_labels = rng.integers(0, 10, n_test)
    parts = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(parts, start=1):
        _write_batch(
            folder / f"data_batch_{i}",
            train_images[idx],
            train_labels[idx],
            f"training batch {i} of 5",
        )
    _write_batch(folder / "test_batch", test_images, test_labels, "testing batch 1 of 1")
    meta = {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": len(parts[0]), "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    md5s = {p.name: _md5(p) for p in sorted(folder.iterdir())}
    return TinyCifar10(md5s, train_images, train_labels, test_images, test_labels)


def accept_cifar10_md5s(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Make torchvision's CIFAR10 integrity check expect the md5s of the files written."""
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


def write_tiny_imagefolder(
    root: str | Path,
    n_classes: int,
    n_per_class: int,
    size: int | tuple[int, int] = (80, 40),
    fmt: str = "png",
) -> list[Path]:
    """Write ``ROOT/class_K/img_I.<fmt>`` images of ``size`` (width, height).

    Each image is filled with its class's colour from ``CLASS_COLOURS``, except the
    leftmost and rightmost eighth of its columns, which are ``BORDER``. With a wide
    image (the default 80x40), resizing the shorter side to R and center-cropping
    R x R removes the border: what comes back is the class colour alone.

    Returns:
        The written paths, sorted.
    """
    w, h = (size, size) if isinstance(size, int) else size
    paths = []
    for k in range(n_classes):
        folder = Path(root) / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = np.empty((h, w, 3), dtype=np.uint8)
            pixels[:] = CLASS_COLOURS[k % len(CLASS_COLOURS)]
            b = w // 8
            pixels[:, :b] = BORDER
            pixels[:, w - b :] = BORDER
            path = folder / f"img_{i:03d}.{fmt}"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return sorted(paths)
