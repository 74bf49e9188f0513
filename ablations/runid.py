"""Run ids: a short hash of what a run computes, stable across versions of this code.

One run id means one computation. The id hashes:

- the config keys that change what is computed, and only those whose value differs
  from :data:`FROZEN_DEFAULTS`, the defaults as they were when ids were introduced.
  A key added later with a default that keeps the old behaviour (or an old key left
  at its default) therefore changes no existing id, and changing a default later
  does not silently make old runs look like new ones;
- the identity of the training data (:func:`sagan.data.identity.data_identity`):
  what the data is, not where it lies. The same folder copied elsewhere keeps its
  run ids; different data gets different ones.

Left out: where a run runs and how often it reports (``data.root``, ``data.num_workers``,
``train.device``, logging, sampling and checkpoint cadence) and everything under
``eval.*``. ``train.steps`` stays in: a longer run is a different result.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from sagan.config import (
    LEGACY_DEFAULTS,
    RESUME_SAFE,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    flatten,
    key_matches,
    to_dict,
)
from sagan.data.identity import data_identity

ID_VERSION = 1

# Keys not hashed as config values: location and cadence, and the data's own keys,
# which the data identity stands for.
NOT_HASHED = (
    *(k for k in RESUME_SAFE if k != "train.steps"),
    "data.name",
    "data.synthetic.",
)

# The defaults of ID_VERSION 1. Never edit an entry: ids of existing stores depend on it.
FROZEN_DEFAULTS: dict[str, Any] = {
    "data.resolution": 128,
    "data.conditional": True,
    "model.ch": 64,
    "model.z_dim": 128,
    "model.attn_g": None,
    "model.attn_d": None,
    "model.attn_block": "attention",
    "model.attention_variant": "official",
    "model.sn_g": True,
    "model.sn_d": True,
    "model.init": "xavier",
    "train.steps": 1000000,
    "train.batch_size": 256,
    "train.lr_g": 0.0001,
    "train.lr_d": 0.0004,
    "train.betas": [0.0, 0.999],
    "train.n_dis": 1,
    "train.loss": "hinge",
    "train.ema": None,
    "train.ema_start": 0,
    "train.seed": 0,
    "train.amp": False,
    "train.channels_last": True,
}

_MISSING = object()


@functools.cache
def current_defaults() -> dict[str, Any]:
    """Every config key's default in this version of the code, flattened."""
    out: dict[str, Any] = {}
    sections = {
        "data": DataConfig(name="synthetic"),
        "model": ModelConfig(),
        "train": TrainConfig(),
        "eval": EvalConfig(),
    }
    for name, section in sections.items():
        for k, v in flatten(section.model_dump(mode="json")).items():
            out[f"{name}.{k}"] = v
    return out


def hashed_values(flat: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The entries of a flattened config that enter the id.

    A key is left out when it is not about what is computed, or when its value is
    the frozen default. For a key newer than the frozen table that is what the code
    computed before the key existed (:data:`sagan.config.LEGACY_DEFAULTS`), else its
    default in ``defaults``: a new key whose default changed the computation (the
    official batch-norm momenta) enters every id.
    """
    out = {}
    for k, v in flat.items():
        if key_matches(k, NOT_HASHED):
            continue
        if v == FROZEN_DEFAULTS.get(k, LEGACY_DEFAULTS.get(k, defaults.get(k, _MISSING))):
            continue
        out[k] = v
    return out


def run_id_of(values: dict[str, Any], data_digest: str) -> str:
    """12 hex digits of the sha256 of the hashed values and the data's digest."""
    blob = json.dumps(
        {"v": ID_VERSION, "config": values, "data": data_digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_id(cfg: Config, data_digest: str | None = None) -> str:
    """The run id of ``cfg``: the same computation on the same data, the same id.

    Args:
        data_digest: the data identity's digest when the caller already has it;
            computed from ``cfg.data`` otherwise.

    Raises:
        DataError: the data cannot be identified (an imagefolder root that is missing).
    """
    if data_digest is None:
        data_digest = data_identity(cfg.data)["digest"]
    return run_id_of(hashed_values(flatten(to_dict(cfg)), current_defaults()), data_digest)


__all__ = ["FROZEN_DEFAULTS", "ID_VERSION", "hashed_values", "run_id", "run_id_of"]
