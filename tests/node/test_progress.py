"""node.progress: a live bar on a terminal, plain lines in a log."""

import doctest
import io

from node import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_with_count_rate_and_postfix(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # a line at every update
    log = io.StringIO()
    bar = progress.bar(total=4, desc="training", unit="step", stream=log)
    for i in range(4):
        bar.set_postfix({"loss": f"{i}.5"}, refresh=False)
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("training: 0/4 (0%)")
    assert any(line.startswith("training: 2/4 (50%)") and "step/s" in line and "loss=1.5" in line for line in lines)
    assert lines[-1].startswith("training: 4/4 (100%)")


def test_a_log_without_total_counts(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    bar = progress.bar(desc="importing x", unit="rec", stream=log)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("importing x: 1000 [")


def test_a_job_done_within_the_interval_writes_nothing_to_a_log(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 3600.0)
    log = io.StringIO()
    bar = progress.bar(total=1000, desc="importing x", unit="rec", stream=log)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert log.getvalue() == ""


def test_a_terminal_gets_a_live_bar_and_disable_shows_nothing():
    term = _Terminal()
    bar = progress.bar(total=2, unit="step", stream=term)
    bar.update(2)
    bar.close()
    assert "\r" in term.getvalue() and "2/2" in term.getvalue()
    quiet = io.StringIO()
    bar = progress.bar(total=2, disable=True, stream=quiet)
    bar.update(2)
    bar.close()
    assert quiet.getvalue() == ""


def test_the_closing_frame_is_not_repeated_when_nothing_changed(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    log = io.StringIO()
    bar = progress.bar(total=2, desc="training", unit="step", stream=log)
    bar.update(2)
    bar.set_postfix({"dev_acc": "0.5"})  # refreshes at once, as training's evaluation does
    bar.close()  # tqdm writes the same frame again
    lines = log.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["training: 0/2 (0%)", "training: 2/2 (100%)",
                                                        "training: 2/2 (100%)"], lines
    assert "dev_acc" not in lines[1] and "dev_acc=0.5" in lines[2]


def test_docstring_examples_run():
    result = doctest.testmod(progress)
    assert result.attempted > 0 and result.failed == 0
