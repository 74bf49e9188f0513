"""Reports, the data layer: a run store as a table, and statistics over seeds."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from ablations import run as run_cli
from ablations.grid import load_grid
from reports.frame import read_store, write_results
from reports.stats import per_run, summarize, versus
from reports.tables import decimals, fmt
from sagan.training import rundir

GRID = {
    "name": "rep",
    "base": {
        "data": {"name": "synthetic", "resolution": 32, "synthetic": {"n_images": 64}},
        "model": {"ch": 8, "z_dim": 8},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "log_every": 2,
            "ckpt_every": 2,
            "sample_every": 4,
            "n_samples": 4,
            "device": "cpu",
        },
        "eval": {"metrics": ["swd", "consistency"], "n_samples": 16, "every": 2},
    },
    "final": {"metrics": ["swd", "consistency"], "n_samples": 32},
    "axes": {
        "attention": {
            "none": {"model.attn_g": [], "model.attn_d": []},
            "<b>feat16</b>": {"model.attn_g": [16], "model.attn_d": [16]},  # markup: shown as text
        }
    },
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real store: 3 of the grid's 4 cells trained; one of them then marked failed."""
    tmp = tmp_path_factory.mktemp("store")
    grid = tmp / "rep.yaml"
    grid.write_text(yaml.safe_dump(GRID, sort_keys=False))
    assert run_cli.main([str(grid), "--jobs", "2", "--only", "seed=0"]) == 0
    assert run_cli.main([str(grid), "--only", "attention=none,seed=1"]) == 0
    cells = {c.label(): c.run_id for c in load_grid(grid).cells}
    failed = tmp / "runs" / cells["attention=none,seed=1"]
    status = rundir.read_status(failed)
    rundir.write_status(failed, status | {"state": "failed", "failures": 1, "error": "boom"})
    return tmp / "runs", cells


def test_the_store_reads_as_a_row_per_run_and_evaluation(store):
    out, cells = store
    df = read_store(out)
    missing = cells["attention=<b>feat16</b>,seed=1"]
    assert df.loc[df.run_id == missing, "state"].tolist() == ["missing"]
    trained = df[df.run_id == cells["attention=none,seed=0"]]
    # Monitoring at steps 2 and 4, and the final score of the last checkpoint.
    assert trained[["eval_step", "origin"]].values.tolist() == [
        [2, "train"],
        [4, "train"],
        [4, "final"],
    ]
    assert set(trained["axis.attention"]) == {"none"} and set(trained["axis.seed"]) == {"0"}
    assert (trained["config.train.steps"] == 4).all() and (trained["grid"] == "rep").all()
    assert trained["protocol.n_generated"].tolist() == [16, 16, 32]
    assert trained["protocol_id"].nunique() == 2 and (trained["train_s"] > 0).all()
    records = rundir.read_jsonl(out / cells["attention=none,seed=0"] / "eval.jsonl")
    assert trained["metric.consistency"].tolist() == [r["metrics"]["consistency"] for r in records]
    failed = df[df.run_id == cells["attention=none,seed=1"]]
    assert set(failed["state"]) == {"failed"} and set(failed["error"]) == {"boom"}


def test_results_are_written_as_csv(store, tmp_path):
    out, _ = store
    df = read_store(out)
    (csv, *_) = write_results(df, tmp_path)
    back = pd.read_csv(csv)
    assert back.shape == df.shape and list(back.columns) == list(df.columns)


def test_one_value_per_run_keeps_final_best_and_last_apart(store):
    out, cells = store
    df = read_store(out)
    rid = cells["attention=none,seed=0"]
    records = rundir.read_jsonl(out / rid / "eval.jsonl")
    monitored = [r["metrics"]["swd"] for r in records if r["origin"] == "train"]
    final = [r for r in records if r["origin"] == "final"][0]
    pick = lambda kind: per_run(df, "swd", kind).set_index("run_id").loc[rid]  # noqa: E731
    assert pick("final")["value"] == final["metrics"]["swd"]
    assert pick("final")["protocol_id"] == final["protocol_id"]
    assert pick("best")["value"] == min(monitored)  # SWD: lower is better
    assert pick("last")["value"] == monitored[-1] and pick("last")["value_step"] == 4


