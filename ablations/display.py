"""Progress of a grid: bars on a terminal, one line per event in a log."""

from __future__ import annotations

import time

from sagan.training import rundir
from sagan.training.progress import make_bar, say


class Display:
    def __init__(self, total: int, tty: bool):
        self.total = total
        self.done = 0
        self.tty = tty
        self.bars: dict[str, object] = {}
        self.overall = None
        self.last_line = 0.0
        if tty:
            self.overall = make_bar(total=total, desc="grid", unit="run", position=0)

    def note(self, msg: str) -> None:
        say(msg, self.overall)

    def started(self, task) -> None:
        self.note(f"start  {task.run_id}  {task.label}")
        if self.tty:
            self.bars[task.run_id] = make_bar(
                total=task.steps,
                desc=task.label,
                unit="step",
                position=len(self.bars) + 1,
                leave=False,
            )

    def finished(self, outcome) -> None:
        self.done += 1
        task = outcome.task
        bar = self.bars.pop(task.run_id, None)
        if bar is not None:
            bar.close()
        if self.overall is not None:
            self.overall.update(1)
        self.note(f"{outcome.state:<7} {task.run_id}  {task.label}  ({self.done}/{self.total})")

    def tick(self, running) -> None:
        steps = {task.run_id: rundir.read_status(task.run_dir).get("step", 0) for task in running}
        if self.tty:
            for task in running:
                bar = self.bars.get(task.run_id)
                if bar is not None:
                    bar.update(steps[task.run_id] - bar.n)
        elif running and time.time() - self.last_line > 30:
            self.last_line = time.time()
            self.note(
                "running: "
                + ", ".join(f"{task.label} {steps[task.run_id]}/{task.steps}" for task in running)
            )

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()
