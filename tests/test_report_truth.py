"""Reports, the numbers themselves: each cell is a cell of one grid, every seed is
counted (non-finite ones too), both final checkpoint roles are read, empty cells say
the true reason, and every export carries what the HTML carries.

The stores are hand-made in the real on-disk format, with numbers chosen so that every
expected value can be computed by hand.
"""

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reports.build import build
from reports.frame import read_store
from reports.stats import mean_ci, per_run, reuse, summarize, versus
from reports.tables import decimals, fmt
from sagan.config import build_config, to_yaml
from sagan.training import rundir
from tests.test_report_tables import _cell, _final, _index, _monitored, _run, _tables

SYN = {"data": {"name": "synthetic", "resolution": 32}}
SYN_FINAL = {**SYN, "final": {"metrics": ["fid"]}}


def _fid(fid: float, pid: str = "fin", step: int = 100, checkpoint: str = "last") -> dict:
    rec = _final(fid, 0.0, pid, step)
    rec["metrics"] = {"fid": fid}
    rec["checkpoint"] = checkpoint
    return rec


def _grid(out: Path, name: str, axis: str, runs: dict[tuple[str, int], list], report=None):
    """A grid of one axis and seeds: ``runs[(level, seed)]`` is that run's eval records
    (None: the cell never ran). Run ids are ``<name>-<level>-<seed>``."""
    cells, levels = [], []
    for (level, seed), evals in runs.items():
        rid = f"{name}-{level}-{seed}"
        cells.append({"run_id": rid, "levels": {axis: level, "seed": str(seed)}})
        levels.append(level)
        if evals is not None:
            _run(out, rid, SYN_FINAL, "done", evals)
    seeds = sorted({str(s) for _, s in runs})
    axes = {axis: list(dict.fromkeys(levels)), "seed": seeds}
    _index(out, name, axes, cells, report or {"baseline": {axis: levels[0]}})


def _summary(html_or_tables, grid: str):
    (t,) = [t for t in html_or_tables if t["grid"] == grid]
    return t


def _summaries(out: Path) -> list[dict]:
    from reports.build import grid_section
    from reports.frame import grid_indexes, no_grid_index

    df = read_store(out)
    indexes = grid_indexes(out)
    if (loose := no_grid_index(df)) is not None:
        indexes.append(loose)
    found = []
    for index in indexes:
        section = grid_section(df, index, out, out / "report", None, pd.DataFrame())
        for t in section["summaries"]:
            found.append(t | {"grid": index["name"]})
    return found


def test_two_grids_with_the_same_axes_keep_their_cells_apart(tmp_path):
    (tmp_path / "report").mkdir()
    _grid(tmp_path, "short", "arm", {("a", 0): [_fid(40)], ("a", 1): [_fid(42)]})
    _grid(tmp_path, "long", "arm", {("a", 0): [_fid(20)], ("a", 1): [_fid(22)]})
    short, long = _summary(_summaries(tmp_path), "short"), _summary(_summaries(tmp_path), "long")
    assert _cell(short, ("a",), 1)["text"] == "41.0 ± 1.4"  # not 31 ± 11.6 over 4 seeds
    assert _cell(long, ("a",), 1)["text"] == "21.0 ± 1.4"
    assert _cell(short, ("a",), 1)["sub"].startswith("n=2 ·")
    # The same in the laid-out tables and in the HTML, each under its grid's heading.
    html = build(tmp_path).read_text()
    assert html.count("41.0 ± 1.4") >= 2 and html.count("21.0 ± 1.4") >= 2
    assert "31.0" not in html and "n=4" not in html
    assert "Grid short" in html and "Grid long" in html


