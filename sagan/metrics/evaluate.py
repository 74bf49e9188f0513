"""Score a generator: sample it reproducibly, extract features, compute metrics, record the protocol.

Sampling uses its own ``torch.Generator`` seeded with ``eval.seed`` (on the CPU, so the
same seed gives the same z on any device), runs under ``torch.no_grad`` with G in
``eval.g_mode``, and puts back afterwards everything it could have changed: G's
train/eval flags, G's buffers (batch-norm running stats and spectral-norm vectors
advance in train mode) and torch's global RNG. Training is therefore bit-identical
whether or not it evaluates.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sagan.metrics.errors import EvaluationStopped, MetricsError
from sagan.metrics.fidelity import (
    FeatureAccumulator,
    compute_metrics,
    exact_float32,
    feature_extractor,
    to_uint8,
)
from sagan.metrics.protocol import (
    INCEPTION_METRICS,
    ISC_SPLITS,
    PRC_NEIGHBORHOOD,
    REFERENCE_METRICS,
    build_protocol,
    protocol_id,
)
from sagan.metrics.reference import ReferenceStats, reference_statistics
from sagan.metrics.weights import resolve_weights

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sampling_mode(G: torch.nn.Module, g_mode: str) -> Iterator[None]:
    """Put G in ``g_mode`` ("eval" or "train"); on exit restore every module's flag and every buffer."""
    flags = [(m, m.training) for m in G.modules()]
    buffers = [(b, b.detach().clone()) for b in G.buffers()]
    G.train(g_mode == "train")
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def sample_batches(
    G: torch.nn.Module, n: int, *, batch_size: int, seed: int, device: torch.device | str
) -> Iterator[torch.Tensor]:
    """``n`` generated images in batches, float ``[B, 3, R, R]`` in [-1, 1], reproducible in ``seed``.

    z is standard normal ``[B, G.z_dim]``; y is uniform over ``G.num_classes`` (all
    zeros, and ignored by G, when it is 0). Both come from a CPU ``torch.Generator``
    seeded with ``seed``; the global RNG is not used. Call under ``torch.no_grad``.
    """
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(getattr(G, "num_classes", 0))
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, G.z_dim, generator=gen)
        y = torch.randint(0, max(num_classes, 1), (b,), generator=gen)
        # Exact float32, as the features are: the protocol records "tf32": false.
        with exact_float32(torch.device(device)):
            images = G(z.to(device), y.to(device))
        yield images


class LazySplit(Dataset):
    """An image folder's split that is listed only when its images are needed.

    Its size and fingerprint come from the folder's cached identity; a reference
    whose statistics are cached is then scored without listing the folder at all
    (``reference_statistics`` calls :meth:`build` only on a cache miss).
    """

    def __init__(self, data_cfg: Any, split: str, n: int):
        self.data_cfg, self.split, self.n = data_cfg, split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):  # pragma: no cover - build() is used instead
        raise TypeError("build() the split first")

    def build(self) -> Dataset:
        from sagan.data import build_dataset

        return build_dataset(self.data_cfg, self.split)


# (data config, split) -> (fingerprint, size) of image folders, for this process: a
# run evaluates many times, and its data may not change under it (resume refuses that).
_folder_splits: dict[tuple[str, str], tuple[str, int]] = {}


def needs_reference(metrics: list[str]) -> bool:
    """Whether any of ``metrics`` compares against real images (FID, KID, precision/
    recall on Inception features; the SWD on image patches)."""
    return any(m in REFERENCE_METRICS or m == "swd" for m in metrics)


def reference_set(cfg: Any) -> tuple[Dataset, str] | None:
    """``(dataset, fingerprint)`` of the reference ``cfg.eval`` compares against, or
    None when no metric needs one: for a caller that plans (:func:`planned_protocol`)
    and then evaluates, so that the set is built once."""
    if not needs_reference(cfg.eval.metrics):
        return None
    dataset, key_parts = _reference_source(cfg, None)
    return dataset, key_parts["fingerprint"]


