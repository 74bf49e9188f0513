"""Progress display: a tqdm bar on a terminal, plain log lines in a log file.

SLURM writes stdout to a file, where a redrawn bar is noise; there each logged step
becomes one line that a person can ``tail -f``.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt(rec: dict[str, Any]) -> str:
    return (
        f"loss_d {rec['loss_d']:.4f} loss_g {rec['loss_g']:.4f} "
        f"D(x) {rec['d_real']:.3f} D(G(z)) {rec['d_fake']:.3f} {rec['img_per_s']:.1f} img/s"
    )


class Progress:
    def __init__(self, total: int, enabled: bool = True, tty: bool | None = None):
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        self.t0 = time.time()

    def start(self, step: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True)
        else:
            self.write(f"training from G step {step} to {self.total}")

    def update(self, step: int, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(_fmt(rec), refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            self.write(f"step {step}/{self.total} {_fmt(rec)}")

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
