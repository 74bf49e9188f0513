"""Reference-set statistics, extracted once and cached on disk under a hash key.

The key hashes what the numbers depend on: dataset name, split, resolution, number
of images, the dataset's fingerprint (``sagan.data.datasets.dataset_fingerprint``), the
extractor weights' sha256, plus the extractor, layer, subset rule, torch-fidelity
version and cache format. A changed dataset or weights file therefore never reuses a
stale entry; it gets a new one.

Layout: ``CACHE_DIR/<dataset>-<split>-<R>px-n<N>-<key[:16]>/`` holding ``meta.json``
(the key's parts), ``fid_stats.pt`` (``mu``, ``sigma``; what FID needs) and
``features.pt`` (the 2048-d features of at most ``REFERENCE_FEATURES_MAX`` of the
images, a seeded subset; what KID, precision/recall and density/coverage need). The
mean and covariance are accumulated in one streaming pass in float64
(:class:`~sagan.metrics.moments.RunningMoments`), so no ``N x 2048`` matrix is held
however large the split. Per-class statistics (for intra-FID) live in a sibling entry
``...-classes`` whose key adds the class rule; they are made in the same pass when
both are missing. An entry is written to a temporary folder and renamed into place,
so readers never see half of one. ``CACHE_DIR`` is ``eval.cache_dir``, else
``$SAGAN_BENCH_CACHE``, else ``~/.cache/sagan-bench/reference``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import DataLoader, Dataset, Subset

from sagan.metrics.errors import EvaluationStopped, MetricsError
from sagan.metrics.fidelity import exact_float32, feature_extractor, to_uint8
from sagan.metrics.moments import FeatureSubset, RunningMoments
from sagan.metrics.protocol import (
    FEATURE_LAYERS,
    REFERENCE_FEATURES_MAX,
    REFERENCE_FEATURES_SEED,
    REFERENCE_SUBSET_SEED,
)
from sagan.metrics.weights import EXTRACTOR, WeightsInfo, resolve_weights

log = logging.getLogger(__name__)

CACHE_ENV = "SAGAN_BENCH_CACHE"
# Unchanged by the streaming pass: an entry holds the same statistics (to rounding)
# and, up to REFERENCE_FEATURES_MAX images, the same features as before, so entries
# and protocol ids made before stay valid. A reference past that bound keeps a subset
# of the features, which its key says ("features").
CACHE_FORMAT = 1
REQUIRED_PARTS = ("dataset", "split", "resolution", "n", "fingerprint")
_FILES = ("meta.json", "fid_stats.pt", "features.pt")
_CLASS_FILES = ("meta.json", "class_stats.pt")
CLASS_RULE = "every reference image of the class (its dataset label)"


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


def features_kept(n: int) -> int:
    """How many of ``n`` reference images keep their features (KID, PR, DC use them)."""
    return min(n, REFERENCE_FEATURES_MAX)


def features_rule(n: int) -> str:
    """Which reference images' features KID, precision/recall and density/coverage used."""
    kept = features_kept(n)
    return "all" if kept == n else f"random, seed {REFERENCE_FEATURES_SEED}, {kept} of the {n}"


@dataclass(frozen=True)
class ExtractorSpec:
    """Which feature space a reference entry holds: the extractor's name, the layer
    used, its weights' sha256, and how to build it (on a cache miss only)."""

    name: str
    layer: str
    sha256: str
    build: Callable[[torch.device], Any]


def inception_spec(weights: WeightsInfo) -> ExtractorSpec:
    """torch-fidelity's ``inception-v3-compat`` pool features, the FID space."""
    return ExtractorSpec(
        EXTRACTOR, FEATURE_LAYERS["fid"], weights.sha256, lambda d: feature_extractor(weights, d)
    )


