"""The command-line progress bar."""

import io

from polarmask_tf.progress import ProgressBar, _format_seconds


def test_log_mode_prints_counts_rate_eta_and_values():
    stream = io.StringIO()
    bar = ProgressBar(4, desc="work", stream=stream, log_every_s=3600)
    for step in range(4):
        bar.update(1, loss=0.5 / (step + 1), stage="a")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the first update and the last; nothing in between within the hour
    assert lines[0].startswith("work 1/4 [") and "loss=0.5000" in lines[0] and "stage=a" in lines[0]
    assert lines[-1].startswith("work 4/4 [" + "#" * 30 + "]") and "loss=0.1250" in lines[-1]
    assert "ETA 00:00" in lines[-1]


def test_close_reports_an_unfinished_bar_once():
    stream = io.StringIO()
    bar = ProgressBar(10, stream=stream, log_every_s=3600)
    bar.update(3)
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["3/10", "3/10"]


def test_format_seconds():
    assert _format_seconds(5) == "00:05" and _format_seconds(3725) == "1:02:05"
