"""Fetch what evaluation and training read from disk, on a machine with internet.

Run on a login node before submitting jobs to nodes without internet::

    python -m sagan.prefetch                            # everything, data under ./data
    python -m sagan.prefetch --weights                  # Inception weights only
    python -m sagan.prefetch --dinov2 [vit-l-14]        # DINOv2 weights only (fd_dinov2)
    python -m sagan.prefetch --data cifar10 --root /scratch/data

``--weights`` downloads torch-fidelity's ``inception-v3-compat`` weights to where
evaluation looks by default (torch.hub's cache, honouring ``TORCH_HOME``) and checks
the sha256 prefix in the file name. ``--dinov2`` downloads the official DINOv2
checkpoint (ViT-L/14 by default, 1.2 GB) to torch.hub's cache and checks that it
loads strictly into :class:`sagan.metrics.dinov2.DinoV2ViT` (no published hash to
check). ``--data cifar10`` runs torchvision's CIFAR-10
download (which checks md5s) into ``ROOT/cifar-10-batches-py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from torch.hub import download_url_to_file

from sagan.metrics.weights import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256_PREFIX,
    WEIGHTS_URL,
    default_weights_path,
    sha256_file,
)

DATASETS = ("cifar10",)


class PrefetchError(Exception):
    """A download that failed or gave the wrong file, phrased for a person."""


def _download_checked(what: str, url: str, dest: Path, check) -> None:
    """Download ``url`` to a temporary file beside ``dest``; ``check(tmp)`` raises
    :class:`PrefetchError` on a bad file; only a file that passes is renamed to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        print(f"{what}: downloading {url}\n      -> {dest}")
        try:
            download_url_to_file(url, str(tmp), hash_prefix=None, progress=sys.stderr.isatty())
        except Exception as e:  # urllib raises URLError, HTTPError, OSError, ...
            raise PrefetchError(
                f"could not download {url} ({type(e).__name__}: {e}). Run this on a machine with internet "
                f"(a login node), or fetch the file by other means and put it at {dest}."
            ) from None
        check(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_weights(
    dest: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    hash_prefix: str | None = None,
) -> Path:
    """Download the Inception weights to ``dest`` (default: :func:`default_weights_path`) and verify them.

    ``url`` and ``hash_prefix`` default to torch-fidelity's URL and the sha256 prefix in
    its file name.

    A file already there with the right hash is kept and nothing is downloaded. The
    download goes to a temporary file beside ``dest`` and is renamed into place only
    once its sha256 starts with ``hash_prefix``.

    Returns:
        The path of the verified file.

    Raises:
        PrefetchError: the download failed, or the file (downloaded or already there)
            has the wrong hash.
    """
    url = url or WEIGHTS_URL
    hash_prefix = hash_prefix or WEIGHTS_SHA256_PREFIX
    dest = Path(dest) if dest is not None else default_weights_path()
    if dest.is_file():
        sha = sha256_file(dest)
        if sha.startswith(hash_prefix):
            print(f"weights: {dest} is already there (sha256 {sha[:16]}...)")
            return dest
        raise PrefetchError(
            f"{dest} exists but its sha256 is {sha}, not {hash_prefix}...: it is not torch-fidelity's "
            f"{WEIGHTS_FILE}. Delete it and run this again."
        )

    def check(tmp: Path) -> None:
        sha = sha256_file(tmp)
        if not sha.startswith(hash_prefix):
            raise PrefetchError(
                f"the file downloaded from {url} has sha256 {sha}, expected one starting {hash_prefix}; "
                f"not saved. Retry (a proxy may have altered it), or fetch it by other means."
            )

    _download_checked("weights", url, dest, check)
    sha = sha256_file(dest)
    print(f"weights: ok, sha256 {sha[:16]}...")
    return dest


def fetch_dinov2(
    variant: str = "vit-l-14", dest: str | os.PathLike | None = None, url: str | None = None
) -> Path:
    """Download the DINOv2 checkpoint of ``variant`` to ``dest`` (default: torch.hub's cache).

    A file already there that loads into the architecture is kept. A download goes to
    a temporary file beside ``dest`` and is renamed into place once it loads strictly.

    Returns:
        The path of the checked file.

    Raises:
        PrefetchError: the download failed, or the file does not load into the architecture.
    """
    import torch

    from sagan.metrics.dinov2 import RANDOM_MARKER, DinoV2ViT, default_weights_path, weights_url

    url = url or weights_url(variant)
    dest = Path(dest) if dest is not None else default_weights_path(variant)

    def check(path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state.pop(RANDOM_MARKER, None)  # a test's random-valued stand-in
            with torch.device("meta"):
                model = DinoV2ViT(variant)
            model.load_state_dict(state, strict=True, assign=True)
        except Exception as e:
            raise PrefetchError(
                f"{path} is not a DINOv2 {variant} checkpoint ({type(e).__name__}: {str(e)[:200]}). "
                f"Delete it and run this again."
            ) from None

    if dest.is_file():
        check(dest)
        print(f"dinov2: {dest} is already there")
        return dest
    _download_checked("dinov2", url, dest, check)
    print(f"dinov2: ok, sha256 {sha256_file(dest)[:16]}...")
    return dest


def fetch_cifar10(root: str | os.PathLike) -> Path:
    """Download CIFAR-10 with torchvision into ``root`` (both splits; md5s are checked).

    Returns:
        ``root/cifar-10-batches-py``, the folder ``sagan.data.datasets`` reads.

    Raises:
        PrefetchError: the download or the md5 check failed.
    """
    import torchvision

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"cifar10: fetching into {root}")
    try:
        for train in (True, False):
            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
    except Exception as e:  # URLError, OSError, or RuntimeError from the md5 check
        raise PrefetchError(
            f"could not fetch CIFAR-10 into {root} ({type(e).__name__}: {e}). Run this on a machine with "
            f"internet; if a partial download is left in {root}, delete it and retry."
        ) from None
    folder = root / torchvision.datasets.CIFAR10.base_folder
    print(f"cifar10: ok, {folder}")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 failed)."""
    parser = argparse.ArgumentParser(
        prog="python -m sagan.prefetch",
        description="Download the Inception and DINOv2 weights and datasets, for machines without internet. "
        "With no arguments: both, data under ./data.",
    )
    parser.add_argument(
        "--weights",
        action="store_true",
        help=f"download {WEIGHTS_FILE} to {default_weights_path()}",
    )
    parser.add_argument(
        "--dinov2",
        nargs="?",
        const="vit-l-14",
        choices=("vit-s-14", "vit-b-14", "vit-l-14"),
        help="download the DINOv2 weights fd_dinov2 uses (default model vit-l-14, 1.2 GB)",
    )
    parser.add_argument("--data", choices=DATASETS, help="download a dataset")
    parser.add_argument(
        "--root", default="data", help="where datasets go (data.root); default: data"
    )
    args = parser.parse_args(argv)
    everything = not args.weights and args.data is None and args.dinov2 is None
    do_weights = args.weights or everything
    data = args.data or ("cifar10" if everything else None)
    try:
        if do_weights:
            fetch_weights()
        if args.dinov2 or everything:
            fetch_dinov2(args.dinov2 or "vit-l-14")
        if data == "cifar10":
            fetch_cifar10(args.root)
    except PrefetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
