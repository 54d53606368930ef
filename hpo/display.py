"""What the CLI prints after a run and for a study: the run's summary lines, ``hpo study show``'s
tables, ``hpo confirm``'s results, and the parameter formatting they share (the run's live
progress is ``hpo/progress.py``'s)."""

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
    """``lr=1.2e-03 bs=16 ...`` in a fixed order, then any other parameter (training options,
    data parameters such as ``augment_p``) by its own name."""
    parts = []
    for k in _SHORT:
        if k in params:
            v = params[k]
            parts.append(f"{_SHORT[k]}={v:.3g}" if isinstance(v, float) else f"{_SHORT[k]}={v}")
    for k, v in params.items():
        if k not in _SHORT and isinstance(v, int | float | str) and not isinstance(v, bool):
            parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


def of_target(target: int) -> str:
    """``/20`` after a count of finished trials, or nothing when the run has no trial target (a
    time budget alone ends it)."""
    from hpo.budget import NO_TARGET

    return "" if target >= NO_TARGET else f"/{target}"


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
            f"interrupted after {s.wall_s:.0f}s: {done}{of_target(s.target)} finished; running trials "
            "re-queued. Rerun the same command to resume."
        )
    else:
        echo(
            f"study {s.study!r}: {done}{of_target(s.target)} finished "
            f"({c['COMPLETE']} complete, {c['PRUNED']} pruned), "
            f"{c['FAIL']} failed, in {s.wall_s:.0f}s"
        )
    if s.budget_s and s.finished_before < s.target:
        from hpo.budget import run_lines

        for line in run_lines(s):
            echo(line)
    if s.metrics:  # several objectives: no single best, a front
        echo(f"Pareto front of {', '.join(s.metrics)}: {len(s.pareto)} trial(s)")
        for number, values in s.pareto:
            echo(
                f"  trial {number}: "
                + "  ".join(f"{m} {v:.4g}" for m, v in zip(s.metrics, values, strict=False))
            )
        if s.pareto:
            echo(f"export one: hpo export --study {s.study} --trial {s.pareto[0][0]} --out exports/{s.study}")
    elif s.best_trial is not None:
        echo(f"best: trial {s.best_trial} value {s.best_value:.4f}  {fmt_params(s.best_params)}")
        echo("export it: hpo export --out exports/" + s.study + "-best" + f" --study {s.study}")


def warm_start_line(warm: dict[str, Any]) -> str:
    """What ``warm_start`` imported at creation (the study attribute ``priorstudy.History.record``)."""
    line = (
        f"imported {warm['imported']} finished trial(s) of study {warm['study']!r} as the sampler's "
        "history (marked imported: not counted toward --trials, never exported)"
    )
    if warm.get("dropped_params"):
        dropped = ", ".join(f"{k} (from {n})" for k, n in warm["dropped_params"].items())
        line += f"; dropped parameters the new space does not search: {dropped}"
    if warm.get("left_out_count"):
        line += (
            f"; left out {warm['left_out_count']} trial(s) outside the new space ({warm['left_out'][0]}, ...)"
        )
    return line


def _print_pareto(console: Any, info: dict[str, Any], where: str) -> None:
    """Several objectives: the Pareto front, one line per trial with its export command."""
    from rich.markup import escape

    goals = ", ".join(f"{o['metric']} ({o['direction']})" for o in info["objectives"])
    console.print(f"objectives: {goals}" + (f"; {info['asha']}" if info.get("asha") else ""))
    front = info["pareto"]
    if not front:
        console.print("Pareto front: no COMPLETE trial yet")
        return
    console.print(f"Pareto front ({len(front)} trials; none is better on every objective):")
    for p in front:
        values = "  ".join(f"{m} {v:.4g}" for m, v in p["values"].items())
        kept = "" if p["checkpoint_kept"] else "  (checkpoint deleted)"
        console.print(f"  trial {p['trial']}: {values}  {escape(fmt_params(p['params']))}{kept}")
        if p["checkpoint_kept"]:
            console.print(
                f"    export: hpo export{where} --study {info['study']} --trial {p['trial']} "
                f"--out exports/{info['study']}-{p['trial']}",
                soft_wrap=True,
            )


def print_summary(info: dict[str, Any], show_trials: bool = False) -> None:
    """``hpo study show`` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    c = info["counts"]
    console.print(
        f"study [bold]{info['study']}[/bold] in {info['storage']}"
        + ("" if "pareto" in info else f" ({info['direction']} {info['spec']['objective']['metric']})")
    )
    states = Table(show_header=True, box=None)
    for name in c:
        states.add_column(name, justify="right")
    states.add_row(*(str(v) for v in c.values()))
    console.print(states)
    if info.get("warm_start"):
        w = info["warm_start"]
        console.print(
            f"history: {w['imported']} trial(s) imported from study {w['study']!r} (not counted above)"
        )
    best = info["best"]
    name = info["study"]
    where = "" if info["storage"] == "sqlite:///hpo.db" else f" --storage {info['storage']}"
    if "pareto" in info:
        _print_pareto(console, info, where)
    elif best is None:
        console.print("best: no COMPLETE trial yet")
    else:
        kept = "kept" if best["checkpoint_kept"] else "deleted"
        console.print(
            f"best: trial {best['trial']}  value {best['value']:.4f}  at epoch {best['epoch']}  "
            f"checkpoint {kept}"
        )
        console.print("  " + fmt_params({**info["spec"]["space"], **best["params"]}))
        if best.get("generated"):
            said = ", ".join(f"{k} {v:.4g}" for k, v in best["generated"].items())
            console.print(
                f"  generated answers: {said} (generating took {best.get('generate_s') or 0:.1f} s)"
            )
        if best["checkpoint_kept"]:
            console.print(
                f"export: hpo export{where} --study {name} --trial {best['trial']} --out exports/{name}"
            )
    if c["COMPLETE"] + c["PRUNED"]:
        console.print(f"report: hpo report{where} --study {name} --out {name}-report.html", soft_wrap=True)
    for c in info.get("confirmed", []):
        stats = "  ".join(
            f"{m} {mu:.4f} ± {sd:.4f}" for m, mu, sd in zip(c["metrics"], c["mean"], c["std"], strict=False)
        )
        console.print(f"confirmed (hpo confirm): trial {c['source']}: {stats} over {len(c['runs'])} seed(s)")
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
                (t["error"] or (f"confirm of #{t['confirm_of']}" if t.get("confirm_of") is not None else ""))[
                    :40
                ],
            )
        console.print(table)


def print_confirm_summary(c, echo: Callable[[str], None]) -> None:
    """The lines after ``hpo confirm``: mean ± std per configuration, best first."""
    queued = f"queued {c.queued} new run(s)" if c.queued else "no new run needed"
    echo(f"confirm {c.study!r}: configurations of trials {', '.join(map(str, c.sources))}; {queued}")
    if c.failed:
        echo(f"{c.failed} confirm run(s) failed; rerun the same command to retry them")
    for r in c.results:
        stats = "  ".join(
            f"{m} {mu:.4f} ± {sd:.4f}" for m, mu, sd in zip(c.metrics, r.mean, r.std, strict=False)
        )
        found = f" (search: {r.source_values[0]:.4f})" if r.source_values else ""
        params = fmt_params(c.params.get(r.source, {}))
        echo(f"  trial {r.source}: {stats} over {len(r.runs)} seed(s) {r.seeds}{found}  {params}")
    if c.results and len(c.metrics) == 1:
        best = c.results[0].source
        echo(f"best confirmed: trial {best}; `hpo export --study {c.study} --out DIR` exports it")