def _values(groups):
    rows = [
        {"run_id": f"{arm}-{i}", "arm": arm, "protocol_id": "p", "value": v}
        for arm, vs in groups.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows)


def test_summary_over_seeds_has_mean_std_n_and_a_bootstrap_ci():
    s = summarize(_values({"a": [1.0, 2.0, 3.0, 4.0], "b": [5.0]}), ["arm"]).set_index("arm")
    assert s.loc["a", "n"] == 4 and s.loc["a", "mean"] == 2.5
    assert s.loc["a", "std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert 1.0 <= s.loc["a", "ci_low"] < 2.5 < s.loc["a", "ci_high"] <= 4.0
    assert (
        s.loc["b", "n"] == 1 and math.isnan(s.loc["b", "ci_low"]) and math.isnan(s.loc["b", "std"])
    )
    again = summarize(_values({"a": [1.0, 2.0, 3.0, 4.0]}), ["arm"])
    assert again["ci_low"][0] == s.loc["a", "ci_low"], "seeded: the same CI every time"


def test_a_difference_from_the_baseline_says_whether_seeds_explain_it():
    values = _values(
        {
            "base": [1.0, 1.1, 0.9, 1.0],
            "better": [2.0, 2.1, 1.9, 2.0],
            "noise": [0.5, 1.6, 0.7, 1.3],
        }
    )
    d = versus(values, ["arm"], {"arm": "base"}).set_index("arm")
    assert d.loc["base", "diff"] == 0
    assert d.loc["better", "diff"] == pytest.approx(1.0)
    assert d.loc["better", "diff_ci_low"] > 0, "clearly better: the CI excludes 0"
    assert d.loc["noise", "diff_ci_low"] < 0 < d.loc["noise", "diff_ci_high"]


def test_different_protocols_are_never_pooled():
    values = pd.concat(
        [_values({"a": [1.0, 2.0]}), _values({"a": [50.0, 60.0]}).assign(protocol_id="q")]
    )
    s = summarize(values, ["arm"])
    assert sorted(s["mean"]) == [1.5, 55.0] and set(s["protocol_id"]) == {"p", "q"}
    json.dumps(s.to_dict("records"))  # plain numbers, ready for a template


def _browser():
    """Headless Chromium through Playwright, or a skip (a failure in CI) saying why."""
    import os
    import shutil

    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if why is None and chromium is None:
        why = "no chromium on PATH (apt-get install chromium)"
    if why:
        if os.environ.get("SAGAN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests cannot run: {why}")
        pytest.skip(f"BROWSER TESTS SKIPPED: {why}")
    return sync_playwright, chromium


def test_the_report_renders_in_a_real_browser(store, tmp_path):
    from reports.build import build

    sync_playwright, chromium = _browser()
    out, cells = store
    index = build(out, tmp_path / "report")
    df = read_store(out)
    final = summarize(per_run(df, "swd", "final"), ["axis.attention"])
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "request",
            lambda r: (
                errors.append(f"network: {r.url}")
                if not r.url.startswith(("file:", "data:"))
                else None
            ),
        )
        page.goto(index.as_uri())
        images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth)")
        text = page.inner_text("body")
        bold = page.evaluate("document.querySelectorAll('td b').length")
        n_attention = page.evaluate("document.querySelectorAll('img.attention').length")
        # The runs table sorts by a clicked header, both ways.
        first_ids = "Array.from(document.querySelectorAll('table.sortable')).pop().tBodies[0].rows[0].cells[0].textContent"
        header = page.locator("table.sortable").last.locator("th").first
        header.click()
        ascending = page.evaluate(first_ids)
        header.click()
        descending = page.evaluate(first_ids)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert images and all(w > 0 for w in images), "every figure loads"
    for heading in ("Values per cell", "Curves", "Samples", "Attention maps", "Training health"):
        assert heading in text
    # Sample grids: one per cell that ran, copied beside the report; attention maps for
    # the cell with attention only.
    samples = sorted(p.name for p in (tmp_path / "report" / "samples").iterdir())
    assert samples == sorted(
        f"{cells[c]}.png" for c in ("attention=none,seed=0", "attention=<b>feat16</b>,seed=0")
    )
    assert n_attention == 1
    assert (ascending, descending) == (min(cells.values()), max(cells.values()))
    # Provenance: the code and machine each run trained with (env.jsonl), and the time.
    from sagan.training.provenance import code_version

    assert f"trained with sagan-bench\t{code_version()['commit']}" in text
    assert "device time\ttraining" in text
    assert "<b>feat16</b>" in text and bold == 0, "user strings are escaped, not markup"
    # One precision per column: the finest its cells' spreads need (reports.tables).
    p = max(decimals(r["std"], r["mean"]) for _, r in final.iterrows() if r["n"] > 1)
    for _, row in final.iterrows():
        shown = fmt(row["mean"], p) + (f" ± {fmt(row['std'], p)}" if row["n"] > 1 else "")
        assert shown in text
    assert "1 missing" in text and "failed" in text and "boom" in text
    # consistency is 0 in every record at 4 steps: one line says so, no table.
    assert "consistency is 0 in every record of this grid" in text
    assert not list((tmp_path / "report").glob("summary-*-consistency.*"))
    assert (tmp_path / "report.png").stat().st_size > 10_000
    latex = (tmp_path / "report" / "summary-rep-swd.tex").read_text()
    assert latex.startswith("\\begin{tabular}{llrrr}") and "\\toprule" in latex
    row = final[final["n"] > 1].iloc[0]
    assert f"{fmt(row['mean'], p)} $\\pm$ {fmt(row['std'], p)}" in latex
    assert "95\\% bootstrap CI" in latex


