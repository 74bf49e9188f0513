import pytest
import yaml

from sagan.config import (
    ConfigError,
    build_config,
    load_config,
    parse_overrides,
    resume_conflicts,
    to_dict,
)

BASE = {"data": {"name": "synthetic", "resolution": 32}, "model": {"attn_g": [16], "attn_d": [16]}}


def test_defaults_follow_the_official_code():
    cfg = build_config({"data": {"name": "imagefolder"}})
    assert cfg.data.resolution == 128
    assert cfg.model.attn_g == [32] and cfg.model.attn_d == [32]
    assert cfg.model.attention_variant == "official"
    assert cfg.model.init == "xavier"
    assert (cfg.train.lr_g, cfg.train.lr_d) == (1e-4, 4e-4)
    assert cfg.train.betas == (0.0, 0.999)
    assert cfg.train.n_dis == 1 and cfg.train.loss == "hinge"


def test_unknown_key_is_named_by_its_full_path():
    with pytest.raises(ConfigError, match=r"model\.attn_gg: unknown key"):
        build_config(BASE, {"model.attn_gg": [8]})


def test_wrong_type_is_named_by_its_full_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"lr_d": "fast"}}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: train.lr_d:")


def test_bad_values_are_named_with_what_was_allowed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"name": "imagenette9"}}))
    with pytest.raises(ConfigError) as e:
        load_config(path, ["train.lr_d=fast", "model.attn_block=resid"])
    assert str(e.value).splitlines() == [
        f"{path}: data.name: 'imagenette9' is not one of synthetic, cifar10, imagefolder, prepared",
        f"{path}: model.attn_block: 'resid' is not one of attention, residual",
        f"{path}: train.lr_d: Input should be a valid number, unable to parse string as a "
        "number (got 'fast')",
    ]


def test_missing_dataset_name_is_reported():
    with pytest.raises(ConfigError, match=r"data\.name: required key is missing"):
        build_config({"data": {}})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"model.attn_g": [64]},
            r"model\.attn_g: 64 is not a feature-map size at resolution 32 \(G can hold attention at 8, 16, 32\)",
        ),
        (
            {"model.attn_d": [32]},
            r"model\.attn_d: 32 is not a feature-map size at resolution 32 \(D can hold attention at 8, 16\)",
        ),
        ({"model.attn_g": [16, 16]}, r"model\.attn_g: .* lists a size twice"),
        (
            {"data.name": "cifar10", "data.resolution": 64, "model.attn_g": [], "model.attn_d": []},
            r"cifar10 images are 32x32",
        ),
    ],
)
def test_impossible_placements_are_rejected_at_config_time(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(BASE, overrides)


def test_feat64_is_allowed_at_128():
    cfg = build_config(
        {
            "data": {"name": "synthetic", "resolution": 128},
            "model": {"attn_g": [64], "attn_d": [64]},
        }
    )
    assert cfg.model.attn_g == [64]


def test_overrides_parse_yaml_values():
    assert parse_overrides(["model.attn_g=[8, 16]", "train.ema=null", "train.lr_g=2e-4"]) == {
        "model.attn_g": [8, 16],
        "train.ema": None,
        "train.lr_g": 2e-4,
    }
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.steps"])


def test_resume_conflicts_ignore_cadence_and_steps():
    a = to_dict(build_config(BASE))
    b = to_dict(
        build_config(
            BASE, {"train.steps": 10, "train.log_every": 3, "eval.every": 5, "data.root": "/x"}
        )
    )
    assert resume_conflicts(a, b) == []
    c = to_dict(build_config(BASE, {"train.lr_d": 1e-4, "model.sn_g": False}))
    assert resume_conflicts(a, c) == ["model.sn_g", "train.lr_d"]


def test_a_checkpoint_older_than_a_key_stands_for_what_the_code_did_then():
    new = to_dict(build_config(BASE))
    old = to_dict(build_config(BASE))
    for section, key in [
        ("model", "bn_momentum"),
        ("model", "bn_group"),
        ("model", "sn_g_step"),
        ("train", "sync_bn"),
        ("train", "compile"),
        ("train", "tf32"),
        ("train", "cudnn_benchmark"),
    ]:
        del old[section][key]
    # Before these keys: PyTorch's BN momentum 0.1 and u moved in the G step.
    assert resume_conflicts(old, new) == ["model.bn_momentum", "model.sn_g_step"]
    legacy = to_dict(build_config(BASE, {"model.bn_momentum": 0.1, "model.sn_g_step": "advance"}))
    assert resume_conflicts(old, legacy) == []


def test_bn_group_must_divide_the_batch():
    with pytest.raises(ConfigError, match="model.bn_group: 3 does not divide train.batch_size=8"):
        build_config(BASE, {"model.bn_group": 3, "train.batch_size": 8})


def test_sync_bn_with_batch_norm_groups_is_refused_naming_both_keys():
    """SyncBatchNorm would replace the grouped batch norm: the groups would vanish."""
    with pytest.raises(ConfigError, match=r"train.sync_bn: true .* model.bn_group: 4"):
        build_config(BASE, {"train.sync_bn": True, "model.bn_group": 4, "train.batch_size": 8})
    build_config(BASE, {"train.sync_bn": True})
    build_config(BASE, {"model.bn_group": 4, "train.batch_size": 8})