def cache_key_parts(
    key_parts: dict[str, Any],
    weights_sha256: str,
    n_available: int,
    extractor: str = EXTRACTOR,
    layer: str = FEATURE_LAYERS["fid"],
) -> dict[str, Any]:
    """Everything a reference entry depends on, as a flat JSON-able dict."""
    missing = [k for k in REQUIRED_PARTS if k not in key_parts]
    if missing:
        raise ValueError(f"key_parts lacks {missing}; it needs {list(REQUIRED_PARTS)}")
    n = int(key_parts["n"])
    # Only a bounded subset is named: every entry (and protocol id) of a reference
    # that keeps all its features is as it was before the bound existed.
    features = {"features": features_rule(n)} if features_kept(n) < n else {}
    return {
        **{k: key_parts[k] for k in REQUIRED_PARTS},
        "n": n,
        "subset": subset_rule(n, n_available),
        **features,
        "weights_sha256": weights_sha256,
        "extractor": extractor,
        "layer": layer,
        "torch_fidelity": torch_fidelity.__version__,
        "format": CACHE_FORMAT,
    }


def class_key_parts(parts: dict[str, Any]) -> dict[str, Any]:
    """The key parts of the per-class entry beside the entry of ``parts``."""
    return {**parts, "classes": CLASS_RULE}


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _entry_name(parts: dict[str, Any], key: str) -> str:
    name = f"{parts['dataset']}-{parts['split']}-{parts['resolution']}px-n{parts['n']}-{key[:16]}"
    return name + "-classes" if "classes" in parts else name


class ReferenceStats:
    """The cached statistics of one reference set.

    Attributes:
        key: the cache key (sha256 hex); ``parts``: what it hashes; ``path``: the entry
        folder; ``hit``: whether it was read from the cache rather than extracted;
        ``class_path``: the per-class entry, when per-class statistics were asked for.
    """

    def __init__(
        self,
        path: Path,
        key: str,
        parts: dict[str, Any],
        hit: bool,
        stats=None,
        features=None,
        class_path: Path | None = None,
        class_stats=None,
    ):
        self.path, self.key, self.parts, self.hit = path, key, parts, hit
        self._stats, self._features = stats, features
        self.class_path, self._class_stats = class_path, class_stats

    @property
    def n(self) -> int:
        return int(self.parts["n"])

    def fid_statistics(self) -> dict[str, np.ndarray]:
        """``{"mu": float64 [2048], "sigma": float64 [2048, 2048]}``, torch-fidelity's layout."""
        if self._stats is None:
            raw = torch.load(self.path / "fid_stats.pt", map_location="cpu", weights_only=True)
            # float64: entries written before the streaming pass hold a float32 mean.
            self._stats = {k: v.double().numpy() for k, v in raw.items()}
        return self._stats

    def features(self) -> torch.Tensor:
        """The 2048-d features of the kept reference images (:func:`features_rule`), float32."""
        if self._features is None:
            self._features = torch.load(
                self.path / "features.pt", map_location="cpu", weights_only=True
            )
        return self._features

    def class_statistics(self) -> dict[int, dict[str, Any]]:
        """``{class: {"mu", "sigma", "n"}}`` of each class present in the reference set."""
        if self._class_stats is None:
            if self.class_path is None:
                raise ValueError("per-class statistics were not asked for (per_class=False)")
            raw = torch.load(
                self.class_path / "class_stats.pt", map_location="cpu", weights_only=True
            )
            self._class_stats = {
                int(c): {"mu": v["mu"].numpy(), "sigma": v["sigma"].numpy(), "n": int(v["n"])}
                for c, v in raw.items()
            }
        return self._class_stats

    def protocol(self) -> dict[str, Any]:
        """The reference part of an evaluation's protocol record."""
        keep = ("dataset", "split", "n", "resolution", "fingerprint", "subset", "features")
        return {**{k: self.parts[k] for k in keep if k in self.parts}, "cache_key": self.key[:16]}