def test_the_report_benchmark_writes_reads_and_builds_a_store(capsys):
    from reports import bench

    assert bench.main(["--runs", "16"]) == 0
    out = capsys.readouterr().out
    assert "16 runs (96 rows)" in out and "machine: cpu" in out


def test_each_attempt_records_its_code_and_machine(store):
    from sagan.training.provenance import code_version

    out, cells = store
    (env,) = rundir.read_jsonl(out / cells["attention=none,seed=0"] / "env.jsonl")
    assert env["attempt"] == 1 and env["commit"] == code_version()["commit"]
    assert env["device"] == "cpu" and env["world_size"] == 1
    assert env["torch"] and env["torch_fidelity"] and env["cpu"] and env["host"]


def test_a_run_trained_outside_any_grid_is_reported_apart(store, tmp_path):
    """The real path: a store filled by a grid, plus one run of ``sagan.train --out
    STORE/loose``; the loose run is its own cell, and the grid's cells are unchanged."""
    import shutil

    from reports.build import build
    from sagan.config import build_config
    from sagan.train import train

    out, cells = store
    mixed = tmp_path / "runs"
    shutil.copytree(out, mixed, ignore=shutil.ignore_patterns("report"))
    cfg = build_config(
        {**GRID["base"], "final": GRID["final"], "model": {**GRID["base"]["model"], "attn_g": []}}
    )
    assert train(cfg, mixed / "loose", progress=False) == "done"
    from sagan.metrics.final import score_final

    (record,) = score_final(cfg, mixed / "loose")
    build(mixed)
    loose = pd.read_csv(mixed / "report" / "summary-nogrid-swd.csv")
    final = loose[loose["value_kind"] == "final"]
    assert list(final["run"]) == ["loose"] and list(final["n"]) == [1]
    assert final["mean"].iloc[0] == record["metrics"]["swd"]
    with_loose = pd.read_csv(mixed / "report" / "summary-rep-swd.csv")
    build(out, tmp_path / "alone")
    alone = pd.read_csv(tmp_path / "alone" / "summary-rep-swd.csv")
    pd.testing.assert_frame_equal(with_loose, alone)
    assert "Runs in no grid" in (mixed / "report" / "index.html").read_text()
