"""One chunked file hasher, for weights files, dataset files and anything else on disk."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """The digest of a file's bytes, as hex.

    Reads ``chunk`` bytes at a time, so a large file (a 92 MB Inception checkpoint, a
    CIFAR-10 batch) is never held in memory whole.

    Args:
        path: the file.
        algorithm: any name :func:`hashlib.new` accepts (``"sha256"``, ``"md5"``, ...).
        chunk: bytes read per step; must be positive.

    Returns:
        ``hashlib.new(algorithm, <file bytes>).hexdigest()``.
    """
    if chunk <= 0:
        raise ValueError(f"file_digest: chunk must be a positive number of bytes, got {chunk}")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["file_digest"]
