"""What the CLI shows while a run goes: a live table on a terminal (running trials, counts, the
best so far, time left, data preparation's bar), one line per trial event otherwise."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from hpo.display import fmt_params, of_target

log = logging.getLogger(__name__)


class EventPrinter:
    """Prints one line per trial event, with counts and the best value so far."""

    def __init__(self, echo: Callable[[str], None], t0: float, target: int, maximize: bool = False):
        self.echo, self.t0, self.target = echo, t0, target
        self.maximize = maximize
        self.counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
        self.best: tuple[float, int] | None = None

    def __enter__(self) -> EventPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, e) -> None:
        if e.kind == "start":
            self.counts["running"] += 1
            line = f"trial {e.number:>3} started    {fmt_params(e.params)}"
        else:
            self.counts["running"] = max(0, self.counts["running"] - 1)
            if e.kind in self.counts:
                self.counts[e.kind] += 1
            self.best = new_best(self.best, e, self.maximize)
            line = self._end_line(e)
        c = self.counts
        best = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best else "best -"
        tally = (
            f"[done {c['complete'] + c['pruned']}: {c['complete']} complete, {c['pruned']} pruned; "
            f"{c['fail']} failed; {c['running']} running; {best}]"
        )
        self.echo(f"{time.time() - self.t0:7.1f}s  {line}  {tally}")

    @staticmethod
    def _end_line(e) -> str:
        value = f"{e.value:.4f}" if e.value is not None else "-"
        epoch = f"{e.epoch:g}" if e.epoch is not None else "?"
        if e.kind == "complete":
            return f"trial {e.number:>3} COMPLETE   value {value} at epoch {epoch}"
        if e.kind == "pruned":
            return f"trial {e.number:>3} PRUNED     at epoch {epoch} (eval {value})"
        if e.kind == "interrupted" and e.message.startswith("stopped at the time budget"):
            at = f" (at epoch {epoch})" if e.epoch is not None else " (before its first evaluation)"
            return f"trial {e.number:>3} {e.message}{at}"
        if e.kind == "interrupted":
            return f"trial {e.number:>3} interrupted: marked FAIL, parameters re-queued"
        return f"trial {e.number:>3} FAILED     {e.message}"


def fmt_duration(seconds: float) -> str:
    """``45s``, ``3m12s`` or ``1h02m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(done_here: int, finished: int, target: int, elapsed: float) -> float | None:
    """Seconds left at this run's pace (trials finished per second so far); None before the first.

    Args:
        done_here: trials this run has finished (complete + pruned).
        finished: finished trials the study holds (earlier runs included).
        target: the study's target of finished trials.
        elapsed: seconds since this run started.
    """
    if finished >= target:
        return 0.0
    if done_here <= 0 or elapsed <= 0:
        return None
    return (target - finished) * elapsed / done_here


def better(value: float, best: float, maximize: bool) -> bool:
    """Whether ``value`` beats ``best`` in the study's direction."""
    return value > best if maximize else value < best


def new_best(best: tuple[float, int] | None, e: Any, maximize: bool) -> tuple[float, int] | None:
    """The best (value, trial number) so far after event ``e``."""
    if e.kind == "complete" and e.value is not None and (best is None or better(e.value, best[0], maximize)):
        return (e.value, e.number)
    return best


def make_progress(
    echo: Callable[[str], None], t0: float, target: int, study: Any = None, live: bool | None = None
):
    """The run's progress callback: a ``LiveProgress`` on a terminal, else an ``EventPrinter``.

    Args:
        echo: prints one line (the non-terminal output).
        t0: when the run started (``time.time()``).
        target: the study's target of finished trials.
        study: the study, read for its earlier trials and the running trials' latest evaluation.
        live: force the choice (None: live exactly when stdout is a terminal).
    """
    from rich.console import Console

    console = Console(highlight=False)
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    maximize = study is not None and study.directions[0].name == "MAXIMIZE"
    return LiveProgress(target, t0, study, console) if live else EventPrinter(echo, t0, target, maximize)