def _reference_source(
    cfg: Any, reference: tuple[Dataset, str] | None
) -> tuple[Dataset, dict[str, Any]]:
    split = cfg.eval.reference.split
    if reference is None:
        from sagan.data import build_dataset, dataset_fingerprint

        if cfg.data.name == "imagefolder":
            key = (cfg.data.model_dump_json(), split)
            if key not in _folder_splits:
                from sagan.data import imagefolder_dir
                from sagan.data_identity import folder_identity

                n_images = folder_identity(imagefolder_dir(cfg.data, split))["n_images"]
                _folder_splits[key] = (dataset_fingerprint(cfg.data, split), n_images)
            fingerprint, n_images = _folder_splits[key]
            dataset = LazySplit(cfg.data, split, n_images)
        else:
            dataset = build_dataset(cfg.data, split)
            fingerprint = dataset_fingerprint(cfg.data, split)
    else:
        dataset, fingerprint = reference
    n = cfg.eval.reference.n if cfg.eval.reference.n is not None else len(dataset)
    key_parts = {
        "dataset": cfg.data.name,
        "split": split,
        "resolution": cfg.data.resolution,
        "n": n,
        "fingerprint": fingerprint,
    }
    return dataset, key_parts


def _check_counts(metrics: list[str], n_generated: int, n_reference: int | None) -> None:
    if "is" in metrics and n_generated < ISC_SPLITS:
        raise MetricsError(
            f"eval.n_samples = {n_generated}: the Inception Score splits the samples into "
            f"{ISC_SPLITS} parts; use at least {ISC_SPLITS} samples (50000 to compare with papers)."
        )
    if "prc" in metrics and min(n_generated, n_reference or n_generated) <= PRC_NEIGHBORHOOD:
        raise MetricsError(
            f"eval.n_samples / eval.reference.n: precision/recall uses each sample's "
            f"{PRC_NEIGHBORHOOD}-th nearest neighbour; use more than {PRC_NEIGHBORHOOD} images on each side."
        )


def _check_shape(images: torch.Tensor, resolution: int) -> None:
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
        raise MetricsError(
            f"G returned images of shape {tuple(images.shape)}; evaluation expects "
            f"[B, 3, {resolution}, {resolution}] for data.resolution {resolution}."
        )


def _cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _swd_protocol(cfg: Any, key_parts: dict[str, Any], n_available: int) -> dict[str, Any]:
    """The SWD part of the protocol: equal numbers of real and generated images."""
    from sagan.metrics import swd
    from sagan.metrics.reference import subset_rule

    n = min(cfg.eval.n_samples, key_parts["n"], n_available)
    ref = {**key_parts, "n": n, "subset": subset_rule(n, n_available)}
    return swd.protocol(cfg.data.resolution, n, cfg.eval.seed, ref)


def _swd_real(dataset: Dataset, n: int, resolution: int, seed: int):
    """SWD descriptors of ``n`` reference images (the same seeded subset rule as the
    Inception statistics)."""
    from sagan.metrics import swd
    from sagan.metrics.reference import _images_only, _subset

    if isinstance(dataset, LazySplit):
        dataset = dataset.build()
    acc = swd.Descriptors(resolution, seed)
    subset = _subset(dataset, n) if n < len(dataset) else dataset
    for start in range(0, n, 256):
        acc.add(_images_only([subset[i] for i in range(start, min(n, start + 256))]))
    return acc


