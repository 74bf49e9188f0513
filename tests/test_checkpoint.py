"""Checkpoint rotation: what survives a save."""

from sagan.training.checkpoint import ckpt_dir, list_checkpoints, save_checkpoint


def _state(step):
    return {"step": step}


def _garbage(run_dir, step):
    d = ckpt_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"ckpt-{step:09d}.pt").write_bytes(b"not a checkpoint")


def _steps(run_dir):
    return sorted(s for s, _ in list_checkpoints(run_dir))


def test_an_unreadable_newer_checkpoint_never_costs_the_one_just_written(tmp_path):
    # Resumed from 50 because 100 does not load; the save at 60 must survive keep=1.
    save_checkpoint(tmp_path, 50, _state(50), keep=1)
    _garbage(tmp_path, 100)
    save_checkpoint(tmp_path, 60, _state(60), keep=1)
    assert 60 in _steps(tmp_path)
    assert 50 not in _steps(tmp_path)


def test_rotation_keeps_the_newest_readable_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 40, _state(40), keep=3)
    _garbage(tmp_path, 50)
    save_checkpoint(tmp_path, 60, _state(60), keep=2)
    assert _steps(tmp_path) == [40, 60]


def test_rotation_keeps_a_protected_checkpoint_beyond_keep(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, _state(step), keep=1, protect={10})
    assert _steps(tmp_path) == [10, 30]
