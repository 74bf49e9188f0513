"""Progress display: a tqdm bar on a terminal, plain log lines in a log file.

SLURM writes stdout to a file, where a redrawn bar is noise; there each logged step
becomes one line that a person can ``tail -f``. :func:`say` and :func:`make_bar` are
the one line printer and bar factory; ``ablations.display`` shows a grid with them.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def say(msg: str, bar: Any = None) -> None:
    """Print one progress line.

    Args:
        msg: the line.
        bar: a tqdm bar being shown, if any: the line goes through ``bar.write`` so the
            bar is redrawn below it. Without one the line is ``[HH:MM:SS] msg`` on
            stdout, flushed at once so that ``tail -f`` on a log file sees it.
    """
    if bar is not None:
        bar.write(msg)
    else:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_bar(**kwargs: Any) -> Any:
    """A tqdm bar that follows the terminal's width; ``kwargs`` go to ``tqdm``."""
    from tqdm import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


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
            self.bar = make_bar(total=self.total, initial=step, unit="step")
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
        if self.enabled:
            say(msg, self.bar)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
