"""Intra-FID: FID computed within each class, then averaged over the classes
(Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018, §4.1; the SAGAN
paper's Table 2 reports it for its class-conditional ImageNet models).

For each class c: the Fréchet distance between the Inception statistics of the
generated images labelled c (the label G was given) and of the reference images of
class c. The value recorded is the unweighted mean over the classes; the per-class
values are kept in the record's details.
"""

from __future__ import annotations

from typing import Any

import torch

from sagan.metrics.errors import MetricsError
from sagan.metrics.moments import FrechetReference
from sagan.metrics.reference import CLASS_RULE


def intra_fid(
    features: torch.Tensor,
    labels: torch.Tensor,
    class_statistics: dict[int, dict[str, Any]],
) -> dict[str, Any]:
    """Per-class Fréchet distances and their mean.

    Args:
        features: generated features ``[n, D]``; ``labels``: the class of each ``[n]``.
        class_statistics: the reference's ``{class: {"mu", "sigma", "n"}}``.

    Returns:
        ``{"intra_fid": mean, "per_class": {class: FID}, "n_generated": {class: count}}``.

    Raises:
        MetricsError: a generated class missing from the reference, or one with fewer
            than 2 samples (no covariance).
    """
    per_class, counts = {}, {}
    for c in sorted(labels.unique().tolist()):
        c = int(c)
        rows = features[labels == c]
        if c not in class_statistics:
            raise MetricsError(
                f"intra_fid: G generated class {c}, which the reference set has no image of "
                f"(reference classes: {sorted(class_statistics)})"
            )
        if len(rows) < 2:
            raise MetricsError(
                f"intra_fid: class {c} got {len(rows)} generated sample(s); a covariance needs at "
                f"least 2. Raise eval.n_samples."
            )
        per_class[c] = FrechetReference(class_statistics[c]).distance_to_features(rows)
        counts[c] = len(rows)
    missing = sorted(set(class_statistics) - set(per_class))
    if missing:
        raise MetricsError(
            f"intra_fid: no generated sample of class(es) {missing[:10]}; raise eval.n_samples "
            f"(labels are uniform over the classes)."
        )
    return {
        "intra_fid": float(sum(per_class.values()) / len(per_class)),
        "per_class": per_class,
        "n_generated": counts,
    }


def protocol() -> dict[str, Any]:
    """The ``intra_fid`` protocol block."""
    return {
        "metric": "intra-FID, mean over classes of per-class FID (Miyato & Koyama 2018)",
        "reference_classes": CLASS_RULE,
        "generated_classes": "the label each sample was generated with",
        "mean": "unweighted over classes",
        "frechet": "float64, trace via eigvalsh(sqrt(S_ref) S_gen sqrt(S_ref))",
    }


__all__ = ["intra_fid", "protocol"]
