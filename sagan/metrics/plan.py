"""What an evaluation will record, decided before any work: the checks that fail
early, the weights each extractor needs, and the protocol of the record.

:func:`planned_protocol` lets a caller see whether a number was already made (its
protocol id) before paying for it; :func:`sagan.metrics.evaluate.evaluate_generator`
makes the same checks and records the same protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from sagan.metrics import dc
from sagan.metrics.errors import MetricsError
from sagan.metrics.protocol import (
    INCEPTION_METRICS,
    ISC_SPLITS,
    METRIC_VALUES,
    PRC_NEIGHBORHOOD,
    REFERENCE_METRICS,
    build_protocol,
)
from sagan.metrics.reference import ReferenceStats, features_kept
from sagan.metrics.refset import _reference_source, _swd_protocol, needs_reference
from sagan.metrics.suite import metric_blocks
from sagan.metrics.weights import resolve_weights


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
    if "dc" in metrics and features_kept(n_reference or n_generated) <= dc.DC_NEAREST_K:
        raise MetricsError(
            f"eval.reference.n = {n_reference}: density/coverage uses each real image's "
            f"{dc.DC_NEAREST_K}-th nearest neighbour; use more than {dc.DC_NEAREST_K} reference images."
        )
    if "fid_inf" in metrics or "is_inf" in metrics:
        from sagan.metrics.fid_inf import fid_inf_sizes

        try:
            fid_inf_sizes(n_generated)
        except ValueError as e:
            raise MetricsError(f"eval.n_samples = {n_generated}: {e}") from None


def probe_metrics(cfg: Any, wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    """The synthetic probe scores of ``wanted`` that ``cfg.data`` defines, and why
    each other one is skipped: ``consistency`` needs the objects mode, ``mirror``
    the mirror mode.

    Returns:
        ``(computed, {metric: reason skipped})``.
    """
    mode = cfg.data.synthetic.mode if cfg.data.name == "synthetic" else None
    computed, skipped = [], {}
    for metric, needs in (("consistency", "objects"), ("mirror", "mirror")):
        if metric not in wanted:
            continue
        if mode == needs:
            computed.append(metric)
        else:
            skipped[metric] = f"defined only for data.name: synthetic, data.synthetic.mode: {needs}"
    return computed, skipped


def probe_blocks(probes: list[str]) -> dict[str, Any]:
    """The protocol block of each probe score in ``probes`` that has one (``mirror``)."""
    if "mirror" not in probes:
        return {}
    from sagan.data import mirror

    return {"mirror": mirror.protocol()}


def _protocol(
    cfg: Any,
    weights: Any,
    reference: dict[str, Any] | None,
    n_sample: int,
    ema: bool,
    device: torch.device | str,
    swd: dict[str, Any] | None = None,
    blocks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ev = cfg.eval
    return build_protocol(
        swd=swd,
        blocks=blocks,
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
    if not cfg.data.conditional and "intra_fid" in inception:
        inception.remove("intra_fid")  # skipped for an unconditional G, as evaluation does
    probes, _ = probe_metrics(cfg, wanted)
    _check_counts(inception, ev.n_samples, ev.reference.n)
    weights = resolve_weights(ev.inception_weights) if inception else None
    dino = _dino_weights(cfg, wanted)
    n_sample = ev.n_samples if inception or dino or probes or "swd" in wanted else 0
    ref = swd_protocol = None
    if needs_reference(wanted):
        dataset, key_parts = _reference_source(cfg, reference)
    if any(m in REFERENCE_METRICS for m in inception):
        parts = cache_key_parts(key_parts, weights.sha256, len(dataset))
        ref = ReferenceStats(Path(), cache_key(parts), parts, hit=False).protocol()
    if "swd" in wanted:
        swd_protocol = _swd_protocol(cfg, key_parts, len(dataset))
    blocks = metric_blocks(inception, n_sample, features_kept(ref["n"]) if ref else 0)
    blocks |= probe_blocks(probes)
    if dino is not None:
        from sagan.metrics import dinov2

        spec = dinov2.extractor_spec(dino)
        parts = cache_key_parts(key_parts, spec.sha256, len(dataset), spec.name, spec.layer)
        dino_ref = ReferenceStats(Path(), cache_key(parts), parts, hit=False).protocol()
        blocks["fd_dinov2"] = dinov2.protocol(dino, dino_ref)
    return _protocol(cfg, weights, ref, n_sample, ema, device, swd_protocol, blocks)


def planned_values(cfg: Any) -> list[str]:
    """The values :func:`evaluate_generator` would record for ``cfg.eval`` (``fid``,
    ``is_mean``, ``is_std``, ...), without the metrics it would skip for this data:
    with :func:`planned_protocol`, the per-value protocol ids
    (:func:`~sagan.metrics.protocol.metric_protocol_ids`) a caller can look for."""
    wanted = list(dict.fromkeys(cfg.eval.metrics))
    _, skipped = probe_metrics(cfg, wanted)
    if not cfg.data.conditional:
        skipped["intra_fid"] = "unconditional"
    return [v for m in wanted if m not in skipped for v in METRIC_VALUES.get(m, (m,))]


def _dino_weights(cfg: Any, wanted: list[str]):
    """fd_dinov2's weights (checked to exist) when it is wanted, else None."""
    if "fd_dinov2" not in wanted:
        return None
    from sagan.metrics.dinov2 import resolve_dinov2_weights

    return resolve_dinov2_weights(cfg.eval.dinov2_weights, cfg.eval.dinov2_model)


__all__ = ["planned_protocol", "planned_values"]
