"""FID, IS, KID, precision/recall, FID∞/IS∞, density/coverage, intra-FID, FD-DINOv2
and the synthetic probes (consistency, mirror), with the protocol on every number.

Built on torch-fidelity's ``inception-v3-compat`` extractor and metric functions;
see :mod:`sagan.metrics.fidelity` for what is called, :mod:`sagan.metrics.suite` for
the metrics computed from shared features (:mod:`~sagan.metrics.fid_inf`,
:mod:`~sagan.metrics.dc`, :mod:`~sagan.metrics.intra_fid`),
:mod:`sagan.metrics.dinov2` for FD-DINOv2's extractor, :mod:`sagan.metrics.reference`
for the reference-statistics cache, :mod:`sagan.metrics.weights` for the weights file.
"""

from sagan.metrics.errors import MetricsError
from sagan.metrics.evaluate import evaluate_generator, sample_batches, sampling_mode
from sagan.metrics.fidelity import (
    compute_metrics,
    extract_features,
    feature_extractor,
    fid_from_features,
    fid_from_statistics,
    fid_statistics,
    to_uint8,
)
from sagan.metrics.protocol import build_protocol
from sagan.metrics.reference import ReferenceStats, cache_dir, cache_key, reference_statistics
from sagan.metrics.weights import (
    WEIGHTS_FILE,
    WEIGHTS_SHA256_PREFIX,
    WEIGHTS_URL,
    WeightsInfo,
    default_weights_path,
    inception_weights_path,
    is_canonical,
    make_random_weights,
    resolve_weights,
    sha256_file,
)

__all__ = [
    "MetricsError",
    "ReferenceStats",
    "WEIGHTS_FILE",
    "WEIGHTS_SHA256_PREFIX",
    "WEIGHTS_URL",
    "WeightsInfo",
    "build_protocol",
    "cache_dir",
    "cache_key",
    "compute_metrics",
    "default_weights_path",
    "evaluate_generator",
    "extract_features",
    "feature_extractor",
    "fid_from_features",
    "fid_from_statistics",
    "fid_statistics",
    "inception_weights_path",
    "is_canonical",
    "make_random_weights",
    "reference_statistics",
    "resolve_weights",
    "sample_batches",
    "sampling_mode",
    "sha256_file",
    "to_uint8",
]
