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
    exact_float32,
    feature_extractor,
    fid_from_statistics,
    to_uint8,
)
from sagan.metrics.moments import moments_of
from sagan.metrics.plan import (
    _check_counts,
    _dino_weights,
    _protocol,
    planned_protocol,
    probe_blocks,
    probe_metrics,
)
from sagan.metrics.protocol import (
    INCEPTION_METRICS,
    REFERENCE_METRICS,
    metric_protocol_ids,
    protocol_id,
)
from sagan.metrics.reference import ReferenceStats, features_kept, reference_statistics
from sagan.metrics.refset import (
    LazySplit,
    _reference_source,
    _swd_protocol,
    _swd_real,
    needs_reference,
    reference_set,
)
from sagan.metrics.suite import metric_blocks, score_features
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


def sample_labeled_batches(
    G: torch.nn.Module, n: int, *, batch_size: int, seed: int, device: torch.device | str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, y)`` batches of :func:`sample_batches`, with the CPU labels G was given."""
    gen = torch.Generator().manual_seed(seed)
    num_classes = int(getattr(G, "num_classes", 0))
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, G.z_dim, generator=gen)
        y = torch.randint(0, max(num_classes, 1), (b,), generator=gen)
        # Exact float32, as the features are: the protocol records "tf32": false.
        with exact_float32(torch.device(device)):
            images = G(z.to(device), y.to(device))
        yield images, y


def sample_batches(
    G: torch.nn.Module, n: int, *, batch_size: int, seed: int, device: torch.device | str
) -> Iterator[torch.Tensor]:
    """``n`` generated images in batches, float ``[B, 3, R, R]`` in [-1, 1], reproducible in ``seed``.

    z is standard normal ``[B, G.z_dim]``; y is uniform over ``G.num_classes`` (all
    zeros, and ignored by G, when it is 0). Both come from a CPU ``torch.Generator``
    seeded with ``seed``; the global RNG is not used. Call under ``torch.no_grad``.
    """
    for images, _ in sample_labeled_batches(G, n, batch_size=batch_size, seed=seed, device=device):
        yield images


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

    Samples ``eval.n_samples`` images once (seed ``eval.seed``, G in ``eval.g_mode``),
    pushes each batch once through torch-fidelity's ``inception-v3-compat``, and
    computes every metric in ``eval.metrics`` from those features
    (:func:`sagan.metrics.suite.score_features`) against the reference set
    (``cfg.data``, ``eval.reference.split``, ``eval.reference.n``): FID (Heusel et al.
    2017 / the TTUR code), IS (Salimans et al. 2016), KID (Binkowski et al. 2018),
    precision/recall (Kynkaanniemi et al. 2019, on Inception features), FID∞ (Chong &
    Forsyth 2020), density/coverage (Naeem et al. 2020), intra-FID (Miyato & Koyama
    2018); ``consistency`` (:func:`sagan.data.synthetic.consistency`, synthetic objects only) and
    ``mirror`` (the mean of :func:`sagan.data.mirror.mirror`, synthetic mirror only).

    Args:
        G: ``G(z, y) -> [B, 3, R, R]`` in [-1, 1], with ``z_dim`` and ``num_classes``; on ``device``.
        cfg: the run's :class:`~sagan.config.Config`.
        step: G steps done; recorded.
        device: where G lives and the extractor runs.
        ema: whether ``G`` is the EMA copy; recorded.
        run_dir: the run's folder. Not written to: the caller appends the record to
            ``run_dir/eval.jsonl``.
        reference: ``(dataset, fingerprint)`` to use instead of
            ``sagan.data.datasets.build_dataset(cfg.data, split)`` and its fingerprint.
        stop: asked before each batch (generated, or real on a reference cache miss):
            when it says True the evaluation is abandoned, so that a time limit's
            warning is heeded within one batch however large ``n_samples`` is.

    Returns:
        ``{"kind": "eval", "step", "time", "wall_s", "metrics": {...}, "protocol": {...},
        "protocol_id", "protocol_ids": {value: id}, "timing": {...}}``, plus
        ``"details"`` (FID∞'s per-N FIDs and fit, intra-FID's per-class values) when
        those ran and ``"skipped"`` naming metrics asked for but not defined for this data.

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
    probes, skipped = probe_metrics(cfg, wanted)
    want_consistency, want_mirror = "consistency" in probes, "mirror" in probes
    if "intra_fid" in inception and int(getattr(G, "num_classes", 0)) < 1:
        skipped["intra_fid"] = "defined only for a class-conditional G (num_classes >= 1)"
        inception.remove("intra_fid")
    if want_consistency:
        from sagan.data.synthetic import consistency
    if want_mirror:
        from sagan.data.mirror import mirror
    _check_counts(inception, ev.n_samples, ev.reference.n)
    weights = resolve_weights(ev.inception_weights) if inception else None  # fail before any work
    dino = _dino_weights(cfg, wanted)
    want_swd = "swd" in wanted
    # Nothing to compute (consistency asked for on non-synthetic data): do not sample either.
    n_sample = ev.n_samples if inception or dino or probes or want_swd else 0

    timing: dict[str, Any] = {}
    ref: ReferenceStats | None = None
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
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
                dataset,
                key_parts=key_parts,
                cfg=cfg,
                device=device,
                weights=weights,
                stop=stop,
                per_class="intra_fid" in inception,
            )
            timing["reference_s"] = round(set_s + time.perf_counter() - t, 3)
            timing["reference_cache"] = "hit" if ref.hit else "miss"

        dino_ref = dino_acc = None
        if dino is not None:
            from sagan.metrics import dinov2

            t = time.perf_counter()
            spec = dinov2.extractor_spec(dino)
            dino_ref = reference_statistics(
                dataset, key_parts=key_parts, cfg=cfg, device=device, stop=stop, extractor=spec
            )
            dino_acc = FeatureAccumulator(spec.build(device), device)
            timing["reference_dinov2_s"] = round(time.perf_counter() - t, 3)
            timing["reference_dinov2_cache"] = "hit" if dino_ref.hit else "miss"

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
        mirror_sum = 0.0
        generate_s = extract_s = dino_s = 0.0
        labels = []
        with sampling_mode(G, ev.g_mode), torch.no_grad():
            batches = sample_labeled_batches(
                G, n_sample, batch_size=ev.batch_size, seed=ev.seed, device=device
            )
            while True:
                if stop is not None and stop():
                    raise EvaluationStopped(
                        f"evaluation of G step {step}: abandoned on a stop request after "
                        f"{seen} of {n_sample} samples"
                    )
                t_batch = time.perf_counter()
                item = next(batches, None)
                if item is None:
                    break
                images, y = item
                _check_shape(images, cfg.data.resolution)
                images = to_uint8(images)
                t_extract = time.perf_counter()
                generate_s += t_extract - t_batch
                if acc is not None:
                    acc.add(images)
                    extract_s += time.perf_counter() - t_extract
                if dino_acc is not None:
                    t_dino = time.perf_counter()
                    dino_acc.add(images)
                    dino_s += time.perf_counter() - t_dino
                labels.append(y)
                if want_consistency:
                    consistent += int(consistency(images.cpu()).sum())
                if want_mirror:
                    mirror_sum += float(mirror(images.cpu()).double().sum())
                if swd_fake is not None and seen < n_swd:
                    swd_fake.add(images[: n_swd - seen])
                seen += len(images)
        timing["generate_extract_s"] = round(time.perf_counter() - t, 3)
        timing["generate_s"] = round(generate_s, 3)
        timing["extract_s"] = {}
        if acc is not None:
            timing["extract_s"]["inception"] = round(extract_s, 3)
        if dino_acc is not None:
            timing["extract_s"]["dinov2"] = round(dino_s, 3)

        t = time.perf_counter()
        if acc is not None:
            values, details, seconds = score_features(
                inception, acc.result(), torch.cat(labels) if labels else torch.zeros(0), ref
            )
            metrics.update(values)
            timing["metric_s"] = seconds
        if dino_acc is not None:
            t_fd = time.perf_counter()
            features = dino_acc.result()[dinov2.FEATURE]
            metrics["fd_dinov2"] = fid_from_statistics(
                moments_of(features), dino_ref.fid_statistics()
            )
            timing.setdefault("metric_s", {})["fd_dinov2"] = round(time.perf_counter() - t_fd, 3)
        if want_consistency:
            metrics["consistency"] = consistent / n_sample
        if want_mirror:
            metrics["mirror"] = mirror_sum / n_sample
        if swd_fake is not None:
            metrics["swd"] = swd.swd(swd_real, swd_fake, ev.seed)
        timing["metrics_s"] = round(time.perf_counter() - t, 3)

    # features_kept, not len(ref.features()): a FID-only evaluation never reads them.
    blocks = metric_blocks(inception, n_sample, features_kept(ref.n) if ref is not None else 0)
    blocks |= probe_blocks(probes)
    if dino is not None:
        blocks["fd_dinov2"] = dinov2.protocol(dino, dino_ref.protocol())
    protocol = _protocol(
        cfg,
        weights,
        ref.protocol() if ref is not None else None,
        n_sample,
        ema,
        device,
        swd_protocol,
        blocks,
    )
    record: dict[str, Any] = {
        "kind": "eval",
        "step": int(step),
        "time": started.isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t_start, 3),
        "metrics": metrics,
        "protocol": protocol,
        "timing": timing,
    }
    record["protocol_id"] = protocol_id(protocol)
    record["protocol_ids"] = metric_protocol_ids(protocol, list(metrics))
    if details:
        record["details"] = details
    if skipped:
        record["skipped"] = skipped
    log.info("eval step %d: %s", step, metrics)
    return record


__all__ = [
    "LazySplit",
    "evaluate_generator",
    "planned_protocol",
    "reference_set",
    "sample_batches",
    "sample_labeled_batches",
    "sampling_mode",
]