def test_a_run_two_grids_share_counts_once_in_each(tmp_path):
    (tmp_path / "report").mkdir()
    _grid(tmp_path, "g1", "arm", {("a", 0): [_fid(10)], ("a", 1): [_fid(12)]})
    shared = json.loads((tmp_path / "grid-g1.json").read_text())["cells"][0]
    # A second grid, other axis names, that names g1's first run as one of its own.
    _run(tmp_path, "g2-x-1", SYN_FINAL, "done", [_fid(30)])
    cells = [
        {"run_id": shared["run_id"], "levels": {"lr": "x", "seed": "0"}},
        {"run_id": "g2-x-1", "levels": {"lr": "x", "seed": "1"}},
    ]
    _index(tmp_path, "g2", {"lr": ["x"], "seed": ["0", "1"]}, cells, {})
    tables = _summaries(tmp_path)
    assert _cell(_summary(tables, "g1"), ("a",), 1)["text"] == "11.0 ± 1.4"
    g2 = _cell(_summary(tables, "g2"), ("x",), 1)
    assert g2["text"] == "20 ± 14" and g2["sub"].startswith("n=2 ·")  # 10 and 30: no NaN key


def test_a_run_in_no_grid_is_its_own_cell(tmp_path):
    (tmp_path / "report").mkdir()
    _grid(tmp_path, "g", "arm", {("a", 0): [_fid(10)]})
    _run(tmp_path, "loose1", SYN_FINAL, "done", [_fid(33)])
    _run(tmp_path, "loose2", SYN_FINAL, "done", [_fid(35)])
    t = _summary(_summaries(tmp_path), "")
    assert _cell(t, ("loose1",), 1)["text"] == "33.00"
    assert _cell(t, ("loose2",), 1)["text"] == "35.00"
    html = build(tmp_path).read_text()
    assert "Runs in no grid" in html


def test_a_nonfinite_seed_is_counted_shown_and_never_bold(tmp_path):
    (tmp_path / "report").mkdir()
    runs = {
        ("base", 0): [_fid(30)],
        ("base", 1): [_fid(32)],
        ("base", 2): [_fid(31)],
        ("collapsed", 0): [_fid(10)],
        ("collapsed", 1): [_fid(12)],
        ("collapsed", 2): [_monitored(50, 15.0), _fid(float("nan"))],
        ("dead", 0): [_fid(float("inf"))],
        ("worse", 0): [_fid(50)],
        ("worse", 1): [_fid(52)],
        ("lastnan", 0): [_monitored(50, 10.0), _monitored(100, float("nan")), _fid(60)],
    }
    _grid(tmp_path, "g", "arm", runs)
    t = _summary(_summaries(tmp_path), "g")
    c = _cell(t, ("collapsed",), 1)
    # The NaN seed is a result: counted, named with its step, not in the mean, and the
    # last value is the NaN one, not the earlier finite one.
    assert c["text"] == "11.0 ± 1.4"
    assert c["sub"].startswith("n=2 of 3 (1 non-finite: nan at step 100, not in the mean)")
    assert "best" not in c["cls"], "its mean leaves a seed out: never the best"
    assert "best" in _cell(t, ("base",), 1)["cls"]
    last = _cell(t, ("collapsed",), 3)
    assert last["text"] == "15.00"  # best/last monitored: the one finite monitored value
    # The newest monitored value is NaN: that is the last value, not the earlier 10;
    # the best value is the best finite one.
    assert _cell(t, ("lastnan",), 3)["text"] == "nan"
    assert _cell(t, ("lastnan",), 2)["text"] == "10.00"
    dead = _cell(t, ("dead",), 1)
    assert dead["text"] == "inf" and "bad" in dead["cls"]
    assert dead["sub"].startswith("n=0 of 1 (1 non-finite: inf at step 100")
    assert any("non-finite" in n and "never marked best" in n for n in t["notes"])
    # The values themselves, from the stats layer.
    v = per_run(read_store(tmp_path), "fid", "final")
    assert v["finite"].sum() == 8 and (~v["finite"]).sum() == 2
    # Reused within a build: the same frame and arguments give the same values, and
    # another frame (a changed copy) never gets the first one's.
    df = read_store(tmp_path)
    with reuse():
        once = per_run(df, "fid", "final")
        assert per_run(df, "fid", "final") is once
        pd.testing.assert_frame_equal(once, v)
        other = df.assign(**{"metric.fid": df["metric.fid"] + 1})
        changed = per_run(other, "fid", "final")
        finite = once["finite"].to_numpy()
        assert (changed["value"][finite] == once["value"][finite] + 1).all()
        assert per_run(df, "fid", "best") is not once


