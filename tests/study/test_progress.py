"""The progress display: a bar on a terminal, a plain line every so often on a pipe, nothing when off."""

from __future__ import annotations

from sweeps.study.progress import LINE_EVERY_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_pipe_a_line_every_so_often_with_the_time_left_at_this_runs_pace():
    clock, said, asked = Clock(), [], []
    p = Progress(None, total=100, initial=20, label="default", echo=said.append, tty=False, clock=clock)

    def best() -> float:
        asked.append(1)
        return 0.00123

    clock.now += 1
    p.update(5, best, 300.0)
    assert said == [] and asked == []  # too soon for a line, and best() not read for nothing
    clock.now += LINE_EVERY_S
    p.update(5, best, 300.0)
    # 10 trials of this run in 11 s: 70 left take 77 s
    assert said == ["default: 30/100 trials (30%), 300 models/s, best 0.00123, about 77 s left"]
    clock.now += 1
    p.update(10, best, 300.0)
    assert len(said) == 1
    clock.now += 3600
    p.update(70, best, 300.0)  # done: the run's own summary line says so
    assert len(said) == 1
    p.close()


def test_the_time_left_reads_in_minutes_and_hours():
    clock = Clock()
    p = Progress(None, total=10_000, initial=0, label="s", echo=lambda s: None, tty=False, clock=clock)
    p.done, clock.now = 100, clock.now + 72  # 9900 left at 100 in 72 s: 1.98 h
    assert p.line(None, 1.0).endswith("best -, about 2.0 h left")
    p.done = 2000  # 8000 left at 2000 in 72 s: 288 s
    assert p.line(None, 1.0).endswith("about 5 min left")
    p.done = 9000  # 1000 left: 8 s
    assert p.line(None, 1.0).endswith("about 8 s left")


def test_off_shows_nothing_and_a_terminal_gets_a_bar(capsys):
    said = []
    off = Progress(False, total=10, initial=0, label="s", echo=said.append, tty=False)
    off.update(10, lambda: 1.0, 1.0)
    assert off.bar is None and not off.lines and said == []
    on = Progress(None, total=10, initial=2, label="s", echo=said.append, tty=True)
    on.update(3, lambda: 0.5, 7.0)
    assert on.bar is not None and on.bar.n == 5 and said == []
    on.close()
    assert "best=0.5" in capsys.readouterr().err
