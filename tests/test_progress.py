"""Run progress (hpo/progress.py): the live terminal view, the one-line-per-event output for
pipes, and the pure helpers behind the time-left estimate."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from hpo.progress import EventPrinter, LiveProgress, eta_seconds, fmt_duration, make_progress
from hpo.searcher import Event
from tests.synthetic import make_study


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (44.6, "45s"), (192, "3m12s"), (3720, "1h02m"), (-3, "0s")]
)
def test_fmt_duration(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text


def test_eta_seconds() -> None:
    assert eta_seconds(done_here=0, finished=5, target=20, elapsed=60) is None  # no pace yet
    assert eta_seconds(done_here=4, finished=10, target=20, elapsed=120) == pytest.approx(300)
    assert eta_seconds(done_here=3, finished=20, target=20, elapsed=50) == 0.0


def test_make_progress_picks_lines_off_a_terminal() -> None:
    lines: list[str] = []
    printer = make_progress(lines.append, 0.0, 10, live=False)
    assert isinstance(printer, EventPrinter)
    with printer:
        printer(Event("start", 0, {"learning_rate": 1e-3, "batch_size": 8}))
        printer(Event("pruned", 0, {}, value=3.2, epoch=0.25))
    assert "trial   0 started    lr=0.001 bs=8" in lines[0]
    assert "trial   0 PRUNED     at epoch 0.25" in lines[1] and "1 pruned" in lines[1]


def _render(progress: LiveProgress) -> str:
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(progress)
    return buf.getvalue()


def test_live_view_shows_running_trials_counts_best_and_time_left() -> None:
    study = make_study(None, 20)  # the study holds 20 trials before the run
    before = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    running = study.ask()  # a trial of this run, reporting live into the storage
    running.report(2.75, 2)
    running.set_user_attr("epoch", 0.5)
    out = io.StringIO()
    progress = LiveProgress(
        target=before + 3, t0=time.time(), study=study, console=Console(file=out, width=160)
    )
    progress(Event("start", running.number, {"learning_rate": 2e-3, "batch_size": 16}))
    progress(Event("start", 99, {"learning_rate": 1e-4}))
    progress(Event("complete", 99, {}, value=1.5, epoch=2.0))
    view = _render(progress)
    row = rf"\b{running.number}\s+lr=0.002 bs=16\s+0\.5\s+2\.7500\s+\d+s"
    assert re.search(row, view), view  # params, epoch and latest eval loss read from the storage
    assert f"{before + 1}/{before + 3} finished" in view
    assert "1 running" in view and "best 1.5000 (#99)" in view and "left" in view
    assert "trial  99 COMPLETE   value 1.5000 at epoch 2" in out.getvalue()  # the scrolling line


def test_live_view_without_a_study() -> None:
    progress = LiveProgress(target=4, t0=0.0, console=Console(file=io.StringIO()))
    progress(Event("start", 0, {"batch_size": 8}))
    view = _render(progress)
    assert "0/4 finished" in view and "time left: after the first trial" in view and "bs=8" in view


def test_live_progress_as_a_context_manager() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with LiveProgress(target=2, t0=0.0, console=console) as progress:
        progress(Event("start", 0, {"batch_size": 8}))
        progress(Event("fail", 0, {}, message="OOM"))
    assert "FAILED     OOM" in out.getvalue()