def test_final_scores_at_both_checkpoints_are_two_labelled_values(tmp_path):
    runs = {
        ("a", 0): [_monitored(50, 20.0), _fid(18, step=100), _fid(19, step=50, checkpoint="best")],
        ("a", 1): [_monitored(50, 22.0), _fid(20, step=100), _fid(21, step=50, checkpoint="best")],
    }
    tables = [
        {"rows": ["arm"], "metrics": ["fid"]},
        {"rows": ["arm"], "metrics": ["fid"], "checkpoint": "best"},
    ]
    _grid(tmp_path, "g", "arm", runs, {"tables": tables})
    both, best = _tables(tmp_path)
    heads = [h["text"] for h in both["header"][1]]
    assert heads == ["last checkpoint", "best checkpoint"]
    assert _cell(both, ("a",), 0)["text"] == "19.0 ± 1.4"
    assert _cell(both, ("a",), 1)["text"] == "20.0 ± 1.4"
    assert [h["text"] for h in best["header"][1]] == ["mean ± std"]
    assert _cell(best, ("a",), 0)["text"] == "20.0 ± 1.4"
    # The command line asks for the same.
    from reports.build import main

    assert main([str(tmp_path), "--rows", "arm", "--metrics", "fid", "--checkpoint", "best"]) == 0
    csv_rows = pd.read_csv(tmp_path / "report" / "table-g-3.csv")
    assert list(csv_rows["checkpoint"]) == ["best"] and list(csv_rows["mean"]) == [20.0]


def test_empty_cells_say_why(tmp_path):
    ok = [_fid(10)]
    runs = {("ok", 0): ok, ("nofinal", 0): [], ("failed", 0): [], ("other", 0): [_fid(5, "p2")]}
    runs[("bestonly", 0)] = [_fid(7, checkpoint="best")]
    _grid(tmp_path, "g", "arm", runs, {"tables": [{"rows": ["arm"], "metrics": ["fid"]}]})
    # No final section in its config; scoring failed with an error recorded.
    (tmp_path / "g-nofinal-0" / "config.yaml").write_text(to_yaml(build_config(SYN)))
    failed = tmp_path / "g-failed-0"
    status = rundir.read_status(failed)
    status["final_error"] = {"error": "MetricsError: no weights file", "final_key": "k"}
    rundir.write_status(failed, status)
    (t,) = _tables(tmp_path)
    texts = {row[0]["text"]: [c["text"] for c in row[1:]] for row in t["rows"]}
    # Columns: last checkpoint, best checkpoint (both roles were recorded), each
    # protocol apart (fin and p2).
    heads = [h["text"] for h in t["header"][1]]
    last_fin = heads.index("last checkpoint, protocol fin")
    assert texts["ok"][last_fin] == "10.00"
    assert texts["nofinal"][last_fin] == "not scored (no final section)"
    assert texts["failed"][last_fin] == "scoring failed: MetricsError: no weights file"
    assert texts["other"][last_fin] == "only under p2"
    assert texts["bestonly"][last_fin] == "scored at the best checkpoint only"