def _protocol(
    cfg: Any,
    weights: Any,
    reference: dict[str, Any] | None,
    n_sample: int,
    ema: bool,
    device: torch.device | str,
    swd: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ev = cfg.eval
    return build_protocol(
        swd=swd,
        weights=weights,
        reference=reference,
        n_generated=n_sample,
        ema=ema,
        g_mode=ev.g_mode,
        eval_seed=ev.seed,
        batch_size=ev.batch_size,
        device=str(device),
        bn_momentum=cfg.model.bn_momentum,
    )


def planned_protocol(
    cfg: Any,
    *,
    ema: bool,
    device: torch.device | str = "cpu",
    reference: tuple[Dataset, str] | None = None,
) -> dict[str, Any]:
    """The protocol :func:`evaluate_generator` would record for ``cfg.eval``, without
    sampling or extracting anything: so that a caller can see whether a number was
    already made (its :func:`~sagan.metrics.protocol.protocol_id`) before paying for it.

    Raises:
        MetricsError: as :func:`evaluate_generator` would, before any work.
    """
    from sagan.metrics.reference import cache_key, cache_key_parts

    ev = cfg.eval
    wanted = list(dict.fromkeys(ev.metrics))
    inception = [m for m in wanted if m in INCEPTION_METRICS]
    want_consistency = "consistency" in wanted and cfg.data.name == "synthetic"
    _check_counts(inception, ev.n_samples, ev.reference.n)
    weights = resolve_weights(ev.inception_weights) if inception else None
    n_sample = ev.n_samples if inception or want_consistency or "swd" in wanted else 0
    ref = swd_protocol = None
    if needs_reference(wanted):
        dataset, key_parts = _reference_source(cfg, reference)
    if any(m in REFERENCE_METRICS for m in inception):
        parts = cache_key_parts(key_parts, weights.sha256, len(dataset))
        ref = ReferenceStats(Path(), cache_key(parts), parts, hit=False).protocol()
    if "swd" in wanted:
        swd_protocol = _swd_protocol(cfg, key_parts, len(dataset))
    return _protocol(cfg, weights, ref, n_sample, ema, device, swd_protocol)


def evaluate_generator(
    G: torch.nn.Module,
    cfg: Any,
    *,
    step: int,
    device: torch.device | str,
    ema: bool,
    run_dir: Path | None = None,
    reference: tuple[Dataset, str] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Score ``G`` with ``cfg.eval`` and return one JSON-serialisable record.

    Samples ``eval.n_samples`` images (seed ``eval.seed``, G in ``eval.g_mode``),
    computes ``eval.metrics`` against the reference set (``cfg.data``,
    ``eval.reference.split``, ``eval.reference.n``) with torch-fidelity's
    ``inception-v3-compat`` (FID as in Heusel et al. 2017 / the TTUR code, IS as in
    Salimans et al. 2016, KID as in Binkowski et al. 2018, precision/recall as in
    Kynkaanniemi et al. 2019 but on Inception features), and ``consistency``
    (:func:`sagan.synthetic.consistency`, synthetic data only).

    Args:
        G: ``G(z, y) -> [B, 3, R, R]`` in [-1, 1], with ``z_dim`` and ``num_classes``; on ``device``.
        cfg: the run's :class:`~sagan.config.Config`.
        step: G steps done; recorded.
        device: where G lives and the extractor runs.
        ema: whether ``G`` is the EMA copy; recorded.
        run_dir: the run's folder. Not written to: the caller appends the record to
            ``run_dir/eval.jsonl``.
        reference: ``(dataset, fingerprint)`` to use instead of
            ``sagan.data.build_dataset(cfg.data, split)`` and its fingerprint.
        stop: asked before each batch (generated, or real on a reference cache miss):
            when it says True the evaluation is abandoned, so that a time limit's
            warning is heeded within one batch however large ``n_samples`` is.

    Returns:
        ``{"kind": "eval", "step", "time", "wall_s", "metrics": {...}, "protocol": {...},
        "protocol_id", "timing": {...}}``, plus ``"skipped"`` naming metrics asked for but not defined
        for this data.

    Raises:
        MetricsError: no weights file, or sample counts too small for a metric.
        EvaluationStopped: ``stop`` said True; G, its buffers and the RNG are as before.
    """
    del run_dir
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    device = torch.device(device)
    ev = cfg.eval
    wanted = list(dict.fromkeys(ev.metrics))
    inception = [m for m in wanted if m in INCEPTION_METRICS]
    skipped: dict[str, str] = {}
    want_consistency = "consistency" in wanted
    if want_consistency and cfg.data.name != "synthetic":
        skipped["consistency"] = "defined only for data.name: synthetic"
        want_consistency = False
    if want_consistency:
        from sagan.synthetic import consistency
    _check_counts(inception, ev.n_samples, ev.reference.n)
    weights = resolve_weights(ev.inception_weights) if inception else None  # fail before any work
    want_swd = "swd" in wanted
    # Nothing to compute (consistency asked for on non-synthetic data): do not sample either.
    n_sample = ev.n_samples if inception or want_consistency or want_swd else 0

    timing: dict[str, Any] = {}
    ref: ReferenceStats | None = None
    metrics: dict[str, float] = {}
    # torch-fidelity's metric code uses its own NumPy RandomStates, and so does ours
    # torch.Generators; this is the guarantee for anything else (G's own noise, loaders).
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        if needs_reference(wanted):  # one reference set for every metric that needs it
            t = time.perf_counter()
            dataset, key_parts = _reference_source(cfg, reference)
            set_s = time.perf_counter() - t  # counted in each use's time, as before
        if any(m in REFERENCE_METRICS for m in inception):
            t = time.perf_counter()
            _check_counts(inception, ev.n_samples, key_parts["n"])
            ref = reference_statistics(
                dataset, key_parts=key_parts, cfg=cfg, device=device, weights=weights, stop=stop
            )
            timing["reference_s"] = round(set_s + time.perf_counter() - t, 3)
            timing["reference_cache"] = "hit" if ref.hit else "miss"

        swd_protocol = swd_real = swd_fake = None
        if want_swd:
            from sagan.metrics import swd

            t = time.perf_counter()
            swd_protocol = _swd_protocol(cfg, key_parts, len(dataset))
            n_swd = swd_protocol["n_images"]
            swd_real = _swd_real(dataset, n_swd, cfg.data.resolution, ev.seed)
            swd_fake = swd.Descriptors(cfg.data.resolution, ev.seed + 1)
            timing["swd_reference_s"] = round(set_s + time.perf_counter() - t, 3)

        t = time.perf_counter()
        acc = FeatureAccumulator(feature_extractor(weights, device), device) if inception else None
        consistent = seen = 0
        with sampling_mode(G, ev.g_mode), torch.no_grad():
            for images in sample_batches(
                G, n_sample, batch_size=ev.batch_size, seed=ev.seed, device=device
            ):
                if stop is not None and stop():
                    raise EvaluationStopped(
                        f"evaluation of G step {step}: abandoned on a stop request after "
                        f"{seen} of {n_sample} samples"
                    )
                _check_shape(images, cfg.data.resolution)
                images = to_uint8(images)
                if acc is not None:
                    acc.add(images)
                if want_consistency:
                    consistent += int(consistency(images.cpu()).sum())
                if swd_fake is not None and seen < n_swd:
                    swd_fake.add(images[: n_swd - seen])
                seen += len(images)
        timing["generate_extract_s"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        if acc is not None:
            need_features = "kid" in inception or "prc" in inception
            metrics.update(
                compute_metrics(
                    inception,
                    acc.result(),
                    ref.fid_statistics() if ref is not None and "fid" in inception else None,
                    ref.features() if ref is not None and need_features else None,
                )
            )
        if want_consistency:
            metrics["consistency"] = consistent / n_sample
        if swd_fake is not None:
            metrics["swd"] = swd.swd(swd_real, swd_fake, ev.seed)
        timing["metrics_s"] = round(time.perf_counter() - t, 3)

    record: dict[str, Any] = {
        "kind": "eval",
        "step": int(step),
        "time": started.isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "metrics": metrics,
        "protocol": _protocol(
            cfg,
            weights,
            ref.protocol() if ref is not None else None,
            n_sample,
            ema,
            device,
            swd_protocol,
        ),
        "timing": timing,
    }
    record["protocol_id"] = protocol_id(record["protocol"])
    if skipped:
        record["skipped"] = skipped
    log.info("eval step %d: %s", step, metrics)
    return record


__all__ = [
    "evaluate_generator",
    "planned_protocol",
    "reference_set",
    "sample_batches",
    "sampling_mode",
]