class LiveProgress:
    """A live terminal view of a run: running trials (params, epoch, latest eval loss, time),
    counts by state, the best so far, elapsed and time left; each finished trial scrolls by
    above it as one line. Use as a context manager around the run.

    The running trials' epoch and eval loss are read from the study storage (at most every
    ``POLL_S`` seconds, on the display's refresh thread): the storage is live during a run.
    """

    POLL_S = 2.0

    def __init__(self, target: int, t0: float, study: Any = None, console: Any = None):
        from rich.console import Console

        self.target, self.t0, self.study = target, t0, study
        self.maximize = study is not None and study.directions[0].name == "MAXIMIZE"
        self.console = console or Console(highlight=False)
        self.counts = {"complete": 0, "pruned": 0, "fail": 0}
        self.before = {"complete": 0, "pruned": 0, "fail": 0}
        self.best: tuple[float, int] | None = None
        self.running: dict[int, tuple[dict[str, Any], float]] = {}
        self.latest: dict[int, tuple[float | None, float | None]] = {}  # number -> (epoch, eval loss)
        self._polled = 0.0
        self._lock = threading.Lock()
        self._live: Any = None
        self.data: tuple[str, int, int | None] | None = None  # data preparation: stage, done, total
        if study is not None:
            self._seed(study)

    def _seed(self, study: Any) -> None:
        """Counts and best value of the trials the study held before this run."""
        from hpo.summary import best_complete, first_value, state_counts

        trials = study.get_trials(deepcopy=False)
        c = state_counts(trials)
        self.before = {"complete": c["COMPLETE"], "pruned": c["PRUNED"], "fail": c["FAIL"]}
        best = best_complete(trials, study.directions[0])
        value = first_value(best) if best is not None else None
        if best is not None and value is not None:
            self.best = (value, best.number)

    def __enter__(self) -> LiveProgress:
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=2, redirect_stderr=True)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, e) -> None:
        with self._lock:
            if e.kind == "start":
                self.running[e.number] = (e.params, time.time())
                return
            self.running.pop(e.number, None)
            self.latest.pop(e.number, None)
            if e.kind in self.counts:
                self.counts[e.kind] += 1
            self.best = new_best(self.best, e, self.maximize)
        self.console.print(f"{fmt_duration(time.time() - self.t0):>7}  {EventPrinter._end_line(e)}")

    def data_progress(self, stage: str, done: int, total: int | None) -> None:
        """The data preparation's progress (``hpo.data.progress_to``): a bar under the table."""
        self.data = (
            None if stage == "tokenizing" and total is not None and done >= total else (stage, done, total)
        )

    def _poll(self) -> None:
        """The running trials' latest epoch and eval loss, from the storage."""
        if self.study is None or time.monotonic() - self._polled < self.POLL_S:
            return
        self._polled = time.monotonic()
        from optuna.trial import TrialState

        try:
            live = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception as err:  # noqa: BLE001 - a display refresh must not break the run
            log.debug("progress poll failed: %s", err)
            return
        latest = {}
        for t in live:
            steps = t.intermediate_values
            latest[t.number] = (t.user_attrs.get("epoch"), steps[max(steps)] if steps else None)
        with self._lock:
            self.latest = latest

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        self._poll()
        now = time.time()
        table = Table("trial", "params", "epoch", "eval loss", "running", box=None, header_style="bold")
        with self._lock:
            running = sorted(self.running.items())
            latest = dict(self.latest)
        for number, (params, started) in running:
            epoch, value = latest.get(number, (None, None))
            table.add_row(
                str(number),
                fmt_params(params),
                f"{epoch:g}" if epoch is not None else "-",
                f"{value:.4f}" if value is not None else "-",
                fmt_duration(now - started),
            )
        data = self.data
        if data is not None:
            return Group(table, data_bar_line(*data), self.status_line(now))
        return Group(table, self.status_line(now))

    def status_line(self, now: float) -> str:
        """Counts, best so far, elapsed and time left, as one line."""
        c = {k: self.counts[k] + self.before[k] for k in self.counts}
        finished = c["complete"] + c["pruned"]
        elapsed = now - self.t0
        eta = eta_seconds(self.counts["complete"] + self.counts["pruned"], finished, self.target, elapsed)
        left = f"~{fmt_duration(eta)} left" if eta is not None else "time left: after the first trial"
        best = f"best {self.best[0]:.4f} (#{self.best[1]})" if self.best else "best -"
        return (
            f"[bold]{finished}{of_target(self.target)} finished[/bold] "
            f"({c['complete']} complete, {c['pruned']} pruned) "
            f"· {c['fail']} failed · {len(self.running)} running · {best} "
            f"· elapsed {fmt_duration(elapsed)} · {left}"
        )


def data_bar_line(stage: str, done: int, total: int | None) -> Any:
    """One line of data preparation progress: ``preparing data: tokenizing [bar] 1,024/200,000 examples``."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    line = Table.grid(padding=(0, 1))
    count = f"{done:,}/{total:,}" if total else f"{done:,}"
    count += " rows" if stage == "reading" else " examples"
    line.add_row(f"preparing data: {stage}", ProgressBar(total=total, completed=done, width=30), count)
    return line


@contextlib.contextmanager
def data_progress(console: Any = None) -> Iterator[Callable[[str, int, int | None], None] | None]:
    """A progress callback for data preparation that draws a bar on a terminal (transient: it
    goes when done); None (quiet) elsewhere."""
    from rich.console import Console
    from rich.live import Live

    console = console or Console(highlight=False, stderr=True)
    if not console.is_terminal or console.is_dumb_terminal:
        yield None
        return
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        yield lambda stage, done, total: live.update(data_bar_line(stage, done, total))
