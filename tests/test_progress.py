"""sagan.training.progress: one line printer, shared by training and the grid display."""

from __future__ import annotations

import re
from types import SimpleNamespace

from ablations.display import Display
from sagan.training.progress import Progress, say

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def test_say_prints_timestamped_lines_or_writes_through_a_bar(capsys):
    say("hello")
    assert LINE.match(capsys.readouterr().out) is not None
    written = []
    say("over the bar", SimpleNamespace(write=written.append))
    assert written == ["over the bar"] and capsys.readouterr().out == ""


def test_training_and_grid_print_the_same_lines_without_a_terminal(capsys):
    progress = Progress(10, enabled=True, tty=False)
    progress.start(0)
    progress.write("checkpoint saved")
    display = Display(total=1, tty=False)
    task = SimpleNamespace(run_id="abc123", label="attn_g=16", steps=10)
    display.started(task)
    display.finished(SimpleNamespace(task=task, state="done"))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(LINE.match(line) for line in lines)
    assert [LINE.sub("", line) for line in lines] == [
        "training from G step 0 to 10",
        "checkpoint saved",
        "start  abc123  attn_g=16",
        "done    abc123  attn_g=16  (1/1)",
    ]


def test_disabled_progress_prints_nothing(capsys):
    progress = Progress(10, enabled=False, tty=False)
    progress.start(0)
    progress.write("hidden")
    progress.close()
    assert capsys.readouterr().out == ""
