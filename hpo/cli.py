"""The ``hpo`` command: parses, calls one operation, prints, sets the exit code.

Errors are one line with the fix (exit 2 for bad input, 1 for runtime faults, 130 for Ctrl-C);
``--debug`` shows tracebacks. Heavy libraries load inside the commands that need them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import typer

from hpo.climodel import model_app
from hpo.errors import HpoError

app = typer.Typer(
    name="hpo",
    help="Hyperparameter search for fine-tuning causal LMs (Ray Tune + ASHA, live Optuna storage).\n\n"
    "Example:\n\n  hpo study create studies/demo.yaml\n\n  hpo run --trials 20\n\n"
    "  hpo export --out exports/best",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
study_app = typer.Typer(
    help="Create, list, show and delete studies.\n\nExample:\n\n  hpo study show demo", no_args_is_help=True
)
app.add_typer(study_app, name="study")
app.add_typer(model_app, name="model")

_state = {"debug": False}
StorageOpt = typer.Option(None, "--storage", help="SQLAlchemy URL (default $HPO_STORAGE or sqlite:///hpo.db)")
StudyOpt = typer.Option(None, "--study", help="study name (default: the only study in the storage)")


def _echo(msg: str = "") -> None:
    typer.echo(msg)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks and debug logs")) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("hpo").setLevel(logging.DEBUG if debug else logging.INFO)


# ---------------------------------------------------------------- study


@study_app.command("create")
def study_create(
    spec: Path = typer.Argument(..., help="the study YAML file"),
    name: str = typer.Option(None, "--name", help="store under this name instead of the spec's"),
    storage: str = StorageOpt,
) -> None:
    """Validate a study spec and store it.

    Example: hpo study create studies/demo.yaml --storage sqlite:///hpo.db
    """
    from hpo import data as data_mod
    from hpo import dataspace
    from hpo import storage as storage_mod
    from hpo.display import warm_start_line
    from hpo.progress import data_progress
    from hpo.study import create_study
    from hpo.summary import WARM_START_ATTR

    with data_progress() as bar, data_mod.progress_to(bar):  # reading 200,000 rows takes seconds
        s = create_study(spec, name=name, storage=storage)
    where = storage_mod.mask(storage_mod.resolve_url(storage))
    searched = ", ".join(s.space.searched()) or "nothing (all fixed)"
    data = s.data.path or ", ".join(str(src.path) for src in s.data.sources or [])
    _echo(f"created study {s.name!r} in {where}: model {s.model}, data {data}")
    report = storage_mod.data_report(storage_mod.load(s.name, storage))
    if report:
        _echo(data_mod.describe(report))
        for line in data_mod.describe_augment(report, dataspace.shown_values(s.space)):
            _echo(line)
    _echo(
        f"searching {searched}; schedule {s.schedule.type}; "
        f"objective {s.objective.metric} ({s.objective.direction})"
    )
    warm = storage_mod.load(s.name, storage).user_attrs.get(WARM_START_ATTR)
    if warm:
        _echo(warm_start_line(warm))
    _echo(f"next: hpo run --study {s.name} --trials 20")


@study_app.command("list")
def study_list(storage: str = StorageOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the studies in the storage.

    Example: hpo study list --storage postgresql://root@127.0.0.1:5432/test
    """
    from hpo.study import list_studies

    rows = list_studies(storage)
    if as_json:
        _echo(json.dumps(rows, indent=1))
        return
    if not rows:
        _echo("no studies; create one with `hpo study create studies/NAME.yaml`")
    for r in rows:
        c = r["counts"]
        best = f"{r['best_value']:.4f}" if r["best_value"] is not None else "-"
        _echo(
            f"{r['study']:<24} {r['trials']:>5} trials  complete {c['COMPLETE']}  pruned {c['PRUNED']}  "
            f"failed {c['FAIL']}  running {c['RUNNING']}  best {best}"
        )


@study_app.command("show")
def study_show(
    name: str = typer.Argument(None, help="study name (default: the only one)"),
    storage: str = StorageOpt,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    trials: bool = typer.Option(False, "--trials", help="also list every trial"),
) -> None:
    """Show a study: trials by state, the best value, params and checkpoint.

    Example: hpo study show demo --trials
    """
    from hpo.study import show_study

    info = show_study(name, storage, trials=trials or as_json)
    if as_json:
        _echo(json.dumps(info, indent=1, default=str))
        return
    from hpo.display import print_summary

    print_summary(info, show_trials=trials)


