"""Reference-set statistics, extracted once and cached on disk under a hash key.

The key hashes what the numbers depend on: dataset name, split, resolution, number
of images, the dataset's fingerprint (``sagan.data.dataset_fingerprint``), the
extractor weights' sha256, plus the extractor, layer, subset rule, torch-fidelity
version and cache format. A changed dataset or weights file therefore never reuses a
stale entry; it gets a new one.

Layout: ``CACHE_DIR/<dataset>-<split>-<R>px-n<N>-<key[:16]>/`` holding ``meta.json``
(the key's parts), ``fid_stats.pt`` (``mu``, ``sigma``; what FID needs) and
``features.pt`` (the 2048-d features; what KID and precision/recall need). An entry
is written to a temporary folder and renamed into place, so readers never see half of
one. ``CACHE_DIR`` is ``eval.cache_dir``, else ``$SAGAN_BENCH_CACHE``, else
``~/.cache/sagan-bench/reference``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import DataLoader, Dataset, Subset

from sagan.metrics.errors import EvaluationStopped, MetricsError
from sagan.metrics.fidelity import FeatureAccumulator, feature_extractor, fid_statistics
from sagan.metrics.protocol import FEATURE_LAYERS, REFERENCE_SUBSET_SEED
from sagan.metrics.weights import EXTRACTOR, WeightsInfo, resolve_weights

log = logging.getLogger(__name__)

CACHE_ENV = "SAGAN_BENCH_CACHE"
CACHE_FORMAT = 1
REQUIRED_PARTS = ("dataset", "split", "resolution", "n", "fingerprint")
_FILES = ("meta.json", "fid_stats.pt", "features.pt")


def cache_dir(cfg: Any = None) -> Path:
    """The reference cache folder: ``eval.cache_dir``, ``$SAGAN_BENCH_CACHE``, or ``~/.cache/sagan-bench/reference``."""
    configured = getattr(getattr(cfg, "eval", None), "cache_dir", None)
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path.home() / ".cache" / "sagan-bench" / "reference"


def subset_rule(n: int, n_available: int) -> str:
    """Which reference images a number used: the whole split, or the seeded subset
    :func:`_subset` draws."""
    return "all" if n == n_available else f"random, seed {REFERENCE_SUBSET_SEED}, of {n_available}"


def cache_key_parts(
    key_parts: dict[str, Any], weights_sha256: str, n_available: int
) -> dict[str, Any]:
    """Everything a reference entry depends on, as a flat JSON-able dict."""
    missing = [k for k in REQUIRED_PARTS if k not in key_parts]
    if missing:
        raise ValueError(f"key_parts lacks {missing}; it needs {list(REQUIRED_PARTS)}")
    n = int(key_parts["n"])
    return {
        **{k: key_parts[k] for k in REQUIRED_PARTS},
        "n": n,
        "subset": subset_rule(n, n_available),
        "weights_sha256": weights_sha256,
        "extractor": EXTRACTOR,
        "layer": FEATURE_LAYERS["fid"],
        "torch_fidelity": torch_fidelity.__version__,
        "format": CACHE_FORMAT,
    }


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entry_name(parts: dict[str, Any], key: str) -> str:
    return f"{parts['dataset']}-{parts['split']}-{parts['resolution']}px-n{parts['n']}-{key[:16]}"


class ReferenceStats:
    """The cached statistics of one reference set.

    Attributes:
        key: the cache key (sha256 hex); ``parts``: what it hashes; ``path``: the entry
        folder; ``hit``: whether it was read from the cache rather than extracted.
    """

    def __init__(
        self, path: Path, key: str, parts: dict[str, Any], hit: bool, stats=None, features=None
    ):
        self.path, self.key, self.parts, self.hit = path, key, parts, hit
        self._stats, self._features = stats, features

    @property
    def n(self) -> int:
        return int(self.parts["n"])

    def fid_statistics(self) -> dict[str, np.ndarray]:
        """``{"mu": float32 [2048], "sigma": float64 [2048, 2048]}`` as torch-fidelity makes them."""
        if self._stats is None:
            raw = torch.load(self.path / "fid_stats.pt", map_location="cpu", weights_only=True)
            self._stats = {k: v.numpy() for k, v in raw.items()}
        return self._stats

    def features(self) -> torch.Tensor:
        """The reference's 2048-d features, float32 ``[n, 2048]``."""
        if self._features is None:
            self._features = torch.load(
                self.path / "features.pt", map_location="cpu", weights_only=True
            )
        return self._features

    def protocol(self) -> dict[str, Any]:
        """The reference part of an evaluation's protocol record."""
        keep = ("dataset", "split", "n", "resolution", "fingerprint", "subset")
        return {**{k: self.parts[k] for k in keep}, "cache_key": self.key[:16]}