def test_an_empty_store_builds_a_report_that_says_so(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "This store holds no runs yet" in build(empty).read_text()
    waiting = tmp_path / "waiting"
    waiting.mkdir()
    cells = [{"run_id": f"r{i}", "levels": {"arm": "a", "seed": str(i)}} for i in range(2)]
    _index(waiting, "g", {"arm": ["a"], "seed": ["0", "1"]}, cells, {})
    html = build(waiting).read_text()
    assert (
        "No run of this store has started yet" in html and html.count('class="state-missing"') == 2
    )


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.\d+|\d+|inf|nan)", text)]


def _html_cells(html: str, grid: str) -> list[list[str]]:
    """Each value table's body cells in one grid's section, as text (sub line joined)."""
    section = html.split(f'data-grid="{grid}"')[1].split("</section>")[0]
    rows = []
    for body in re.findall(r"<tbody>(.*?)</tbody>", section, re.S):
        for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S):
            cells = re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)
            rows.append([re.sub(r'<span class="sub">(.*?)</span>', r" (\1)", c) for c in cells])
    return rows


def test_every_export_parses_back_to_the_numbers_the_html_shows(tmp_path):
    runs = {
        ("base", 0): [_fid(30.123)],
        ("base", 1): [_fid(32.456)],
        ("base", 2): [_fid(31.001)],
        ("treated", 0): [_fid(20.5)],
        ("treated", 1): [_fid(22.25)],
        ("treated", 2): [_fid(float("nan"))],
        ("gone", 0): [_fid(40.0)],
        ("gone", 1): None,
    }
    _grid(tmp_path, "g", "arm", runs, {"baseline": {"arm": "base"}, "tables": [{"rows": ["arm"]}]})
    html = build(tmp_path).read_text()
    report = tmp_path / "report"
    rows = list(csv.DictReader(io.StringIO((report / "table-g-1.csv").read_text())))
    md = (report / "table-g-1.md").read_text()
    tex = (report / "table-g-1.tex").read_text()
    shown = _html_cells(html, "g")
    for rec in rows:
        level = rec["arm"]
        (html_row,) = [r for r in shown if r[0] == level][:1]
        (md_row,) = [line for line in md.splitlines() if line.startswith(f"| {level} |")]
        (tex_row,) = [line for line in tex.splitlines() if line.startswith(f"{level} &")]
        html_text = html_row[1].replace("&#43;", "+").replace("&#39;", "'")
        # The same string in the HTML, the Markdown and the LaTeX (LaTeX's escapes undone).
        plain = (
            tex_row.split(" & ", 1)[1]
            .removesuffix(r" \\")
            .replace(r"$\pm$", "±")
            .replace(r"$\Delta$", "Δ")
            .replace(r"$\cdot$", "·")
        )
        assert md_row.removesuffix(" |").split(" | ")[1] == html_text == plain
        # And the CSV's numbers, at the table's precision, are the ones in that string.
        if rec["empty"]:
            assert rec["empty"] == html_text
            continue
        p = int(rec["decimals"])
        want = [fmt(float(rec["mean"]), p)]
        if int(rec["n"]) > 1:
            want.append(fmt(float(rec["std"]), p))
        n_text = f"n={rec['n']}" + (f" of {rec['n_total']}" if rec["n_total"] != rec["n"] else "")
        assert n_text in html_text
        if int(rec["n"]) > 1:
            want += [fmt(float(rec["ci_low"]), p), fmt(float(rec["ci_high"]), p)]
        if rec["delta"]:
            keys = ("delta", "delta_low", "delta_high") if rec["delta_low"] else ("delta",)
            want += [fmt(float(rec[k]), p, sign=True) for k in keys]
            assert rec["delta_pairing"] in html_text if rec["delta_low"] else True
        for w in want:
            assert w in html_text, (w, html_text)
    by = {r["arm"]: r for r in rows}
    treated = by["treated"]
    assert treated["n"] == "2" and treated["n_total"] == "3" and treated["n_nonfinite"] == "1"
    assert treated["delta_pairing"] == "unpaired"  # seed 2 has no finite value in arm
    assert by["gone"]["note"] == "1 missing" and by["base"]["is_baseline"] == "True"
    assert by["base"]["protocol_id"] == "fin" and by["base"]["value_kind"] == "final"
    assert by["base"]["checkpoint"] == "last"
    # The notes travel as footnotes.
    assert "fewer than 5 seeds" in md and "fewer than 5 seeds" in tex
    assert "Protocols (the Protocols section says what each is): FID: fin." in md