@study_app.command("delete")
def study_delete(
    name: str = typer.Argument(..., help="study name"),
    storage: str = StorageOpt,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete a study and its trials from the storage.

    Example: hpo study delete demo --yes
    """
    from hpo.study import delete_study

    if not yes and not typer.confirm(f"delete study {name!r} and all its trials?"):
        raise typer.Exit(1)
    delete_study(name, storage)
    _echo(f"deleted study {name!r}")


# ---------------------------------------------------------------- run, export, dashboard


@app.command("run")
def run_cmd(
    trials: int = typer.Option(
        None, "--trials", "-n", help="finished trials the study should hold (default 20; none with a budget)"
    ),
    time_budget: str = typer.Option(
        None, "--time-budget", help="end the run after this long: 90m, 2h, 3600s (over the spec's budget)"
    ),
    study: str = StudyOpt,
    storage: str = StorageOpt,
    runs_dir: Path = typer.Option(
        None, "--runs-dir", help="checkpoints and Ray files (default runs/<study>)"
    ),
    address: str = typer.Option(
        None, "--address", help="join this Ray cluster (HOST:PORT) instead of a local Ray"
    ),
    concurrency: int = typer.Option(
        None, "--concurrency", help="trials at once (default: as resources allow)"
    ),
    cpus_per_trial: float = typer.Option(None, "--cpus-per-trial"),
    gpus_per_trial: float = typer.Option(None, "--gpus-per-trial"),
    max_failures: int = typer.Option(
        5, "--max-failures", help="stop after this many trials in a row fail alike"
    ),
) -> None:
    """Run trials until the study holds --trials finished ones (or --time-budget is spent); rerun
    to resume.

    Example: hpo run --study demo --trials 50 --time-budget 2h
    """
    from dashboards.notes import NoteWriter
    from hpo import data as data_mod
    from hpo import storage as storage_mod
    from hpo.display import print_run_summary
    from hpo.progress import make_progress
    from hpo.study import run_budget, run_study, run_target

    if time_budget is not None:
        run_budget(time_budget, None)  # a bad budget is refused before anything is opened
    # the live display and the dashboard notes read the study alongside the run
    loaded = storage_mod.load(study, storage)
    target = run_target(trials, run_budget(time_budget, storage_mod.spec_of(loaded)))
    artifacts = (runs_dir.parent if runs_dir else Path("runs")) / "artifacts"
    with (
        make_progress(_echo, time.time(), target, study=loaded) as progress,
        data_mod.progress_to(getattr(progress, "data_progress", None)),  # a bar on a terminal only
    ):
        notes = NoteWriter(loaded, progress, storage_mod.resolve_url(storage), artifacts)
        summary = run_study(
            study,
            trials=trials,
            storage=storage,
            runs_dir=runs_dir,
            on_event=notes,
            address=address,
            concurrency=concurrency,
            cpus_per_trial=cpus_per_trial,
            gpus_per_trial=gpus_per_trial,
            max_failures=max_failures,
            time_budget=time_budget,
        )
    notes.finish()
    print_run_summary(summary, _echo)
    if notes.noted:
        _echo(f"wrote dashboard notes for {len(notes.noted)} trials; browse them with `hpo dashboard`")
    if summary.interrupted:
        raise typer.Exit(130)


@app.command("confirm")
def confirm_cmd(
    top: int = typer.Option(
        3, "--top", help="configurations to retrain, best first (several objectives: of the Pareto front)"
    ),
    seeds: int = typer.Option(3, "--seeds", help="new seeds per configuration"),
    study: str = StudyOpt,
    storage: str = StorageOpt,
    runs_dir: Path = typer.Option(
        None, "--runs-dir", help="checkpoints and Ray files (default runs/<study>)"
    ),
    address: str = typer.Option(None, "--address", help="join this Ray cluster (HOST:PORT)"),
    concurrency: int = typer.Option(None, "--concurrency", help="runs at once (default: as resources allow)"),
) -> None:
    """Retrain the best configurations with new seeds at their full budget; print mean ± std each.

    Runs are trials tagged `confirm` (not counted toward --trials); rerun to finish missing ones.
    Example: hpo confirm --study demo --top 3 --seeds 3
    """
    from dashboards.notes import NoteWriter
    from hpo import storage as storage_mod
    from hpo.confirm import confirm_study
    from hpo.display import print_confirm_summary
    from hpo.progress import make_progress

    loaded = storage_mod.load(study, storage)
    with make_progress(_echo, time.time(), top * seeds, study=loaded) as progress:
        notes = NoteWriter(loaded, progress, storage_mod.resolve_url(storage))  # each run's dashboard note
        result = confirm_study(
            study, top, seeds, storage, runs_dir, on_event=notes, address=address, concurrency=concurrency
        )
    notes.finish()
    print_confirm_summary(result, _echo)
    if result.run is not None and result.run.interrupted:
        raise typer.Exit(130)


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="destination folder"),
    study: str = StudyOpt,
    storage: str = StorageOpt,
    trial: int = typer.Option(None, "--trial", help="export this trial instead of the best COMPLETE one"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty destination"),
    merge: bool = typer.Option(
        True, "--merge/--no-merge", help="LoRA studies: merged model, or the adapter alone"
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="weights' dtype: auto (the base model's), float32, bfloat16, float16"
    ),
) -> None:
    """Write the best checkpoint as a from_pretrained folder with a model card.

    Example: hpo export --out exports/demo-best
    """
    from hpo.export import export_best

    e = export_best(out, study=study, storage=storage, trial=trial, force=force, merge=merge, dtype=dtype)
    value = f"{e.value:.4f}" if e.value is not None else "-"
    _echo(f"exported trial {e.trial} of {e.study!r} (value {value}) to {e.path}")
    _echo(f"load it with AutoModelForCausalLM.from_pretrained({str(e.path)!r})")


@app.command("dashboard")
def dashboard_cmd(
    storage: str = StorageOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
    port: int = typer.Option(8080, "--port"),
    artifact_dir: Path = typer.Option(
        Path("runs/artifacts"), "--artifact-dir", help="model cards `hpo run` attached (if the folder exists)"
    ),
) -> None:
    """Serve optuna-dashboard on the study storage.

    Example: hpo dashboard --port 8080
    """
    from hpo import storage as storage_mod

    st = storage_mod.open_storage(storage)
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    store = FileSystemArtifactStore(artifact_dir) if artifact_dir.is_dir() else None
    _echo(
        f"optuna-dashboard on http://{host}:{port}/ for {storage_mod.mask(storage_mod.resolve_url(storage))}"
        " (Ctrl-C stops)"
    )
    optuna_dashboard.run_server(st, host=host, port=port, artifact_store=store)


@app.command("report")
def report_cmd(
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="the HTML file to write"),
    study: str = StudyOpt,
    storage: str = StorageOpt,
) -> None:
    """Write one self-contained HTML report of a study: plots, the trials table, the export command.

    Example: hpo report --study demo --out report.html
    """
    from dashboards.report import build_report
    from hpo import storage as storage_mod

    loaded = storage_mod.load(study, storage)
    path = build_report(loaded, out, storage_url=storage_mod.resolve_url(storage))
    n = len(loaded.get_trials(deepcopy=False))
    mb = path.stat().st_size / 1e6
    _echo(f"wrote {path} ({n} trials of {loaded.study_name!r}, {mb:.1f} MB; opens offline in a browser)")


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the app, turning hpo errors into one line and an exit code."""
    import click

    try:
        rc = app(args=argv, prog_name="hpo", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
        return rc
    except HpoError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort):
        typer.echo("aborted", err=True)
        sys.exit(130)
    # typer >= 0.24 raises its own copy of click's exceptions (a usage error: an unknown command or
    # option), all under its public TyperException
    except (click.ClickException, typer.exceptions.TyperException) as e:
        if hasattr(e, "show"):
            e.show()
        else:
            typer.echo(f"error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 2))
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _state["debug"]:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        typer.echo(
            f"error: internal error {type(e).__name__}: {first} (rerun with --debug for details)", err=True
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
