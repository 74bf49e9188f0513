"""Grid files: expansion, run ids, and every validation error."""

from pathlib import Path

import pytest
import yaml

from ablations.grid import GridError, load_grid, parse_only, run_id, select
from sagan.config import build_config

BASE = {
    "data": {"name": "synthetic", "resolution": 32},
    "model": {"ch": 16, "z_dim": 32},
    "train": {"steps": 10, "batch_size": 8, "device": "cpu"},
}


def write(tmp_path, grid, name="g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def grid(**kw):
    g = {
        "name": "t",
        "base": BASE,
        "axes": {
            "attention": {
                "none": {"model.attn_g": [], "model.attn_d": []},
                "feat16": {"model.attn_g": [16], "model.attn_d": [16]},
            },
            "sn": {"d_only": {"model.sn_g": False}, "both": {"model.sn_g": True}},
        },
        "seeds": [0, 1],
    }
    g.update(kw)
    return g


def test_product_expands_every_combination_with_seeds(tmp_path):
    g = load_grid(write(tmp_path, grid()))
    assert len(g.cells) == 2 * 2 * 2
    assert list(g.axes) == ["attention", "sn", "seed"]
    c = g.cells[-1]
    assert c.levels == {"attention": "feat16", "sn": "both", "seed": "1"}
    assert c.config.model.attn_g == [16] and c.config.model.sn_g and c.config.train.seed == 1


def test_zip_advances_axes_together(tmp_path):
    g = load_grid(write(tmp_path, grid(mode="zip", seeds=[0])))
    assert [(c.levels["attention"], c.levels["sn"]) for c in g.cells] == [
        ("none", "d_only"),
        ("feat16", "both"),
    ]


def test_zip_needs_equal_lengths(tmp_path):
    axes = grid()["axes"] | {
        "lr": {"a": {"train.lr_d": 1e-4}, "b": {"train.lr_d": 2e-4}, "c": {"train.lr_d": 3e-4}}
    }
    with pytest.raises(GridError, match="zip needs axes of equal length"):
        load_grid(write(tmp_path, grid(mode="zip", axes=axes)))


def test_include_and_exclude_filter_cells(tmp_path):
    g = load_grid(write(tmp_path, grid(exclude=[{"attention": "none", "sn": "both"}])))
    assert len(g.cells) == 6
    assert not any(c.levels["attention"] == "none" and c.levels["sn"] == "both" for c in g.cells)
    g = load_grid(write(tmp_path, grid(include=[{"attention": "feat16", "seed": 0}])))
    assert [c.label() for c in g.cells] == [
        "attention=feat16,sn=d_only,seed=0",
        "attention=feat16,sn=both,seed=0",
    ]
    g = load_grid(write(tmp_path, grid(include=[{"sn": ["d_only", "both"], "seed": 1}])))
    assert len(g.cells) == 4


def test_shorthand_axis_of_values_and_nested_levels(tmp_path):
    axes = {
        "train.n_dis": [1, 2],
        "arch": {"narrow": {"model": {"ch": 8}}, "wide": {"model": {"ch": 16}}},
    }
    g = load_grid(write(tmp_path, grid(axes=axes, seeds=[0])))
    assert [
        (c.levels["train.n_dis"], c.config.train.n_dis, c.config.model.ch) for c in g.cells
    ] == [
        ("1", 1, 8),
        ("1", 1, 16),
        ("2", 2, 8),
        ("2", 2, 16),
    ]
    # Nested sections merge with the base rather than replacing it.
    assert g.cells[0].config.model.z_dim == 32


def test_base_may_be_a_config_file_relative_to_the_grid(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "grids").mkdir()
    g = load_grid(write(tmp_path / "grids", grid(base="../configs/base.yaml")))
    assert g.cells[0].config.model.ch == 16


def test_run_id_does_not_change_between_processes():
    import subprocess
    import sys

    code = "from ablations.grid import run_id; from sagan.config import build_config; import json,sys; print(run_id(build_config(json.loads(sys.argv[1]))))"
    import json

    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(BASE)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == run_id(build_config(BASE))


def test_same_cell_in_two_grid_files_is_the_same_run(tmp_path):
    g1 = load_grid(write(tmp_path, grid(), "a.yaml"))
    g2 = load_grid(
        write(tmp_path, grid(name="other", axes={"sn": grid()["axes"]["sn"]}, seeds=[1]), "b.yaml")
    )
    ids1 = {c.run_id for c in g1.cells if c.levels["attention"] == "feat16"}
    # The base's default placement at 32x32 is feat16, so g2's cells are g1's feat16 cells.
    assert {c.run_id for c in g2.cells} <= ids1


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"axes": {"attention": {"feat64": {"model.attn_g": [64]}}}},
            "g.yaml: axes.attention.feat64: model.attn_g: 64 is not a feature-map size at resolution 32",
        ),
        (
            {"axes": {"x": {"a": {"model.attn_gg": [8]}}}},
            "g.yaml: axes.x.a: model.attn_gg: unknown key",
        ),
        (
            {"axes": {"x": {"a": {"train.lr_d": "fast"}}}},
            "g.yaml: axes.x.a: train.lr_d: Input should be a valid number",
        ),
        ({"axes": {"x": {}}}, "g.yaml: axes.x: the axis has no levels"),
        (
            {"axes": {"x": {"a": {"model.sn_g": True}, "b": {"model.sn_g": True}}}},
            "g.yaml: axes.x: levels 'a' and 'b' resolve to the same config",
        ),
        ({"seeds": [0, 1, 0]}, "g.yaml: seeds: seed 0 is listed twice"),
        ({"seeds": []}, "g.yaml: seeds: needs at least one seed"),
        ({"colour": "red"}, "g.yaml: colour: unknown key"),
        ({"name": "has space"}, "g.yaml: name: String should match pattern"),
        (
            {"exclude": [{"attention": "feat99"}]},
            "g.yaml: exclude[0].attention: no level named 'feat99'",
        ),
        ({"include": [{"optimizer": "adam"}]}, "g.yaml: include[0]: no axis named 'optimizer'"),
        ({"base": "missing.yaml"}, "missing.yaml: no such config file"),
        (
            {"base": {**BASE, "model": {"ch": "wide"}}},
            "g.yaml: base: model.ch: Input should be a valid integer",
        ),
        ({"axes": {"seed": {"a": {}}}}, "g.yaml: axes.seed: 'seed' is reserved"),
        ({"exclude": [{"seed": [0, 1]}]}, "g.yaml: include/exclude leave no cell to run"),
    ],
)
def test_each_validation_error_names_file_and_path(tmp_path, change, message):
    with pytest.raises(GridError) as e:
        load_grid(write(tmp_path, grid(**change)))
    assert message in str(e.value)
    assert "Traceback" not in str(e.value)


