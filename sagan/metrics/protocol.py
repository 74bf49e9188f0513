"""The evaluation protocol: the fixed settings, and the record every number carries.

The settings are torch-fidelity's own defaults (``torch_fidelity.defaults``), read
from it rather than copied, so that "FID" here means what it means in torch-fidelity:
2048-d pool features of the TF-ported Inception for FID/KID, unbiased logits for IS
with 10 splits, KID with a cubic polynomial kernel over 100 subsets of 1000. Where a
small evaluation cannot honour a setting (KID subsets larger than the sample) the
value actually used is what the record says.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch_fidelity
from torch_fidelity.defaults import DEFAULTS

from sagan.metrics.weights import EXTRACTOR, WeightsInfo

INCEPTION_METRICS = ("fid", "is", "kid", "prc", "fid_inf", "is_inf", "dc", "intra_fid")
# Metrics compared against the reference set (IS looks at generated images only).
REFERENCE_METRICS = ("fid", "kid", "prc", "fid_inf", "dc", "intra_fid")
# Metrics with a protocol block of their own (present only when they ran, so that
# records without them keep their ids); each gets its own protocol id.
BLOCK_METRICS = ("fid_inf", "is_inf", "dc", "intra_fid", "fd_dinov2", "swd", "mirror")
# Metrics on DINOv2 features (sagan.metrics.dinov2), compared against the reference set.
DINOV2_METRICS = ("fd_dinov2",)
# The values each metric records.
METRIC_VALUES = {
    "fid": ("fid",),
    "is": ("is_mean", "is_std"),
    "kid": ("kid_mean", "kid_std"),
    "prc": ("precision", "recall"),
    "fid_inf": ("fid_inf",),
    "is_inf": ("is_inf",),
    "dc": ("density", "coverage"),
    "intra_fid": ("intra_fid",),
    "fd_dinov2": ("fd_dinov2",),
    "swd": ("swd",),
    "consistency": ("consistency",),
    "mirror": ("mirror",),
}
# The metric that records each value.
_OWNER = {v: m for m, vs in METRIC_VALUES.items() for v in vs}
ISC_SPLITS: int = DEFAULTS["isc_splits"]
KID_SUBSETS: int = DEFAULTS["kid_subsets"]
KID_SUBSET_SIZE: int = DEFAULTS["kid_subset_size"]
PRC_NEIGHBORHOOD: int = DEFAULTS["prc_neighborhood"]
# torch-fidelity's seed for the IS split shuffle and the KID subsets.
METRIC_RNG_SEED: int = DEFAULTS["rng_seed"]
# torch-fidelity's feature of each metric for this extractor
# (FeatureExtractorInceptionV3.get_default_feature_layer_for_metric). For precision/recall
# torch-fidelity would switch to VGG16 (a second download); we keep the Inception pool
# features, which the record states.
FEATURE_LAYERS = {"fid": "2048", "is": "logits_unbiased", "kid": "2048", "prc": "2048"}
RESIZE = "tf-compat bilinear (torch-fidelity)"
# generated float in [-1, 1] -> uint8, as in stylegan2-ada's metric code: round half up.
QUANTIZE = "uint8(clamp(127.5 * x + 128, 0, 255)), i.e. round-half-up of 127.5 * (x + 1)"
# Reference images are the whole split, or this seeded random subset of it.
REFERENCE_SUBSET_SEED = 0
# Reference features (not moments) kept for KID, precision/recall and density/coverage:
# at most this many, a seeded random subset of the reference images; as many as a
# 50k evaluation generates (400 MB of float32).
REFERENCE_FEATURES_MAX = 50_000
REFERENCE_FEATURES_SEED = 1


def kid_subset_size(n_generated: int, n_reference: int) -> int:
    """torch-fidelity's KID subset size, capped by the smaller of the two samples."""
    return min(KID_SUBSET_SIZE, n_generated, n_reference)


def fidelity_kwargs(n_generated: int, n_reference: int) -> dict[str, Any]:
    """Keyword arguments for torch-fidelity's ``*_features_to_metric`` functions."""
    return {
        "isc_splits": ISC_SPLITS,
        "samples_shuffle": True,
        "rng_seed": METRIC_RNG_SEED,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": kid_subset_size(n_generated, n_reference),
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "save_cpu_ram": False,
        "verbose": False,
    }


# Protocol fields that do not change the number: left out of the protocol id.
NOT_IN_ID = ("device",)


