"""Progress bars in a log file: one whole line per update, so a warning never lands on a bar's line."""

import io
import sys

from calib.progress import _Lines, progress_bar


def test_redraws_become_whole_lines():
    out = io.StringIO()
    lines = _Lines(out)
    lines.write("\rcalibrating:  10%|#         | 1/10")
    lines.write("\r" + " " * 40 + "\r")  # tqdm clearing the bar: dropped
    lines.write("\rcalibrating: 100%|##########| 10/10\n")
    assert out.getvalue().splitlines() == ["calibrating:  10%|#         | 1/10", "calibrating: 100%|##########| 10/10"]


def test_a_bar_in_a_log_then_a_warning_starts_on_its_own_line(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress_bar(total=3, desc="decoding", unit="img")
    for _ in range(3):
        bar.update(1)
    bar.close()
    log.write("warning: something\n")
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines()[-1] == "warning: something"
