"""The run store's claim on a run: what a lock holds when runs are moved aside."""

import os
import shutil

from ablations import store as store_mod
from ablations.store import RunLock, is_locked


def test_a_lock_taken_after_its_run_was_moved_aside_is_taken_again_at_the_path(
    tmp_path, monkeypatch
):
    # A worker opens .lock, --force moves the run to .trash, then the worker locks:
    # without a check it would hold the moved file and train beside the new run.
    run = tmp_path / "run"
    run.mkdir()
    trash = tmp_path / ".trash" / "run"
    real = store_mod._try_lock

    def move_then_lock(fd):
        if not trash.exists():
            trash.parent.mkdir()
            shutil.move(str(run), str(trash))
        return real(fd)

    monkeypatch.setattr(store_mod, "_try_lock", move_then_lock)
    lock = RunLock(run)
    assert lock.acquire()
    try:
        held, at_path = os.fstat(lock.fd), os.stat(run / ".lock")
        assert (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
        assert is_locked(run) and not is_locked(trash)
    finally:
        lock.release()
