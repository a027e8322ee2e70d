"""Signing progress where there is no terminal (logs, pipes, CI): plain lines, cleaned."""

from __future__ import annotations


def test_plain_progress_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    import signer.progress as progress

    monkeypatch.setattr(
        progress, "PLAIN_EVERY_S", 0.0
    )  # every advance may print: no clock in the test
    bars = progress.Bars(total_jobs=1)
    assert not bars.enabled  # pytest's captured stderr is not a terminal
    with bars:
        bars.start_job("ink \x1b]8;;http://evil/\x1b\\\\lora", 20)
        for _ in range(5):
            bars.advance(4)
        bars.job_finished()
    lines = capsys.readouterr().err.splitlines()
    assert [ln.rsplit(": ", 1)[1] for ln in lines] == [
        "4/20 samples",
        "8/20 samples",
        "12/20 samples",
        "16/20 samples",
    ]
    assert all(
        "\x1b" not in ln and "\\x1b]8" in ln for ln in lines
    )  # the name cannot drive the terminal


def test_plain_progress_is_rate_limited(capsys, monkeypatch):
    import signer.progress as progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 3600.0)
    with progress.Bars(total_jobs=1) as bars:
        bars.start_job("lora", 100)
        for _ in range(100):
            bars.advance(1)
    assert capsys.readouterr().err == ""  # nothing within the interval
