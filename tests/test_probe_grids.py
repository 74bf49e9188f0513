"""The bundled probe_mirror grid: its arms, its size, and a report of it that pairs
each arm with the no-attention baseline by seed."""

import json
from pathlib import Path

from ablations.grid import load_grid
from ablations.store import RunStore
from sagan.config import to_yaml
from sagan.training import rundir

GRID = Path(__file__).resolve().parents[1] / "ablations" / "grids" / "probe_mirror.yaml"
ARMS = ["none", "feat8", "feat16", "feat32", "residual32"]


def test_probe_mirror_holds_every_placement_and_the_residual_control_with_five_seeds():
    g = load_grid(GRID)
    by_arm = {}
    for c in g.cells:
        by_arm.setdefault(c.levels["attention"], []).append(c)
    assert list(by_arm) == ARMS
    assert all(len(cells) >= 5 for cells in by_arm.values())
    placement = {
        a: (cs[0].config.model.attn_block, cs[0].config.model.attn_g, cs[0].config.model.attn_d)
        for a, cs in by_arm.items()
    }
    assert placement["none"][1:] == ([], [])
    assert placement["feat32"] == ("attention", [32], [16])  # D's largest map at 32x32 is 16
    assert placement["residual32"] == ("residual", [32], [16])
    cfg = g.cells[0].config
    assert cfg.data.synthetic.mode == "mirror" and cfg.final.metrics == ["mirror"]
    assert "mirror" in cfg.eval.metrics


def test_a_report_of_probe_mirror_pairs_each_arm_with_no_attention_by_seed(tmp_path):
    """Final mirror scores chosen so that feat16 beats none by exactly 0.25 in every
    seed while the seeds themselves spread widely: the paired interval is [0.25, 0.25]."""
    from reports.build import grid_tables
    from reports.frame import grid_indexes, read_store

    g = load_grid(GRID)
    RunStore(tmp_path).write_index(g)
    gain = {"none": 0.0, "feat8": 0.1, "feat16": 0.25, "feat32": 0.2, "residual32": 0.0}
    for c in g.cells:
        d = tmp_path / c.run_id
        d.mkdir()
        (d / "config.yaml").write_text(to_yaml(c.config))
        value = 0.1 * int(c.levels["seed"]) + gain[c.levels["attention"]]
        record = {
            "step": c.config.train.steps,
            "origin": "final",
            "checkpoint": "last",
            "protocol_id": "fin",
            "protocol": {"n_generated": 1024, "g": "raw"},
            "metrics": {"mirror": value},
        }
        (d / "eval.jsonl").write_text(json.dumps(record) + "\n")
        steps = c.config.train.steps
        rundir.write_status(d, {"state": "done", "step": steps, "steps": steps, "attempts": 1})
    df = read_store(tmp_path)
    table = [t for index in grid_indexes(tmp_path) for t in grid_tables(df, index)][0]
    assert table["title"].startswith("mirror by attention")
    subs = {r[0]["text"]: r[1]["sub"] for r in table["rows"]}
    assert "baseline" in subs["none"]
    assert subs["feat16"].endswith("Δ +0.25 [+0.25, +0.25] paired")
    assert subs["residual32"].endswith("Δ +0.00 [+0.00, +0.00] paired")