def test_figures_draw_the_tables_intervals_and_builds_are_reproducible(tmp_path):
    runs = {
        (lv, s): [_monitored(50, 30 + i + s), _fid(20 + i + s * 1.5)]
        for i, lv in enumerate("abc")
        for s in range(3)
    }
    _grid(tmp_path, "g", "arm", runs)
    build(tmp_path, tmp_path / "r1")
    build(tmp_path, tmp_path / "r2")
    fig = pd.read_csv(tmp_path / "r1" / "figure-g-fid-values.csv")
    table = pd.read_csv(tmp_path / "r1" / "summary-g-fid.csv")
    final = table[(table["value_kind"] == "final")].set_index("arm")
    for _, row in fig.iterrows():
        assert row["ci_low"] == final.loc[row["axis.arm"], "ci_low"]
        assert row["ci_high"] == final.loc[row["axis.arm"], "ci_high"]
    for f in sorted((tmp_path / "r1").glob("*.*")):
        if f.suffix in (".csv", ".md", ".tex"):
            assert f.read_bytes() == (tmp_path / "r2" / f.name).read_bytes(), f.name


def test_a_difference_is_paired_by_seed_when_both_arms_have_every_seed():
    rows = []
    for seed, (b, a) in enumerate([(10.0, 11.0), (20.0, 21.2), (30.0, 30.8)]):
        rows.append({"arm": "base", "axis.seed": str(seed), "value": b})
        rows.append({"arm": "arm", "axis.seed": str(seed), "value": a})
    values = pd.DataFrame(rows).assign(protocol_id="p", value_step=1)
    d = versus(values, ["arm"], {"arm": "base"}).set_index("arm")
    assert bool(d.loc["arm", "paired"])
    # Paired: the bootstrap of the differences 1.0, 1.2, 0.8, which exclude 0; unpaired,
    # the seeds' spread (10 to 30) would swamp it.
    low, high = mean_ci(np.array([1.0, 1.2, 0.8]))
    assert d.loc["arm", "diff_ci_low"] == pytest.approx(low)
    assert d.loc["arm", "diff_ci_high"] == pytest.approx(high)
    assert 0 < low <= 1.0 <= high
    unpaired = versus(values.iloc[:-1], ["arm"], {"arm": "base"}).set_index("arm")
    assert not unpaired.loc["arm", "paired"] and unpaired.loc["arm", "diff_ci_low"] < 0


def test_one_precision_rule_for_every_number_of_a_cell():
    assert decimals(0.7071, 29.5) == 2 and decimals(11.6, 31.0) == 0 and decimals(0.0123, 1) == 3
    assert decimals(math.nan, 28.0) == 2 and decimals(math.nan, 0.01234) == 5
    assert fmt(-0.001, 2, sign=True) == "+0.00" and fmt(float("inf"), 1) == "inf"
    s = summarize(
        pd.DataFrame({"arm": ["a"] * 3, "protocol_id": "p", "value": [1.0, 2.0, 4.0]}), ["arm"]
    )
    assert s["n"][0] == 3 and s["n_nonfinite"][0] == 0


def test_best_checkpoint_scoring_uses_samples_independent_of_monitoring():
    from sagan.config import ConfigError, build_config

    base = {
        **SYN,
        "eval": {"metrics": ["consistency"], "every": 2, "seed": 3},
        "final": {"checkpoint": "best", "best_by": "consistency"},
    }
    assert build_config(base).final.seed == 4
    assert build_config({**base, "final": {**base["final"], "checkpoint": "last"}}).final.seed == 0
    with pytest.raises((ConfigError, ValueError), match="final.seed: 3 is eval.seed too"):
        build_config({**base, "final": {**base["final"], "seed": 3}})


