"""The training configuration: one pydantic model, loaded from YAML plus overrides.

Defaults follow the authors' official TensorFlow code (see ``shared/reference``);
where the paper's text differs, the paper's version is an option. Unknown keys and
wrong types are rejected with the key's full dotted path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from sagan.nets.arch import ARCHS, attention_sizes


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (PyYAML follows YAML 1.1, which
    needs ``1.0e-4``; researchers write learning rates the short way)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A configuration problem, phrased for a person: what, where, what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DEFAULT_ATTENTION = {32: (16,), 64: (32,), 128: (32,)}


class SyntheticConfig(_Strict):
    # objects: two objects of one colour in opposite halves (sagan.data.synthetic);
    # mirror: a fine texture at the left edge mirrored at the right (sagan.data.mirror).
    mode: Literal["objects", "mirror"] = "objects"
    n_images: int = Field(8192, ge=16)
    n_classes: int = Field(4, ge=1, le=8)
    seed: int = 0


class DataConfig(_Strict):
    name: Literal["synthetic", "cifar10", "imagefolder", "prepared"]
    root: str = "data"
    resolution: Literal[32, 64, 128] = 128
    conditional: bool = True
    num_workers: int = Field(0, ge=0)
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(_Strict):
    ch: int = Field(64, ge=8)
    z_dim: int = Field(128, ge=1)
    # Feature-map sizes holding attention; null = the default placement for the
    # resolution: feat32 at 64/128 (the official code), feat16 at 32 (StudioGAN's CIFAR).
    attn_g: list[int] | None = None
    attn_d: list[int] | None = None
    attn_block: Literal["attention", "residual"] = "attention"
    # official: f, g C/8, h C/2, 2x2 max-pooled keys and values; paper: h C/8, no pooling.
    attention_variant: Literal["official", "paper"] = "official"
    # How the attention's weighted sum is computed: sdpa (scaled_dot_product_attention,
    # a fused kernel that never holds the N x N/4 weights where one exists) or matmul
    # (softmax(q k^T) v, explicit: the reference the benchmark compares against).
    attention_kernel: Literal["sdpa", "matmul"] = "sdpa"
    sn_g: bool = True
    sn_d: bool = True
    init: Literal["xavier", "ortho"] = "xavier"
    # Batch-norm running statistics (what eval-mode G normalises with). official: the
    # official code's decays, 0.999 for the conditional BNs and 0.9999 for G's last BN
    # (PyTorch momenta 0.001 and 0.0001); a number is PyTorch's momentum for every BN
    # (0.1: PyTorch's and BigGAN-PyTorch's default).
    bn_momentum: Literal["official"] | Annotated[float, Field(gt=0, le=1)] = "official"
    # Samples per batch-norm group in training: the official code normalised its batch
    # of 256 as 4 towers of 64. null: the whole batch (per device under DDP).
    bn_group: int | None = Field(None, ge=1)
    # D's spectral norm during the G step. hold: sigma from one power iteration that is
    # not stored, so D's u moves only in D steps (the official update_collection
    # "NO_OPS"); advance: stored as in a D step (PyTorch's behaviour in train mode).
    sn_g_step: Literal["hold", "advance"] = "hold"


class TrainConfig(_Strict):
    steps: int = Field(1_000_000, ge=1, description="generator steps")
    batch_size: int = Field(256, ge=1)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    # The official code leaves beta2 at TensorFlow's 0.999; the paper says 0.9.
    betas: tuple[float, float] = (0.0, 0.999)
    n_dis: int = Field(1, ge=1)
    loss: Literal["hinge"] = "hinge"
    ema: float | None = Field(None, gt=0, lt=1)
    ema_start: int = Field(0, ge=0)
    seed: int = 0
    amp: bool = False  # bf16 autocast (CUDA and CPU); losses and spectral norm in fp32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True  # NHWC memory format for both networks and the inputs
    # torch.compile of G and D (inductor), meant for GPUs. Compiled kernels round
    # differently from eager ones, and on the CPU not the same way in every process:
    # a compiled run resumes to within rounding, not bit for bit (docs/measured.md).
    compile: bool = False
    # Several devices (DDP): batch-norm statistics per device, as the official code
    # computes them, unless this is set (SyncBatchNorm, CUDA only).
    sync_bn: bool = False
    # Whether CUDA's float32 convolutions and matmuls may use TF32 (10 mantissa bits).
    # false: exact float32, as the official code trains; torch would otherwise run
    # cuDNN convolutions in TF32. No effect on the CPU.
    tf32: bool = False
    # cuDNN's autotuner for the step's static shapes (CUDA only). Not in the run id: it
    # only chooses among cuDNN's algorithms for the same convolutions, which changes
    # results by rounding on CUDA alone; the value used is recorded in env.jsonl.
    cudnn_benchmark: bool = True
    ckpt_every: int = Field(1000, ge=1)
    ckpt_keep: int = Field(2, ge=1)
    log_every: int = Field(100, ge=1)
    sample_every: int = Field(1000, ge=1)
    n_samples: int = Field(64, ge=1)
    tensorboard: bool = False


class ReferenceConfig(_Strict):
    split: Literal["train", "test"] = "train"
    n: int | None = Field(None, ge=2, description="real images; null = the whole split")


# What eval.metrics and final.metrics may name (sagan.metrics.evaluate computes each).
MetricName = Literal[
    "fid",
    "is",
    "kid",
    "prc",
    "fid_inf",
    "is_inf",
    "dc",
    "intra_fid",
    "fd_dinov2",
    "swd",
    "consistency",
    "mirror",
]


class ProtocolConfig(_Strict):
    """How a number is made: what ``eval`` (monitoring) and ``final`` (scoring) share."""

    n_samples: int = Field(50_000, ge=2)
    metrics: list[MetricName] = ["fid", "is"]
    reference: ReferenceConfig = ReferenceConfig()
    seed: int = 0
    batch_size: int = Field(100, ge=1)
    use_ema: bool = True
    g_mode: Literal["eval", "train"] = "eval"
    inception_weights: str | None = None
    # fd_dinov2's extractor (sagan.metrics.dinov2): the DINOv2 model and its weights
    # file (null: torch.hub's cache, where `python -m sagan.prefetch --dinov2` puts it).
    dinov2_model: Literal["vit-s-14", "vit-b-14", "vit-l-14"] = "vit-l-14"
    dinov2_weights: str | None = None
    cache_dir: str | None = None


class EvalConfig(ProtocolConfig):
    """Monitoring during training: cheap evaluations every ``every`` G steps."""

    every: int | None = Field(None, ge=1, description="G steps; null = only at the end")
    at_end: bool = True


# The monitored metric each best_by name needs in eval.metrics.
BEST_BY = {
    "fid": "fid",
    "is_mean": "is",
    "kid_mean": "kid",
    "precision": "prc",
    "recall": "prc",
    "consistency": "consistency",
    "mirror": "mirror",
    "swd": "swd",
    "fid_inf": "fid_inf",
    "is_inf": "is_inf",
    "density": "dc",
    "coverage": "dc",
    "intra_fid": "intra_fid",
    "fd_dinov2": "fd_dinov2",
}


class FinalConfig(ProtocolConfig):
    """The scoring of record, once training is done (e.g. FID-50k of the EMA G).

    ``checkpoint``: which checkpoint is scored: ``last``, ``best`` by the monitored
    metric ``best_by`` (a checkpoint kept for it through rotation), or ``both``.
    With ``best`` or ``both``, ``seed`` defaults to ``eval.seed + 1``: the checkpoint
    chosen by the monitored samples is scored on samples independent of them.
    """

    checkpoint: Literal["last", "best", "both"] = "last"
    best_by: (
        Literal[
            "fid",
            "is_mean",
            "kid_mean",
            "precision",
            "recall",
            "swd",
            "consistency",
            "mirror",
            "fid_inf",
            "is_inf",
            "density",
            "coverage",
            "intra_fid",
            "fd_dinov2",
        ]
        | None
    ) = None


class Config(_Strict):
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    final: FinalConfig | None = None

    @model_validator(mode="after")
    def _check_placement(self) -> Config:
        res = self.data.resolution
        for net in ("g", "d"):
            key = f"attn_{net}"
            if getattr(self.model, key) is None:
                setattr(self.model, key, list(DEFAULT_ATTENTION[res]))
            sizes = getattr(self.model, key)
            allowed = attention_sizes(res, net)
            for s in sizes:
                if s not in allowed:
                    raise ValueError(
                        f"model.{key}: {s} is not a feature-map size at resolution {res} "
                        f"({net.upper()} can hold attention at {', '.join(map(str, allowed))})"
                    )
            if len(set(sizes)) != len(sizes):
                raise ValueError(f"model.{key}: {sizes} lists a size twice")
        if self.data.name == "synthetic" and self.data.synthetic.n_images < self.train.batch_size:
            raise ValueError(
                f"data.synthetic.n_images: {self.data.synthetic.n_images} images are fewer than "
                f"train.batch_size={self.train.batch_size}"
            )
        fin = self.final
        if fin is not None and fin.checkpoint != "last":
            if fin.best_by is None:
                raise ValueError(
                    f"final.best_by: final.checkpoint {fin.checkpoint!r} needs the monitored "
                    "metric that names the best checkpoint (fid, is_mean, consistency, ...)"
                )
            if BEST_BY[fin.best_by] not in self.eval.metrics or self.eval.every is None:
                raise ValueError(
                    f"final.best_by: {fin.best_by!r} must be monitored during training: add "
                    f"{BEST_BY[fin.best_by]!r} to eval.metrics and set eval.every "
                    f"(got eval.metrics {self.eval.metrics}, eval.every {self.eval.every})"
                )
            # The best checkpoint is chosen by monitored values; scoring it with the same
            # samples would carry the minimum's optimistic bias into the number of record.
            if "seed" not in fin.model_fields_set:
                fin.seed = self.eval.seed + 1
            elif fin.seed == self.eval.seed:
                raise ValueError(
                    f"final.seed: {fin.seed} is eval.seed too; final.checkpoint "
                    f"{fin.checkpoint!r} scores a checkpoint chosen by the monitored samples, "
                    "so its own samples must be independent of them: give final.seed another "
                    "value (or leave it out: eval.seed + 1)"
                )
        group = self.model.bn_group
        if group is not None and self.train.batch_size % group:
            raise ValueError(
                f"model.bn_group: {group} does not divide train.batch_size={self.train.batch_size}"
            )
        if self.train.sync_bn and group is not None:
            # SyncBatchNorm replaces the grouped batch norm with one over the whole
            # global batch: the groups would be dropped without a word.
            raise ValueError(
                f"train.sync_bn: true normalises over the whole global batch, so it cannot "
                f"keep model.bn_group: {group}; set one of them (sync_bn: false keeps the "
                "groups per device)"
            )
        if self.data.name == "cifar10" and res != 32:
            raise ValueError(f"data.resolution: cifar10 images are 32x32, got {res}")
        return self


# Keys whose change does not alter anything computed so far: a run may be resumed
# with a different value (extend a run, log more often, move it to another device).
RESUME_SAFE = (
    "train.steps",
    "train.log_every",
    "train.sample_every",
    "train.ckpt_every",
    "train.ckpt_keep",
    "train.n_samples",
    "train.tensorboard",
    "train.device",
    "train.cudnn_benchmark",
    "data.root",
    "data.num_workers",
    # Which storage: the data identity, checked on resume, stands for what the data
    # is (a prepared folder resumes a run its folder began; see sagan.data.prepared).
    "data.name",
    "eval.",
    "final",  # the scoring section: null, or its keys
    "final.",
)


def key_matches(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether a dotted key is one of ``patterns`` (a pattern ending in '.' is a section)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d['a']['b'] = value`` for ``key='a.b'``, creating dicts on the way."""
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: '{p}' is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML (``[8,16]``, ``null``, ``1e-4``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.steps=100")
        try:
            out[key.strip()] = yaml_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
    return out


def error_message(e: ErrorDetails) -> str:
    """One pydantic error as this project words it, naming the value it got.

    ``data.name: 'imagenette9' is not one of synthetic, cifar10, imagefolder, prepared``;
    ``train.lr_d: Input should be a valid number (got 'fast')``. Messages of our own
    validators already name the value and are kept as they are.
    """
    kind, msg, got = e["type"], e["msg"], e.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if kind in ("literal_error", "enum"):
        expected = str(e.get("ctx", {}).get("expected", ""))
        allowed = ", ".join(a.strip().strip("'") for a in expected.replace(" or ", ", ").split(","))
        return f"{got!r} is not one of {allowed}"
    return f"{msg} (got {got!r})"


def describe_errors(err: ValidationError | list[ErrorDetails], where: str = "") -> str:
    """One line per problem: ``where: dotted.key: message`` (see :func:`error_message`).

    ``err`` may be a ValidationError's ``errors()``, reworded first by the caller.
    """
    lines = []
    for e in err.errors() if isinstance(err, ValidationError) else err:
        loc = ".".join(str(p) for p in e["loc"])
        msg = error_message(e)
        if not loc and msg.startswith("model."):
            lines.append(f"{where}{msg}")
        else:
            lines.append(f"{where}{loc}: {msg}" if loc else f"{where}{msg}")
    return "\n".join(lines)


def build_config(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, where: str = ""
) -> Config:
    """Validate a raw dict (plus dotted overrides) into a :class:`Config`.

    Raises:
        ConfigError: naming every bad key by its full dotted path.
    """
    raw = _deepcopy(raw)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, f"{where}: " if where else "")) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, eval)")
    return data


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML config file and apply ``key=value`` overrides."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return build_config(load_yaml(path), overrides, where=str(path))


