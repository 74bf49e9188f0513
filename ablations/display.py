"""Progress of a grid: bars on a terminal, one line per event in a log."""

from __future__ import annotations

import time

from sagan import rundir


class Display:
    def __init__(self, total: int, tty: bool):
        self.total = total
        self.done = 0
        self.tty = tty
        self.bars: dict[str, object] = {}
        self.overall = None
        self.last_line = 0.0
        if tty:
            from tqdm import tqdm

            self.overall = tqdm(
                total=total, desc="grid", unit="run", position=0, dynamic_ncols=True
            )

    def _say(self, msg: str) -> None:
        if self.overall is not None:
            self.overall.write(msg)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def started(self, task) -> None:
        self._say(f"start  {task.run_id}  {task.label}")
        if self.tty:
            from tqdm import tqdm

            self.bars[task.run_id] = tqdm(
                total=task.steps,
                desc=task.label,
                unit="step",
                position=len(self.bars) + 1,
                leave=False,
                dynamic_ncols=True,
            )

    def finished(self, outcome) -> None:
        self.done += 1
        t = outcome.task
        bar = self.bars.pop(t.run_id, None)
        if bar is not None:
            bar.close()
        if self.overall is not None:
            self.overall.update(1)
        self._say(f"{outcome.state:<7} {t.run_id}  {t.label}  ({self.done}/{self.total})")

    def tick(self, running) -> None:
        steps = {t.run_id: rundir.read_status(t.run_dir).get("step", 0) for t in running}
        if self.tty:
            for t in running:
                bar = self.bars.get(t.run_id)
                if bar is not None:
                    bar.update(steps[t.run_id] - bar.n)
        elif running and time.time() - self.last_line > 30:
            self.last_line = time.time()
            self._say(
                "running: " + ", ".join(f"{t.label} {steps[t.run_id]}/{t.steps}" for t in running)
            )

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()
