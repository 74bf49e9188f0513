"""Where the Inception weights live, and whether a file is the canonical one.

torch-fidelity's ``inception-v3-compat`` extractor is a port of the TensorFlow graph
the original FID (Heusel et al. 2017, TTUR code) and IS (Salimans et al. 2016) code
used. Its weights file is ``weights-inception-2015-12-05-6726825d.pth``; as with every
torch.hub checkpoint, the hex part of the name is the start of the file's sha256, which
is what torch.hub itself verifies and what "canonical" means here.

Evaluation never downloads: :func:`inception_weights_path` only looks, and a missing
file is a :class:`MetricsError` that says how to fetch it (``python -m sagan.prefetch
--weights``, on a machine with internet).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    FeatureExtractorInceptionV3,
)

from sagan.data.hashing import file_digest
from sagan.metrics.errors import MetricsError

EXTRACTOR = "inception-v3-compat"
WEIGHTS_URL = URL_INCEPTION_V3
WEIGHTS_FILE = WEIGHTS_URL.rsplit("/", 1)[-1]
# torch.hub's convention: "<name>-<sha256 prefix>.<ext>".
WEIGHTS_SHA256_PREFIX = re.search(r"-([0-9a-f]{8,})\.", WEIGHTS_FILE).group(1)
PREFETCH_COMMAND = "python -m sagan.prefetch --weights"

_sha_memo: dict[tuple, str] = {}


def default_weights_path() -> Path:
    """Where torch-fidelity (through torch.hub) caches the weights: ``<hub dir>/checkpoints/<file>``.

    Honours ``TORCH_HOME`` and ``torch.hub.set_dir``, as torch.hub does. The file may
    not exist; :func:`inception_weights_path` checks.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def inception_weights_path(cfg_path: str | None) -> Path:
    """The Inception weights file evaluation will use, checked to exist.

    Args:
        cfg_path: ``eval.inception_weights`` from the config; ``None`` means torch.hub's
            cache location (:func:`default_weights_path`).

    Returns:
        The path of an existing file.

    Raises:
        MetricsError: no file there; the message names the file, where it must be, the
            expected sha256 prefix, and the prefetch command.
    """
    path = Path(cfg_path).expanduser() if cfg_path else default_weights_path()
    if path.is_file():
        return path
    where = (
        f"eval.inception_weights = {cfg_path!r}: no such file ({path})"
        if cfg_path
        else (
            f"Inception weights not found at {path} (torch.hub's cache; eval.inception_weights is not set)"
        )
    )
    raise MetricsError(
        f"{where}.\n"
        f"FID, IS, KID and precision/recall need torch-fidelity's {EXTRACTOR} weights, the file "
        f"{WEIGHTS_FILE} (sha256 starting {WEIGHTS_SHA256_PREFIX}). Evaluation never downloads.\n"
        f"To fix: on a machine with internet (e.g. a login node) run\n"
        f"    {PREFETCH_COMMAND}\n"
        f"which saves it to {default_weights_path()}; or copy the file there, or anywhere and "
        f"set eval.inception_weights to its path."
    )


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, as 64 hex digits.

    Memoised on the file's identity (path, inode, size, mtime, ctime), so that
    evaluating every few thousand steps does not re-read a 92 MB file each time.
    """
    path = Path(path).resolve()
    st = path.stat()
    memo_key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo_key not in _sha_memo:
        _sha_memo[memo_key] = file_digest(path, "sha256")
    return _sha_memo[memo_key]


def is_canonical(sha256: str) -> bool:
    """Whether a weights file's sha256 matches the published file's (torch.hub's prefix check)."""
    return sha256.startswith(WEIGHTS_SHA256_PREFIX)


@dataclass(frozen=True)
class WeightsInfo:
    """An Inception weights file and its identity, as the protocol record reports it."""

    path: Path
    sha256: str

    @property
    def canonical(self) -> bool:
        """Whether this is the published file (see :func:`is_canonical`)."""
        return is_canonical(self.sha256)


def resolve_weights(cfg_path: str | None) -> WeightsInfo:
    """:func:`inception_weights_path` plus its sha256."""
    path = inception_weights_path(cfg_path)
    return WeightsInfo(path, sha256_file(path))


class _Skeleton(FeatureExtractorInceptionV3):
    # The extractor loads weights in its constructor (downloading when given no path).
    # To get the bare architecture we hand it an empty state dict and skip the load.
    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def make_random_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a weights file of the ``inception-v3-compat`` architecture with random values.

    For tests and timing on machines without the real weights: same state-dict keys
    and shapes, so torch-fidelity loads it strictly; the numbers it produces mean
    nothing (and its sha256 marks it non-canonical). Convolutions get He-normal
    values and batch norms stay identity-like, so features neither vanish nor
    explode. Deterministic in ``seed``; leaves the global RNG alone.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        model = _Skeleton(EXTRACTOR, ["2048"], feature_extractor_weights_path=str(empty))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in)
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(model.state_dict(), tmp_path)
    os.replace(tmp_path, path)
    return path


__all__ = [
    "EXTRACTOR",
    "PREFETCH_COMMAND",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256_PREFIX",
    "WEIGHTS_URL",
    "WeightsInfo",
    "default_weights_path",
    "inception_weights_path",
    "is_canonical",
    "make_random_weights",
    "resolve_weights",
    "sha256_file",
]