def test_two_levels_of_different_axes_colliding_is_reported(tmp_path):
    axes = {"a": {"x": {"model.sn_g": False}, "y": {}}, "b": {"x": {"model.sn_g": False}, "y": {}}}
    with pytest.raises(
        GridError, match="cells a=x,b=x,seed=0 and a=x,b=y,seed=0 resolve to the same config"
    ):
        load_grid(write(tmp_path, grid(axes=axes, seeds=[0])))


def test_unparseable_yaml_is_one_clear_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(GridError, match="g.yaml: not valid YAML"):
        load_grid(path)


def test_only_filter_selects_and_validates(tmp_path):
    g = load_grid(write(tmp_path, grid()))
    assert len(select(g, parse_only(["attention=feat16,seed=0"]))) == 2
    assert len(select(g, parse_only(["sn=both", "sn=d_only"]))) == 8
    with pytest.raises(GridError, match="no level 'feat99'"):
        select(g, parse_only(["attention=feat99"]))
    with pytest.raises(GridError, match="no axis named 'lr'"):
        select(g, parse_only(["lr=ttur"]))


def test_bundled_grids_are_valid(tmp_path, monkeypatch):
    # The paper grids read ImageNet as an image folder at data/imagenet/train.
    from tests.datafiles import write_tiny_imagefolder

    monkeypatch.chdir(tmp_path)
    write_tiny_imagefolder("data/imagenet/train", n_classes=2, n_per_class=1, size=(40, 40))
    grids = Path(__file__).resolve().parents[1] / "ablations" / "grids"
    found = sorted(grids.glob("*.yaml"))
    assert {p.stem for p in found} >= {"smoke"}
    for p in found:
        assert load_grid(p).cells


def test_missing_image_folder_is_one_line_naming_the_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grids = Path(__file__).resolve().parents[1] / "ablations" / "grids"
    with pytest.raises(GridError) as e:
        load_grid(grids / "paper_attention.yaml")
    assert str(e.value).count("\n") == 0
    assert "paper_attention.yaml: data.root: data/imagenet/train does not exist" in str(e.value)


