"""Reports, the tables: pivots over any axes, the paper's layouts with its own values
beside, baseline differences, and cells that say why they have no value.

The stores here are fixtures in the real on-disk format (config.yaml, status.json,
eval.jsonl, the grid index), written with chosen numbers so that every expected value
can be computed by hand.
"""

import json
from pathlib import Path

import pytest
import yaml

from ablations.grid import PAPER_LAYOUTS, GridError, load_grid
from reports.build import build, main
from reports.frame import read_store
from reports.tables import paper_layouts, pivot, resolve, wide_frame
from sagan.config import build_config, to_yaml
from sagan.training import rundir

PLACEMENTS = ["none", "feat8", "feat16", "feat32", "feat64"]


def _run(out: Path, run_id: str, cfg: dict, state: str = "done", evals=(), **status) -> None:
    d = out / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(build_config(cfg)))
    (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    rundir.write_status(d, {"state": state, "step": 100, "steps": 100, "attempts": 1, **status})


def _final(fid: float, is_mean: float, pid: str = "fin", step: int = 100) -> dict:
    return {
        "step": step,
        "origin": "final",
        "checkpoint": "last",
        "protocol_id": pid,
        "protocol": {"n_generated": 50000, "g": "ema", "weights_canonical": True},
        "metrics": {"fid": fid, "is_mean": is_mean},
    }


def _monitored(step: int, fid: float) -> dict:
    return {
        "step": step,
        "origin": "train",
        "protocol_id": "mon",
        "protocol": {"n_generated": 5000},
        "metrics": {"fid": fid},
    }


def _index(out: Path, name: str, axes: dict, cells: list, report: dict) -> None:
    index = {"name": name, "axes": axes, "cells": cells, "report": report}
    (out / f"grid-{name}.json").write_text(json.dumps(index))


def table1_store(out: Path, data: dict) -> dict[tuple[str, str, str], str]:
    """The paper_attention grid's 9 cells x 2 seeds: FID = 30 - placement index (+1 for
    seed 1), IS = 40 + index; residual is 10 FID worse. Seed 1 of residual/feat64 never
    ran, attention/feat16 seed 1 diverged, residual/feat16 both seeds failed. The runs
    are of the paper's length (1M G steps)."""
    cfg = {"data": data, "train": {"steps": 1_000_000}}
    cells, ids = [], {}
    for block in ("attention", "residual"):
        for i, placement in enumerate(PLACEMENTS):
            if block == "residual" and placement == "none":
                continue
            for seed in (0, 1):
                rid = f"{block[:3]}{placement}{seed}"
                levels = {"block": block, "placement": placement, "seed": str(seed)}
                cells.append({"run_id": rid, "levels": levels})
                ids[(block, placement, str(seed))] = rid
                if (block, placement, seed) == ("residual", "feat64", 1):
                    continue  # missing
                fid = 30 - i + seed + (10 if block == "residual" else 0)
                if (block, placement) == ("residual", "feat16"):
                    _run(out, rid, cfg, "failed", error="CUDA out of memory")
                elif (block, placement, seed) == ("attention", "feat16", 1):
                    _run(out, rid, cfg, "diverged", [_monitored(50, 80.0)], diverged_step=1200)
                else:
                    _run(out, rid, cfg, "done", [_monitored(50, fid + 5), _final(fid, 40 + i)])
    axes = {"block": ["attention", "residual"], "placement": PLACEMENTS, "seed": ["0", "1"]}
    _index(
        out,
        "paper_attention",
        axes,
        cells,
        {"baseline": {"block": "attention", "placement": "none"}, "tables": [{"paper": "table1"}]},
    )
    return ids


def _cell(table: dict, row: tuple[str, ...], column: int) -> dict:
    for r in table["rows"]:
        if tuple(c["text"] for c in r[: len(row)]) == row:
            return r[len(row) + column]
    raise AssertionError(f"no row {row}")


IMAGENET128 = {"name": "imagefolder", "resolution": 128, "root": "/data/imagenet"}


def _tables(out: Path) -> list[dict]:
    from reports.build import grid_tables
    from reports.frame import grid_indexes

    df = read_store(out)
    return [t for index in grid_indexes(out) for t in grid_tables(df, index)]


def test_table1_sets_the_papers_values_beside_a_study_of_the_papers_setup(tmp_path):
    table1_store(tmp_path, IMAGENET128)
    (t,) = _tables(tmp_path)
    assert t["title"].startswith("Table 1")
    # Columns: FID (ours), FID (paper), IS (ours), IS (paper).
    assert [h["text"] for h in t["header"][1]] == ["mean ± std", "paper", "mean ± std", "paper"]
    feat8 = ("attention", "feat8")
    assert _cell(t, feat8, 0)["text"] == "29.50 ± 0.71"  # seeds 29 and 30
    assert _cell(t, feat8, 1)["text"] == "22.98" and "paper" in _cell(t, feat8, 1)["cls"]
    assert _cell(t, ("attention", "feat16"), 1)["text"] == "not quoted"
    assert _cell(t, ("residual", "feat32"), 1)["text"] == "27.33"
    # The best FID (lowest): attention/feat64, 26.5; the best IS: 44 (feat64, both blocks).
    assert "best" in _cell(t, ("attention", "feat64"), 0)["cls"]
    assert "best" not in _cell(t, ("attention", "feat32"), 0)["cls"]
    # Cells without a value say why; a partial cell says how many seeds it has.
    assert _cell(t, ("residual", "none"), 0)["text"] == "not in grid"
    assert _cell(t, ("residual", "feat16"), 0)["text"] == "2 of 2 failed"
    sixteen = _cell(t, ("attention", "feat16"), 0)
    assert sixteen["text"] == "28.00" and sixteen["sub"].startswith("n=1 of 2 (1 diverged at 1200)")
    assert _cell(t, ("residual", "feat64"), 0)["sub"].startswith("n=1 of 2 (1 missing)")
    # Differences from the baseline (attention/none, FID 30 and 31), with a CI.
    assert "baseline" in _cell(t, ("attention", "none"), 0)["sub"]
    assert (
        _cell(t, ("attention", "feat32"), 0)["sub"]
        == "n=2 · CI [27.00, 28.00] · Δ -3.00 [-3.00, -3.00] paired"
    )
    assert any("Zhang" in n and "52.52" in n for n in t["notes"])
    assert any("fewer than 5 seeds" in n and "too narrow" in n for n in t["notes"])


def test_a_table_of_one_diverged_seed_says_so(tmp_path):
    ids = table1_store(tmp_path, IMAGENET128)
    for seed in ("0",):
        d = tmp_path / ids[("attention", "feat16", seed)]
        (d / "eval.jsonl").write_text("")
        rundir.write_status(
            d, {"state": "diverged", "step": 40, "steps": 100, "diverged_step": 700}
        )
    (t,) = _tables(tmp_path)
    assert _cell(t, ("attention", "feat16"), 0)["text"] == "diverged at 700, 1200"


def test_the_papers_values_stay_apart_from_a_study_of_another_setup(tmp_path):
    table1_store(tmp_path, {"name": "synthetic", "resolution": 32})
    (t,) = _tables(tmp_path)
    assert "paper" not in [h["text"] for h in t["header"][1]]
    (note,) = [n for n in t["notes"] if "Paper values" in n]
    assert "resolution: 32 (the paper's: 128)" in note
    assert "data (ImageNet as an image folder): synthetic (the paper's: imagefolder)" in note
    assert "block=attention, placement=feat8: FID 22.98" in note


def test_a_pivot_lays_any_axes_as_rows_and_columns(tmp_path):
    table1_store(tmp_path, IMAGENET128)
    df = read_store(tmp_path)
    axes = {"block": ["attention", "residual"], "placement": PLACEMENTS}
    layout = resolve({"rows": ["placement"], "cols": ["block"], "metrics": ["fid"]}, axes)
    t = pivot(df, layout, axes, {"block": "attention"})
    assert [h["text"] for h in t["header"][1]] == ["block=attention", "block=residual"]
    assert _cell(t, ("feat32",), 0)["text"] == "27.50 ± 0.71"
    assert _cell(t, ("feat32",), 1)["text"] == "37.50 ± 0.71"
    # Each placement's residual arm against its attention arm: +10 for each seed, so the
    # paired difference has no spread (unpaired, the seeds' own spread would show).
    assert _cell(t, ("feat32",), 1)["sub"].endswith("Δ +10.00 [+10.00, +10.00] paired")
    assert list(wide_frame(t).columns) == [
        "placement",
        "FID block=attention",
        "FID block=residual",
    ]
    # An axis left out is added to the rows, never pooled.
    layout = resolve({"rows": ["block"], "metrics": ["fid"]}, axes)
    assert layout.rows == ["block", "placement"] and "never pooled" in layout.notes[0]


def test_monitored_values_at_chosen_steps(tmp_path):
    table1_store(tmp_path, IMAGENET128)
    df = read_store(tmp_path)
    axes = {"block": ["attention", "residual"], "placement": PLACEMENTS}
    layout = resolve({"rows": ["block", "placement"], "metrics": ["fid"], "steps": [50, 100]}, axes)
    t = pivot(df, layout, axes)
    assert [h["text"] for h in t["header"][1]] == ["step 50", "step 100"]
    assert _cell(t, ("attention", "none"), 0)["text"] == "35.50 ± 0.71"
    assert _cell(t, ("attention", "none"), 1)["text"] == "not evaluated at step 100"
    layout_best = resolve(
        {"rows": ["block", "placement"], "metrics": ["is_mean"], "value": "best"}, axes
    )
    assert _cell(pivot(df, layout_best, axes), ("attention", "none"), 0)["text"] == "not monitored"
    layout_final = resolve({"rows": ["block", "placement"], "metrics": ["fid"]}, axes)
    d = tmp_path / "attnone0"
    (d / "eval.jsonl").write_text(json.dumps(_monitored(50, 33.0)) + "\n")
    (d.with_name("attnone1") / "eval.jsonl").write_text("")
    t = pivot(read_store(tmp_path), layout_final, axes)
    assert _cell(t, ("attention", "none"), 0)["text"] == "not scored (no final section)"
    d = tmp_path / "attnone0"
    rundir.write_status(d, rundir.read_status(d) | {"state": "running", "step": 60})
    t = pivot(read_store(tmp_path), layout, axes)
    assert _cell(t, ("attention", "none"), 1)["text"] == "1 of 2 running (step 60/100)"
    rundir.write_status(d.with_name("attnone1"), {"state": "running", "step": 70, "steps": 100})
    t = pivot(read_store(tmp_path), layout, axes)
    assert _cell(t, ("attention", "none"), 1)["text"] == "2 of 2 running (step 60/100, 70/100)"


def test_a_metric_under_two_protocols_gets_two_columns(tmp_path):
    cfg = {"data": {"name": "synthetic", "resolution": 32}}
    _run(tmp_path, "a0", cfg, evals=[_final(10, 1, "p5k")])
    _run(tmp_path, "b0", cfg, evals=[_final(20, 1, "p50k")])
    cells = [
        {"run_id": "a0", "levels": {"arm": "a", "seed": "0"}},
        {"run_id": "b0", "levels": {"arm": "b", "seed": "0"}},
    ]
    _index(tmp_path, "g", {"arm": ["a", "b"], "seed": ["0"]}, cells, {})
    (t,) = _tables(tmp_path)
    heads = [h["text"] for h in t["header"][1]]
    assert heads[:2] == ["protocol p50k", "protocol p5k"]
    assert (
        _cell(t, ("a",), 0)["text"] == "only under p5k" and _cell(t, ("a",), 1)["text"] == "10.00"
    )
    assert any("2 protocols" in n and "never pooled" in n for n in t["notes"])


def test_the_paper_layouts_match_the_grid_schema():
    layouts = paper_layouts()
    assert set(layouts) == set(PAPER_LAYOUTS)
    for name, layout in layouts.items():
        assert tuple(layout["rows"]) == PAPER_LAYOUTS[name]
        assert layout["source"] and layout["protocol"]
        for entry in layout["values"]:
            assert set(entry["levels"]) == set(layout["rows"])
    # The bundled paper grids lay themselves out with these layouts.
    for grid, paper in (("paper_attention", "table1"), ("paper_sn_ttur", "sn_ttur")):
        spec = yaml.safe_load((Path("ablations/grids") / f"{grid}.yaml").read_text())
        assert {"paper": paper} in spec["report"]["tables"]


def _grid(tmp_path, report: dict) -> Path:
    grid = {
        "name": "g",
        "base": {"data": {"name": "synthetic", "resolution": 32}, "model": {"ch": 8}},
        "axes": {"attention": {"none": {"model.attn_g": []}, "feat16": {"model.attn_g": [16]}}},
        "report": report,
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "report, message",
    [
        ({"baseline": {"attn": "none"}}, "report.baseline: no axis named 'attn' (axes: attention)"),
        (
            {"baseline": {"attention": "feat99"}},
            "report.baseline.attention: no level named 'feat99' (levels: none, feat16)",
        ),
        (
            {"tables": [{"rows": ["attention"], "cols": ["lr"]}]},
            "report.tables.0.cols: no axis named 'lr' (axes: attention)",
        ),
        ({"tables": [{"rows": ["attention"], "metrics": ["fdi"]}]}, "no metric named 'fdi'"),
        (
            {"tables": [{"paper": "table1"}]},
            "report.tables.0.paper: table1 lays out the axes block, placement; "
            "the grid has no axis 'block', 'placement'",
        ),
        (
            {"tables": [{"paper": "table9"}]},
            "report.tables.0.paper: 'table9' is not one of table1, sn_ttur",
        ),
        (
            {"tables": [{"metrics": ["fid"]}]},
            "report.tables.0: give rows (axes), or a paper layout",
        ),
    ],
)
def test_a_bad_report_section_is_one_clear_error(tmp_path, report, message):
    with pytest.raises(GridError) as e:
        load_grid(_grid(tmp_path, report))
    assert message in str(e.value) and str(tmp_path / "g.yaml") in str(e.value)


def test_the_command_line_adds_a_table_and_checks_it(tmp_path, capsys):
    table1_store(tmp_path, IMAGENET128)
    assert main([str(tmp_path), "--rows", "placement", "--cols", "block", "--metrics", "is"]) == 0
    flat = (tmp_path / "report" / "table-paper_attention-2.md").read_text()
    assert flat.splitlines()[0] == "| placement | IS block=attention | IS block=residual |"
    html = (tmp_path / "report" / "index.html").read_text()
    assert "IS by placement and block (final score)" in html
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--rows", "placement", "--metrics", "fdi"])
    assert "no metric named 'fdi'" in str(e.value)


def test_the_report_section_of_a_grid_file_replaces_the_stores(tmp_path):
    out = tmp_path / "runs"
    table1_store(out, IMAGENET128)
    grid = {
        "name": "paper_attention",
        "base": {"data": {"name": "synthetic", "resolution": 32}, "model": {"ch": 8}},
        "axes": {
            "block": {
                "attention": {"model.attn_block": "attention"},
                "residual": {"model.attn_block": "residual"},
            },
            "placement": {"none": {"model.attn_g": []}, "feat16": {"model.attn_g": [16]}},
        },
        "exclude": [{"block": "residual", "placement": "none"}],
        "report": {"tables": [{"rows": ["placement"], "cols": ["block"], "metrics": ["fid"]}]},
    }
    path = tmp_path / "paper_attention.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert main([str(out), "--grid", str(path)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert "FID by placement and block" in html and "Table 1" not in html
    assert "Table 1" in build(out).read_text()  # without --grid: the store's own section


def test_the_new_metrics_are_ordinary_columns_with_their_directions(tmp_path):
    """FD-DINOv2, FID∞ and intra-FID: lower is better; density and coverage: higher.
    A grid of two arms whose final records carry them shows each in the default
    summary with its arrow, and marks the better arm best."""
    from reports.build import _present_metrics

    arms = {"a": {"fd_dinov2": 300.0, "fid_inf": 20.0, "intra_fid": 40.0, "density": 0.9,
                  "coverage": 0.6},
            "b": {"fd_dinov2": 200.0, "fid_inf": 25.0, "intra_fid": 50.0, "density": 1.1,
                  "coverage": 0.5}}  # fmt: skip
    cells = []
    for arm, values in arms.items():
        rec = _final(30.0, 10.0) | {"metrics": {"fid": 30.0, **values}}
        _run(tmp_path, f"run{arm}", {"data": {"name": "synthetic", "resolution": 32}}, evals=[rec])
        cells.append({"run_id": f"run{arm}", "levels": {"arm": arm}})
    _index(tmp_path, "new_metrics", {"arm": ["a", "b"]}, cells, {})
    df = read_store(tmp_path)
    assert _present_metrics(df) == [
        "fid",
        "fid_inf",
        "fd_dinov2",
        "intra_fid",
        "density",
        "coverage",
    ]
    axes = {"arm": ["a", "b"]}
    metrics = ["fd_dinov2", "fid_inf", "intra_fid", "density", "coverage"]
    t = pivot(df, resolve({"rows": ["arm"], "metrics": metrics}, axes), axes, None)
    assert [h["text"] for h in t["header"][0][1:]] == [
        "FD-DINOv2 ↓", "FID∞ ↓", "intra-FID ↓", "density ↑", "coverage ↑",
    ]  # fmt: skip
    best = {
        m: [r[0]["text"] for r in t["rows"] if "best" in r[1 + i]["cls"].split()]
        for i, m in enumerate(metrics)
    }
    assert best == {"fd_dinov2": ["b"], "fid_inf": ["a"], "intra_fid": ["a"], "density": ["b"],
                    "coverage": ["a"]}  # fmt: skip