def _lookup(folder: Path, parts: dict[str, Any], files=_FILES) -> bool:
    if not all((folder / f).is_file() for f in files):
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


def _images_labels(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    labels = [int(item[1]) if isinstance(item, tuple | list) else -1 for item in batch]
    return _images_only(batch), torch.tensor(labels)


class _Streamed:
    """What one pass over the reference images accumulates."""

    def __init__(self, n: int, per_class: bool):
        self.moments = RunningMoments()
        self.kept = FeatureSubset(n, features_kept(n), REFERENCE_FEATURES_SEED)
        self.classes: dict[int, RunningMoments] | None = {} if per_class else None

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.moments.add(features)
        self.kept.add(features)
        if self.classes is not None:
            for c in labels.unique().tolist():
                self.classes.setdefault(int(c), RunningMoments()).add(features[labels == c])

    def class_statistics(self) -> dict[int, dict[str, Any]]:
        out = {}
        for c, m in sorted(self.classes.items()):
            if m.n < 2:
                raise MetricsError(
                    f"intra_fid: class {c} has {m.n} reference image(s); a covariance needs at "
                    f"least 2. Raise eval.reference.n (or null for the whole split)."
                )
            out[c] = {**m.statistics(), "n": m.n}
        return out


def _extract(
    dataset: Dataset,
    n: int,
    extractor,
    device,
    batch_size: int,
    num_workers: int,
    stop: Callable[[], bool] | None = None,
    per_class: bool = False,
    layer: str = FEATURE_LAYERS["fid"],
) -> _Streamed:
    loader = DataLoader(
        _subset(dataset, n),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_images_labels,
        generator=torch.Generator(),  # own generator: leave the global RNG alone
    )
    device = torch.device(device)
    acc = _Streamed(n, per_class)
    seen = 0
    for images, labels in loader:
        if stop is not None and stop():
            raise EvaluationStopped(
                f"reference statistics: abandoned on a stop request after {seen} of {n} images"
            )
        with torch.no_grad(), exact_float32(device):
            out = extractor(to_uint8(images).to(device))
        features = extractor.convert_features_tuple_to_dict(out)[layer]
        acc.add(features, labels)
        seen += len(images)
    return acc


def _write(folder: Path, parts: dict[str, Any], files: dict[str, Any], names=_FILES) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, value in files.items():
            torch.save(value, tmp / name)
        (tmp / "meta.json").write_text(json.dumps({"parts": parts}, indent=2) + "\n")
        if _lookup(folder, parts, names):
            return  # another run wrote the same entry meanwhile; keep theirs (it may be in use)
        if folder.exists():  # a damaged entry (a file deleted or edited by hand)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _lookup(folder, parts, names):  # lost a race to a concurrent writer: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_or_warn(folder: Path, parts: dict[str, Any], files: dict[str, Any], names) -> None:
    try:
        _write(folder, parts, files, names)
    except OSError as e:
        # The numbers are right either way; only the next evaluation pays again.
        log.warning(
            "could not cache reference statistics in %s (%s); set eval.cache_dir to a writable folder",
            folder,
            e,
        )


def reference_statistics(
    dataset: Dataset,
    *,
    key_parts: dict[str, Any],
    cfg: Any,
    device: torch.device | str,
    weights: WeightsInfo | None = None,
    stop: Callable[[], bool] | None = None,
    per_class: bool = False,
    extractor: ExtractorSpec | None = None,
) -> ReferenceStats:
    """The reference set's FID statistics and features, from the cache or extracted and cached.

    One streaming pass over the images (on a miss) accumulates the float64 mean and
    covariance, keeps the features of at most ``REFERENCE_FEATURES_MAX`` images, and,
    with ``per_class``, each class's mean and covariance (for intra-FID; memory
    ``classes x 2048^2 x 8`` bytes, 34 MB a class).

    Args:
        dataset: items ``(uint8 [3,R,R], label)`` (or bare images); the first
            ``key_parts["n"]`` of a seeded permutation are used when ``n < len(dataset)``.
        key_parts: ``dataset``, ``split``, ``resolution``, ``n`` and ``fingerprint``
            (``sagan.data.datasets.dataset_fingerprint``): with the weights' sha256 they decide the key.
        cfg: the run's :class:`~sagan.config.Config` (``eval.cache_dir``,
            ``eval.inception_weights``, ``eval.batch_size``, ``data.num_workers``).
        device: where to run the extractor on a miss.
        weights: the resolved weights; looked up from ``cfg`` when omitted.
        stop: asked before each batch of an extraction; when it says True the
            extraction is abandoned and nothing is cached.
        per_class: also the per-class statistics (:meth:`ReferenceStats.class_statistics`).
        extractor: the feature space (:class:`ExtractorSpec`); Inception's by default.

    Returns:
        A :class:`ReferenceStats`; its ``hit`` says whether extraction was skipped.

    Raises:
        MetricsError: ``n`` larger than the dataset, or no weights file.
        EvaluationStopped: ``stop`` said True.
    """
    if extractor is None:
        extractor = inception_spec(weights or resolve_weights(cfg.eval.inception_weights))
    n_available = len(dataset)
    n = int(key_parts["n"])
    if not 2 <= n <= n_available:
        raise MetricsError(
            f"eval.reference.n = {n}: the {key_parts.get('dataset')} {key_parts.get('split')} split has "
            f"{n_available} images. Set eval.reference.n to at most {n_available}, or null for all of them."
        )
    parts = cache_key_parts(
        key_parts, extractor.sha256, n_available, extractor.name, extractor.layer
    )
    key = cache_key(parts)
    folder = cache_dir(cfg) / _entry_name(parts, key)
    cparts = class_key_parts(parts) if per_class else None
    cfolder = cache_dir(cfg) / _entry_name(cparts, cache_key(cparts)) if per_class else None
    main_hit = _lookup(folder, parts)
    class_hit = not per_class or _lookup(cfolder, cparts, _CLASS_FILES)
    if main_hit and class_hit:
        log.info("reference statistics: cache hit %s", folder)
        return ReferenceStats(folder, key, parts, hit=True, class_path=cfolder)
    log.info("reference statistics: extracting %d images into %s", n, folder)
    if hasattr(dataset, "build"):  # listed only now, on a miss (LazySplit)
        dataset = dataset.build()
    acc = _extract(
        dataset,
        n,
        extractor.build(torch.device(device)),
        device,
        cfg.eval.batch_size,
        cfg.data.num_workers,
        stop,
        per_class=per_class and not class_hit,
        layer=extractor.layer,
    )
    stats, features = acc.moments.statistics(), acc.kept.result()
    if not main_hit:
        files = {
            "fid_stats.pt": {k: torch.from_numpy(np.asarray(v)) for k, v in stats.items()},
            "features.pt": features.contiguous(),
        }
        _write_or_warn(folder, parts, files, _FILES)
    class_stats = None
    if per_class and not class_hit:
        class_stats = acc.class_statistics()
        saved = {
            c: {"mu": torch.from_numpy(v["mu"]), "sigma": torch.from_numpy(v["sigma"]), "n": v["n"]}
            for c, v in class_stats.items()
        }
        _write_or_warn(cfolder, cparts, {"class_stats.pt": saved}, _CLASS_FILES)
    return ReferenceStats(
        folder,
        key,
        parts,
        hit=False,
        stats=stats,
        features=features,
        class_path=cfolder,
        class_stats=class_stats,
    )


__all__ = [
    "CACHE_ENV",
    "ExtractorSpec",
    "ReferenceStats",
    "cache_dir",
    "cache_key",
    "cache_key_parts",
    "class_key_parts",
    "features_kept",
    "features_rule",
    "inception_spec",
    "reference_statistics",
]