def protocol_id(protocol: dict[str, Any]) -> str:
    """12 hex digits naming what makes a number comparable with another.

    The sha256 of every protocol field that changes the number (extractor, weights
    hash, resize, feature layers, precision, reference set and its fingerprint, sample
    counts, seeds, batch size, EMA or raw G, G's mode and batch-norm statistics,
    metric settings, torch-fidelity's version), and of nothing else (the device; wall
    times and hosts are not in the protocol at all). Two numbers with the same id were
    made the same way.
    """
    kept = {k: v for k, v in protocol.items() if k not in NOT_IN_ID}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def value_block(value: str) -> str | None:
    """The metric whose protocol block a recorded value's id covers (``fid_inf`` for
    ``fid_inf``, ``dc`` for ``density``), or None for a value of a metric without a
    block of its own (FID, IS, KID, PR), whose id covers the shared fields only."""
    metric = _OWNER.get(value)
    return metric if metric in BLOCK_METRICS else None


def value_protocol(protocol: dict[str, Any], value: str) -> dict[str, Any]:
    """The fields of ``protocol`` that apply to one recorded value: the shared fields
    plus the block of the metric that made it, and no other metric's block."""
    block = value_block(value)
    out = {k: v for k, v in protocol.items() if k not in BLOCK_METRICS}
    if block in protocol:
        out[block] = protocol[block]
    return out


def metric_protocol_ids(protocol: dict[str, Any], values: list[str]) -> dict[str, str]:
    """The protocol id of each recorded value: the id of the shared fields plus the
    block of the metric that made it (and no other metric's block,
    :func:`value_protocol`).

    So adding ``fid_inf`` to an evaluation leaves ``fid``'s id as it was, and a
    setting of one metric changes that metric's id only. A value of a metric without
    a block of its own (FID, IS, KID, PR) has the id of the shared fields, which is
    the record's ``protocol_id`` when no block metric ran.
    """
    return {value: protocol_id(value_protocol(protocol, value)) for value in values}


def build_protocol(
    *,
    weights: WeightsInfo | None,
    reference: dict[str, Any] | None,
    n_generated: int,
    ema: bool,
    g_mode: str,
    eval_seed: int,
    batch_size: int,
    device: str,
    bn_momentum: str | float = "official",
    swd: dict[str, Any] | None = None,
    blocks: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The protocol record of one evaluation (the "protocol" field of its record).

    Everything the reference notes say a number must carry (shared/reference/sagan.md,
    "Evaluation protocol"): extractor and weights hash, resize, reference set, sample
    counts, EMA or raw G, G's mode, step unit, plus the settings of each metric.
    ``weights``/``reference`` are ``None`` when only non-Inception metrics ran.
    ``blocks``: the protocol block of each block metric that ran (``fid_inf``, ``dc``,
    ``intra_fid``, ``fd_dinov2``), recorded under its name.
    """
    n_ref = reference["n"] if reference else None
    # Present only when the SWD (or a block metric) was computed, so that records
    # without it keep their ids.
    extra = {"swd": swd} if swd is not None else {}
    extra |= blocks or {}
    return extra | {
        "extractor": EXTRACTOR if weights else None,
        "weights_file": weights.path.name if weights else None,
        "weights_sha256": weights.sha256 if weights else None,
        "weights_canonical": weights.canonical if weights else None,
        "resize": RESIZE if weights else None,
        "feature_layers": dict(FEATURE_LAYERS) if weights else None,
        "quantize": QUANTIZE,
        "reference": reference,
        "n_generated": n_generated,
        "g": "ema" if ema else "raw",
        "g_mode": g_mode,
        # What eval-mode G normalises with: running statistics kept at this momentum.
        "bn_statistics": f"running (model.bn_momentum {bn_momentum})"
        if g_mode == "eval"
        else "batch",
        "step_unit": "G steps",
        "eval_seed": eval_seed,
        # z and y are drawn batch by batch from one generator: the batch size is part of the sample.
        "batch_size": batch_size,
        "labels": "uniform over classes, from the eval seed",
        "torch_fidelity": torch_fidelity.__version__,
        "isc_splits": ISC_SPLITS,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": kid_subset_size(n_generated, n_ref) if n_ref else KID_SUBSET_SIZE,
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "metric_rng_seed": METRIC_RNG_SEED,
        "tf32": False,
        "device": device,
    }


__all__ = [
    "BLOCK_METRICS",
    "DINOV2_METRICS",
    "FEATURE_LAYERS",
    "METRIC_VALUES",
    "REFERENCE_FEATURES_MAX",
    "REFERENCE_FEATURES_SEED",
    "metric_protocol_ids",
    "value_block",
    "value_protocol",
    "INCEPTION_METRICS",
    "ISC_SPLITS",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "METRIC_RNG_SEED",
    "PRC_NEIGHBORHOOD",
    "QUANTIZE",
    "REFERENCE_SUBSET_SEED",
    "RESIZE",
    "NOT_IN_ID",
    "build_protocol",
    "fidelity_kwargs",
    "protocol_id",
    "kid_subset_size",
]
