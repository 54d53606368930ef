"""What the CLI prints: one line per trial event during a run, and study summaries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_SHORT = {
    "learning_rate": "lr",
    "batch_size": "bs",
    "epochs": "epochs",
    "dropout": "dropout",
    "weight_decay": "wd",
}


def fmt_params(params: dict[str, Any]) -> str:
    """``lr=1.2e-03 bs=16 ...`` in a fixed order."""
    parts = []
    for k in _SHORT:
        if k in params:
            v = params[k]
            parts.append(f"{_SHORT[k]}={v:.3g}" if isinstance(v, float) else f"{_SHORT[k]}={v}")
    return " ".join(parts)


class EventPrinter:
    """Prints one line per trial event, with counts and the best value so far."""

    def __init__(self, echo: Callable[[str], None], t0: float, target: int):
        self.echo, self.t0, self.target = echo, t0, target
        self.counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0}
        self.best: tuple[float, int] | None = None

    def __call__(self, e) -> None:
        import time

        if e.kind == "start":
            self.counts["running"] += 1
            line = f"trial {e.number:>3} started    {fmt_params(e.params)}"
        else:
            self.counts["running"] = max(0, self.counts["running"] - 1)
            if e.kind in self.counts:
                self.counts[e.kind] += 1
            if e.kind == "complete" and e.value is not None and (self.best is None or e.value < self.best[0]):
                self.best = (e.value, e.number)
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
        if e.kind == "interrupted":
            return f"trial {e.number:>3} interrupted: marked FAIL, parameters re-queued"
        return f"trial {e.number:>3} FAILED     {e.message}"


def print_run_summary(s, echo: Callable[[str], None]) -> None:
    """The lines after a run."""
    c = s.counts
    done = c["COMPLETE"] + c["PRUNED"]
    for note in s.notes:
        echo(f"note: {note}")
    if s.recovered:
        echo(
            f"recovered {len(s.recovered)} trial(s) of a dead run (marked FAIL, parameters re-queued): "
            f"{', '.join(map(str, s.recovered))}"
        )
    if s.finished_before >= s.target:
        echo(
            f"study {s.study!r} already holds {s.finished_before} finished trials (target {s.target}); "
            "nothing to run. Raise --trials to run more."
        )
    elif s.interrupted:
        echo(
            f"interrupted after {s.wall_s:.0f}s: {done}/{s.target} finished; running trials re-queued. "
            "Rerun the same command to resume."
        )
    else:
        echo(
            f"study {s.study!r}: {done}/{s.target} finished "
            f"({c['COMPLETE']} complete, {c['PRUNED']} pruned), "
            f"{c['FAIL']} failed, in {s.wall_s:.0f}s"
        )
    if s.best_trial is not None:
        echo(f"best: trial {s.best_trial} value {s.best_value:.4f}  {fmt_params(s.best_params)}")
        echo("export it: hpo export --out exports/" + s.study + "-best" + f" --study {s.study}")


def print_summary(info: dict[str, Any], show_trials: bool = False) -> None:
    """``hpo study show`` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    c = info["counts"]
    console.print(
        f"study [bold]{info['study']}[/bold] in {info['storage']} ({info['direction']} "
        f"{info['spec']['objective']['metric']})"
    )
    states = Table(show_header=True, box=None)
    for name in c:
        states.add_column(name, justify="right")
    states.add_row(*(str(v) for v in c.values()))
    console.print(states)
    best = info["best"]
    if best is None:
        console.print("best: no COMPLETE trial yet")
    else:
        kept = "kept" if best["checkpoint_kept"] else "deleted"
        console.print(
            f"best: trial {best['trial']}  value {best['value']:.4f}  at epoch {best['epoch']}  "
            f"checkpoint {kept}"
        )
        console.print("  " + fmt_params({**info["spec"]["space"], **best["params"]}))
    if info.get("disk_peak_mb") is not None:
        console.print(f"checkpoint disk high-water: {info['disk_peak_mb']:.1f} MB")
    if show_trials and info.get("trials"):
        table = Table("#", "state", "value", "epoch", "params", "s", "ckpt", "note")
        for t in info["trials"]:
            value = f"{t['value']:.4f}" if t["value"] is not None else ""
            table.add_row(
                str(t["number"]),
                t["state"],
                value,
                f"{t['epoch'] or ''}",
                fmt_params(t["params"]),
                f"{t['duration_s']:.0f}" if t["duration_s"] else "",
                "yes" if t["checkpoint_kept"] else "",
                (t["error"] or "")[:40],
            )
        console.print(table)