@pytest.mark.parametrize(
    "flt",
    [
        {"model.sn_g": True, "model.sn_d": False},
        {"model.sn_g": [True], "model.sn_d": "false"},
        {"model.sn_g": "true", "model.sn_d": [False]},
    ],
)
def test_boolean_levels_can_be_filtered(tmp_path, flt):
    g = grid(
        axes={"model.sn_g": [True, False], "model.sn_d": [True, False]}, exclude=[flt], seeds=[0]
    )
    cells = load_grid(write(tmp_path, g)).cells
    assert sorted(c.label() for c in cells) == [
        "model.sn_g=false,model.sn_d=false,seed=0",
        "model.sn_g=false,model.sn_d=true,seed=0",
        "model.sn_g=true,model.sn_d=true,seed=0",
    ]


def test_only_accepts_boolean_levels_however_spelled(tmp_path):
    g = load_grid(write(tmp_path, grid(axes={"model.sn_g": [True, False]}, seeds=[0])))
    for spelling in ("true", "True"):
        picked = select(g, parse_only([f"model.sn_g={spelling}"]))
        assert [c.levels["model.sn_g"] for c in picked] == ["true"]
    with pytest.raises(GridError, match="has no level 'maybe'"):
        select(g, parse_only(["model.sn_g=maybe"]))


def test_local_executor_section_is_unchanged(tmp_path):
    g = load_grid(write(tmp_path, grid(executor={"name": "local", "jobs": 2})))
    assert (g.spec.executor.name, g.spec.executor.jobs) == ("local", 2)
    assert load_grid(write(tmp_path, grid())).spec.executor.jobs == 1


def test_slurm_executor_section_carries_profile_and_overrides(tmp_path):
    ex = {"name": "slurm", "profile": "local", "slurm": {"time": 5}}
    spec = load_grid(write(tmp_path, grid(executor=ex))).spec.executor
    assert (spec.name, spec.profile, spec.slurm) == ("slurm", "local", {"time": 5})


def test_slurm_profile_path_is_relative_to_the_grid_file(tmp_path):
    (tmp_path / "grids").mkdir()
    ex = {"name": "slurm", "profile": "../profiles/site.yaml"}
    spec = load_grid(write(tmp_path / "grids", grid(executor=ex))).spec.executor
    assert spec.profile == str(tmp_path.resolve() / "profiles" / "site.yaml")


@pytest.mark.parametrize(
    "executor,line",
    [
        ({"name": "slurm", "bogus": 1}, "g.yaml: executor.bogus: unknown key"),
        (
            {"name": "slurm", "jobs": 2},
            "g.yaml: executor.jobs: only for name: local; under SLURM the profile's "
            "array_parallelism sets how many cells run at once (got 2)",
        ),
        (
            {"name": "slurm", "slurm": 3},
            "g.yaml: executor.slurm: Input should be a valid dictionary (got 3)",
        ),
        (
            {"name": "local", "jobs": 0},
            "g.yaml: executor.jobs: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"name": "pbs"},
            "g.yaml: executor.name: no executor named 'pbs' (executors: local, slurm)",
        ),
        (
            "slurm",
            "g.yaml: executor: expected a mapping such as {name: local, jobs: 2} (got 'slurm')",
        ),
    ],
)
def test_executor_section_errors_are_one_line(tmp_path, executor, line):
    with pytest.raises(GridError) as e:
        load_grid(write(tmp_path, grid(executor=executor)))
    assert str(e.value) == f"{tmp_path / 'g.yaml'}: {line.removeprefix('g.yaml: ')}"


def _grid_text(tmp_path, axis_yaml: str) -> Path:
    """A grid file written by hand, so that levels keep their spelling."""
    path = tmp_path / "g.yaml"
    base = yaml.safe_dump({"name": "t", "base": BASE, "seeds": [0]}, sort_keys=False)
    path.write_text(base + "axes:\n" + axis_yaml)
    return path


def test_two_spellings_of_one_number_in_a_level_list_are_one_error_naming_both(tmp_path):
    path = _grid_text(tmp_path, "  train.lr_d: [1.0e-4, 0.0001, 2.0e-4]\n")
    with pytest.raises(GridError) as e:
        load_grid(path)
    assert str(e.value) == (
        f"{path}: axes.train.lr_d: levels 1.0e-4 and 0.0001 are the same value (0.0001); "
        "list each value once"
    )


def test_a_value_listed_twice_in_a_block_list_is_an_error(tmp_path):
    path = _grid_text(tmp_path, "  train.n_dis:\n    - 1\n    - 5\n    - 1\n")
    with pytest.raises(GridError, match=r"axes\.train\.n_dis: level 1 is listed twice"):
        load_grid(path)
