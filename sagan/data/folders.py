"""Where images live and how they are read: the errors, the image-folder layout, and
the two dataset classes every source returns.

The bottom of ``sagan.data``: :mod:`sagan.data.identity`, :mod:`sagan.data.prepared` and
:mod:`sagan.data.datasets` all build on it, and it imports none of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from sagan.config import DataConfig

SPLITS = ("train", "test")


class DataError(Exception):
    """A problem with the data, phrased for a person: what, where, what to do."""


class InMemoryImages(Dataset):
    """Images held in one uint8 tensor; :class:`sagan.data.batches.Batches` indexes it directly.

    Args:
        images: uint8 ``[N, 3, R, R]``.
        labels: int64 ``[N]``, in ``0 .. num_classes - 1``.
        num_classes: number of classes (labels are kept even for unconditional runs).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be uint8 [N, 3, R, R], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


class FolderImages(datasets.ImageFolder):
    """``torchvision.datasets.ImageFolder`` yielding uint8 ``[3,R,R]`` and a ``num_classes``."""

    def __init__(self, root: Path, resolution: int):
        super().__init__(
            str(root),
            transform=transforms.Compose(
                [
                    transforms.Resize(resolution, antialias=True),
                    transforms.CenterCrop(resolution),
                    transforms.PILToTensor(),
                ]
            ),
            loader=load_rgb,
        )
        self.num_classes = len(self.classes)


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; a file PIL cannot read raises a DataError naming it."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(
            f"{path}: cannot read this image ({type(e).__name__}: {e}). "
            "Replace or delete the file (it may be truncated or not an image)."
        ) from None


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected 'train' or 'test'")


def imagefolder_dir(cfg: DataConfig, split: str) -> Path:
    """The folder an imagefolder split is read from.

    If ``ROOT/train`` and ``ROOT/val`` both exist they are the train and test
    splits. Otherwise ROOT itself is the train split, and the test split is a
    sibling ``val`` folder when ROOT is named ``train`` (``imagenet/train`` next to
    ``imagenet/val``); with neither layout, asking for the test split is an error.
    """
    check_split(split)
    root = Path(cfg.root)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise DataError(
            f"data.root: {root} {what}. Point data.root at a folder with one subfolder of images per class."
        )
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / ("train" if split == "train" else "val")
    if split == "train":
        return root
    if root.name == "train" and (root.parent / "val").is_dir():
        return root.parent / "val"
    raise DataError(
        f"data.root: {root} has no test split: expected {root}/train and {root}/val, or a "
        f"sibling {root.parent / 'val'} when data.root is a folder named train. Lay the data "
        "out so, or evaluate against the training images (eval.reference.split: train)."
    )