def _table1(tmp_path, steps: int, canonical: bool, best: bool) -> dict:
    from tests.test_report_tables import IMAGENET128, table1_store

    table1_store(tmp_path, IMAGENET128)
    for d in tmp_path.iterdir():
        if not (d / "eval.jsonl").is_file():
            continue
        cfg = (d / "config.yaml").read_text().replace("steps: 1000000", f"steps: {steps}")
        (d / "config.yaml").write_text(cfg)
        records = rundir.read_jsonl(d / "eval.jsonl")
        for r in records:
            r.get("protocol", {})["weights_canonical"] = canonical
        if best:  # the best checkpoint scored too, 1 FID better than the last
            records += [
                r | {"checkpoint": "best", "metrics": {k: v - 1 for k, v in r["metrics"].items()}}
                for r in records
                if r["origin"] == "final"
            ]
        (d / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (t,) = _tables(tmp_path)
    return t


def test_the_papers_values_need_its_steps_samples_and_weights(tmp_path):
    t = _table1(tmp_path / "short", 1000, canonical=False, best=False)
    assert "paper" not in [h["text"] for h in t["header"][1]]
    (note,) = [n for n in t["notes"] if "Paper values" in n]
    assert "G steps: 1,000 (the paper's: 1,000,000)" in note
    assert "canonical Inception weights: no (the paper's: yes)" in note
    assert "best IS and FID over training" in note
    assert any("asks for final scores at the best checkpoint" in n for n in t["notes"])


def test_table1_shows_the_best_checkpoint_the_closest_to_the_papers_kind(tmp_path):
    t = _table1(tmp_path, 1_000_000, canonical=True, best=True)
    heads = [h["text"] for h in t["header"][1]]
    assert heads == ["mean ± std", "paper", "mean ± std", "paper"]
    # attention/feat8: last-checkpoint FIDs 29 and 30, best-checkpoint 28 and 29.
    assert _cell(t, ("attention", "feat8"), 0)["text"] == "28.50 ± 0.71"
    assert not any("asks for final scores" in n for n in t["notes"])


def test_the_warning_names_the_canonical_inception_file(tmp_path):
    t = _table1(tmp_path, 1_000_000, canonical=False, best=False)
    html = build(tmp_path).read_text()
    assert "weights-inception-2015-12-05-6726825d.pth" in html and t


@pytest.mark.parametrize(
    "text",
    [
        to_yaml(build_config({**SYN, "model": {"attn_g": [8, 16]}, "final": {"metrics": ["fid"]}})),
        to_yaml(build_config(SYN)),
        "data: {name: synthetic}\nfinal: null\ntrain:\n  betas:\n  - 0.0\n  - 0.9\n  seed: 3\n",
        "# a comment\ntrain: &t\n  seed: 1\neval:\n  <<: *t\n",  # an alias across parts
        "train:\n  steps: 10\n  nested:\n    a: [1, 2]\n    b: {c: 3}\n",
    ],
)
def test_the_config_columns_are_those_of_the_whole_file(tmp_path, text):
    import yaml

    from reports import frame

    (tmp_path / "config.yaml").write_text(text)
    whole = yaml.safe_load(text) or {}
    columns, facts = frame._read_config(tmp_path)
    assert columns == frame._flat("config.", whole)
    assert facts["has_final"] == (whole.get("final") is not None)


def test_a_cells_interval_does_not_depend_on_the_order_of_the_rows(tmp_path):
    # The bootstrap draws values by position: a table built from rows sorted by grid
    # level and one built from rows in run id order must give the same interval.
    values = np.random.default_rng(0).uniform(20, 60, size=12).round(3)
    evals = {("a", s): [_fid(float(v))] for s, v in enumerate(values)}
    _grid(tmp_path, "g", "attention", evals)
    df = read_store(tmp_path)
    intervals = []
    for frame in (df, df.iloc[::-1], df.sample(frac=1.0, random_state=3)):
        s = summarize(per_run(frame, "fid", "final"), ["axis.attention"])
        intervals.append((s["ci_low"].item(), s["ci_high"].item()))
    assert intervals[0] == intervals[1] == intervals[2]


def _scored(values: dict[str, float], protocol: dict, old: bool = False) -> dict:
    """A final record as evaluation writes it: its record id and, unless ``old`` (a
    record from before per-value ids), each value's own id."""
    from sagan.metrics.protocol import metric_protocol_ids, protocol_id

    rec = {"step": 100, "origin": "final", "checkpoint": "last", "metrics": values}
    rec |= {"protocol": protocol, "protocol_id": protocol_id(protocol)}
    if not old:
        rec["protocol_ids"] = metric_protocol_ids(protocol, list(values))
    return rec


def test_each_value_is_grouped_and_described_under_its_own_protocol_id(tmp_path):
    from sagan.metrics.protocol import protocol_id

    shared = {"n_generated": 50000, "g": "ema", "g_mode": "eval", "eval_seed": 1}
    block = {"n": [5000, 10000], "fit": "least squares FID_N = FID_inf + slope / N"}
    with_inf = shared | {"fid_inf": block}
    runs = {
        ("a", 0): [_scored({"fid": 30.0}, shared, old=True)],  # no protocol_ids
        ("a", 1): [_scored({"fid": 32.0}, shared)],
        ("a", 2): [_scored({"fid": 31.0, "fid_inf": 29.0}, with_inf)],
        ("b", 0): [_scored({"fid": 40.0, "fid_inf": 39.0}, with_inf)],
    }
    (tmp_path / "report").mkdir()
    _grid(tmp_path, "g", "arm", runs)
    fid_id = protocol_id(shared)
    inf_id = _scored({"fid_inf": 29.0}, with_inf)["protocol_ids"]["fid_inf"]
    assert inf_id != fid_id != protocol_id(with_inf)

    tables = {t["title"].split(":")[0]: t for t in _summaries(tmp_path)}
    fid = _cell(tables["FID"], ("a",), 1)
    assert fid["text"] == "31.0 ± 1.0" and fid["sub"].startswith("n=3 ·"), "one group of 3 seeds"
    assert not any("protocols" in n and "measured" in n for n in tables["FID"]["notes"])
    inf = _cell(tables["FID∞"], ("a",), 1)
    assert inf["text"] == "29.00" and inf["sub"].startswith("n=1")

    html = build(tmp_path).read_text()
    report = tmp_path / "report"
    for name, pid in (("fid", fid_id), ("fid_inf", inf_id)):
        cells = pd.read_csv(report / f"summary-g-{name}.csv")
        final = cells[cells["value_kind"] == "final"]
        assert final["protocol_id"].tolist() == [pid, pid], name
        figure = pd.read_csv(report / f"figure-g-{name}-values.csv")
        assert figure["protocol_id"].tolist() == [pid, pid], name
    results = pd.read_csv(report / "results.csv").sort_values("run_id")
    assert results["protocol_id.fid"].tolist() == [fid_id] * 4
    assert results["protocol_id.fid_inf"].fillna("").tolist() == ["", "", inf_id, inf_id]
    # The Protocols section: FID's id without FID∞'s block, FID∞'s with it.
    listed = dict(re.findall(r"<tr><td><code>(\w+)</code></td><td>(.*?)</td></tr>", html))
    assert set(listed) == {fid_id, inf_id}
    assert "FID" in listed[fid_id] and "least squares" not in listed[fid_id]
    assert "FID∞" in listed[inf_id] and "least squares" in listed[inf_id]