def _lookup(folder: Path, parts: dict[str, Any]) -> bool:
    if not all((folder / f).is_file() for f in _FILES):
        return False
    try:
        return json.loads((folder / "meta.json").read_text()).get("parts") == parts
    except (OSError, json.JSONDecodeError):
        return False


def _subset(dataset: Dataset, n: int) -> Dataset:
    total = len(dataset)
    if n == total:
        return dataset
    gen = torch.Generator().manual_seed(REFERENCE_SUBSET_SEED)
    idx = torch.randperm(total, generator=gen)[:n].sort().values
    return Subset(dataset, idx.tolist())


def _images_only(batch: list) -> torch.Tensor:
    return torch.stack([item[0] if isinstance(item, tuple | list) else item for item in batch])


def _extract(
    dataset: Dataset,
    n: int,
    extractor,
    device,
    batch_size: int,
    num_workers: int,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    loader = DataLoader(
        _subset(dataset, n),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_images_only,
        generator=torch.Generator(),  # own generator: leave the global RNG alone
    )
    acc = FeatureAccumulator(extractor, device)
    for images in loader:
        if stop is not None and stop():
            raise EvaluationStopped("reference statistics: abandoned on a stop request")
        acc.add(images)
    return acc.result()[FEATURE_LAYERS["fid"]]


def _write_entry(
    folder: Path, parts: dict[str, Any], stats: dict[str, np.ndarray], features: torch.Tensor
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        torch.save(
            {k: torch.from_numpy(np.asarray(v)) for k, v in stats.items()}, tmp / "fid_stats.pt"
        )
        torch.save(features.contiguous(), tmp / "features.pt")
        (tmp / "meta.json").write_text(json.dumps({"parts": parts}, indent=2) + "\n")
        if _lookup(folder, parts):
            return  # another run wrote the same entry meanwhile; keep theirs (it may be in use)
        if folder.exists():  # a damaged entry (a file deleted or edited by hand)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _lookup(folder, parts):  # lost a race to a concurrent writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reference_statistics(
    dataset: Dataset,
    *,
    key_parts: dict[str, Any],
    cfg: Any,
    device: torch.device | str,
    weights: WeightsInfo | None = None,
    stop: Callable[[], bool] | None = None,
) -> ReferenceStats:
    """The reference set's FID statistics and features, from the cache or extracted and cached.

    Args:
        dataset: items ``(uint8 [3,R,R], label)`` (or bare images); the first
            ``key_parts["n"]`` of a seeded permutation are used when ``n < len(dataset)``.
        key_parts: ``dataset``, ``split``, ``resolution``, ``n`` and ``fingerprint``
            (``sagan.data.dataset_fingerprint``): with the weights' sha256 they decide the key.
        cfg: the run's :class:`~sagan.config.Config` (``eval.cache_dir``,
            ``eval.inception_weights``, ``eval.batch_size``, ``data.num_workers``).
        device: where to run the extractor on a miss.
        weights: the resolved weights; looked up from ``cfg`` when omitted.
        stop: asked before each batch of an extraction; when it says True the
            extraction is abandoned and nothing is cached.

    Returns:
        A :class:`ReferenceStats`; its ``hit`` says whether extraction was skipped.

    Raises:
        MetricsError: ``n`` larger than the dataset, or no weights file.
        EvaluationStopped: ``stop`` said True.
    """
    weights = weights or resolve_weights(cfg.eval.inception_weights)
    n_available = len(dataset)
    n = int(key_parts["n"])
    if not 2 <= n <= n_available:
        raise MetricsError(
            f"eval.reference.n = {n}: the {key_parts.get('dataset')} {key_parts.get('split')} split has "
            f"{n_available} images. Set eval.reference.n to at most {n_available}, or null for all of them."
        )
    parts = cache_key_parts(key_parts, weights.sha256, n_available)
    key = cache_key(parts)
    folder = cache_dir(cfg) / _entry_name(parts, key)
    if _lookup(folder, parts):
        log.info("reference statistics: cache hit %s", folder)
        return ReferenceStats(folder, key, parts, hit=True)
    log.info("reference statistics: extracting %d images into %s", n, folder)
    if hasattr(dataset, "build"):  # listed only now, on a miss (LazySplit)
        dataset = dataset.build()
    extractor = feature_extractor(weights, device)
    features = _extract(
        dataset, n, extractor, device, cfg.eval.batch_size, cfg.data.num_workers, stop
    )
    stats = fid_statistics(features)
    try:
        _write_entry(folder, parts, stats, features)
    except OSError as e:
        # The numbers are right either way; only the next evaluation pays again.
        log.warning(
            "could not cache reference statistics in %s (%s); set eval.cache_dir to a writable folder",
            folder,
            e,
        )
    return ReferenceStats(folder, key, parts, hit=False, stats=stats, features=features)


__all__ = [
    "CACHE_ENV",
    "ReferenceStats",
    "cache_dir",
    "cache_key",
    "cache_key_parts",
    "reference_statistics",
]