def to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# What a key meant before it existed: a config (or checkpoint) written without the key
# computed this. A key added later whose default keeps the old behaviour is listed
# with that default; one whose default changed what is computed, with the old value.
LEGACY_DEFAULTS: dict[str, Any] = {
    "model.bn_momentum": 0.1,
    "model.bn_group": None,
    "model.sn_g_step": "advance",
    "train.sync_bn": False,
    "train.compile": False,
    "model.attention_kernel": "sdpa",
    # No CUDA run had trained before the key (CPU runs are unaffected by it).
    "train.tf32": False,
    # Every synthetic run before the mirror mode drew the two-object images.
    "data.synthetic.mode": "objects",
}


def resume_conflicts(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys that differ between two config dicts and matter for resuming.

    A key missing from ``saved`` (written before the key existed) stands for its
    :data:`LEGACY_DEFAULTS` value.
    """
    a, b = flatten(saved), flatten(new)
    a = {k: LEGACY_DEFAULTS[k] for k in LEGACY_DEFAULTS if k not in a} | a
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and not key_matches(k, RESUME_SAFE)]


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


__all__ = [
    "ARCHS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "build_config",
    "flatten",
    "load_config",
    "parse_overrides",
    "resume_conflicts",
    "to_dict",
    "to_yaml",
]
