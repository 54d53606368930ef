"""``hpo report``: one self-contained HTML file about a study (plotly inlined; opens offline).

The page holds a header (best trial, its hyperparameters, the command that exports it), the
optimization history, learning curves with the ASHA rungs, parallel coordinates, parameter
importances, one slice plot per searched parameter, and a sortable table of every trial.

    from dashboards.report import build_report
    build_report(hpo.storage.load("demo"), "report.html")
"""

from __future__ import annotations

import html
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from dashboards import facts, figures
from dashboards.table import trials_table
from hpo.errors import UsageError
from hpo.summary import best_complete, state_counts

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #222; }
body { padding: 0 16px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #666; } .counts span { margin-right: 14px; }
.best { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 6px; padding: 12px 16px; }
pre { background: #272822; color: #f8f8f2; padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 8px; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid #ddd; }
table.sortable { border-collapse: collapse; font-size: 13px; width: 100%; }
table.sortable th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; text-align: left; }
table.sortable th { padding: 4px 8px; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; }
table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
table.generated { border-collapse: collapse; font-size: 13px; }
table.generated td, table.generated th { padding: 4px 8px; border-top: 1px solid #eee; text-align: left; }
table.generated td { white-space: pre-wrap; vertical-align: top; max-width: 30em; }
table.sortable td { padding: 2px 8px; border-top: 1px solid #eee; white-space: nowrap; }
tr.best td { background: #fff3cd; }
.COMPLETE { color: #1f77b4; } .PRUNED { color: #e06c00; } .FAIL { color: #b00020; }
.RUNNING { color: #2ca02c; } .ckpt.deleted { color: #999; }
"""


def build_report(study: optuna.Study, out_path: str | Path, storage_url: str | None = None) -> Path:
    """Write the study's report to ``out_path`` (replaced atomically) and return the path.

    Args:
        study: the Optuna study (an hpo study; others work without epochs and rungs).
        out_path: the HTML file to write; its folder is created.
        storage_url: the storage URL, shown in the export command when it is not the default.

    Raises:
        UsageError: ``out_path`` cannot be written.
    """
    trials = study.get_trials(deepcopy=False)
    spec = facts.spec_or_none(study)
    page = render(study.study_name, study.directions[0], trials, spec, storage_url)
    return _write(Path(out_path), page)


def render(
    name: str,
    direction: optuna.study.StudyDirection,
    trials: list[FrozenTrial],
    spec: StudySpec | None,
    storage_url: str | None = None,
) -> str:
    """The whole HTML page for a study's trials."""
    from plotly.offline import get_plotlyjs

    best = best_complete(trials, direction)
    metric = spec.objective.metric if spec is not None else "objective"
    body = [_header(name, direction, metric, trials, spec, best, storage_url)]
    if (
        spec is not None and spec.objectives
    ):  # several objectives: the front first, then the first one's plots
        body.append(_pareto_section(name, trials, spec, storage_url))
    body.extend(_figures(direction, trials, spec, best, metric))
    params = _param_names(trials, spec)
    body.append('<h2 id="table">Trials</h2><p class="meta">click a column to sort</p>')
    body.append(
        f'<div class="scroll">{trials_table(trials, params, spec, best.number if best else None)}</div>'
    )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>hpo report: {html.escape(name)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(body)
        + f'\n<p class="meta">generated {stamp} by <code>hpo report</code></p>\n</body></html>\n'
    )


def _figures(direction, trials: list[FrozenTrial], spec, best: FrozenTrial | None, metric: str) -> list[str]:
    """The figure sections, each a titled block of plotly divs."""
    from optuna.study import StudyDirection

    minimize = direction == StudyDirection.MINIMIZE
    memory = _memory_study(trials, direction)
    done = [t for t in trials if facts.finite_value(t) is not None]
    n_complete = len(done)
    params = [p for p in _param_names(trials, spec) if any(p in t.params for t in done)]
    best_number = best.number if best is not None else None
    out = [
        _section("history", "Optimization history", [("history", figures.history(trials, minimize, metric))]),
        _section(
            "curves",
            "Learning curves",
            [("curves", figures.learning_curves(trials, spec, best_number, metric))],
            "every trial's evaluations; orange dotted and ending in &times;: stopped by ASHA (PRUNED); "
            "dashed verticals: ASHA rungs; red: the best trial",
        ),
        _section(
            "parallel",
            "Parallel coordinates",
            [("parallel", figures.parallel(memory, n_complete))],
            "COMPLETE trials; drag along an axis to filter",
        ),
        _section(
            "importance", "Parameter importances", [("importance", figures.importances(memory, n_complete))]
        ),
        _section("slices", "Slice plots", figures.slices(memory, params, n_complete), grid=True),
    ]
    return out


def _pareto_section(name: str, trials: list[FrozenTrial], spec: StudySpec, url: str | None) -> str:
    """The Pareto front: a figure of the first two objectives and each point's export command."""
    from dashboards import pareto

    fig = pareto.figure(trials, spec, name, url)
    caption = (
        f"{', '.join(spec.metrics)}: red, the trials no other beats on every objective (hover for the "
        f"values and the export command); the plots below rank by the first, {spec.metrics[0]}"
    )
    return _section("pareto", "Pareto front", [("pareto", fig)], caption) + pareto.commands(
        trials, spec, name, url
    )


def _section(
    anchor: str, title: str, figs: list[tuple[str, go.Figure]], caption: str = "", grid: bool = False
) -> str:
    """A titled block of figures, in divs ``fig-<anchor>`` (key == anchor) or ``fig-<anchor>-<key>``."""
    divs = "".join(_div(f"fig-{anchor}" if key == anchor else f"fig-{anchor}-{key}", f) for key, f in figs)
    inner = f'<div class="grid">{divs}</div>' if grid else divs
    note = f'<p class="meta">{caption}</p>' if caption else ""
    return f'<h2 id="{anchor}">{html.escape(title)}</h2>{note}\n{inner}'


def _div(div_id: str, fig: go.Figure) -> str:
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)
    return f'<div class="figure">{body}</div>'


def _memory_study(trials: list[FrozenTrial], direction) -> optuna.Study:
    """An in-memory copy of the trials for Optuna's plots and importances (read once from the
    storage, not once per plot). Every trial is copied so trial numbers stay the same."""
    import optuna

    from hpo.summary import first_value

    study = optuna.create_study(direction=direction)
    several = [t for t in trials if t.values is not None and len(t.values) > 1]
    if several:  # several objectives: the copies carry the first one (what these plots rank by)
        trials = [_first_only(t, first_value) if t.values is not None else t for t in trials]
    study.add_trials(trials)
    return study


def _first_only(t: FrozenTrial, first_value) -> FrozenTrial:
    """A copy of ``t`` with only its first objective's value."""
    import optuna

    return optuna.trial.create_trial(
        state=t.state,
        values=[first_value(t)],
        params=t.params,
        distributions=t.distributions,
        user_attrs=t.user_attrs,
        intermediate_values=t.intermediate_values,
    )


def _param_names(trials: list[FrozenTrial], spec: StudySpec | None) -> list[str]:
    """The searched parameters: the spec's order first, then any other the trials carry."""
    seen: dict[str, None] = dict.fromkeys(spec.space.searched()) if spec is not None else {}
    for t in trials:
        seen.update(dict.fromkeys(t.params))
    return list(seen)


def _header(name, direction, metric, trials, spec, best, storage_url) -> str:
    counts = state_counts(trials)
    spans = "".join(f'<span class="{s}">{s} <b>{n}</b></span>' for s, n in counts.items())
    where = f" &middot; model <code>{html.escape(spec.model)}</code>" if spec is not None else ""
    head = (
        f"<h1>hpo study <code>{html.escape(name)}</code></h1>"
        f'<p class="meta">{direction.name.lower()} {html.escape(metric)}{where}'
        f" &middot; {len(trials)} trials</p>"
        f'<p class="counts">{spans}</p>'
    )
    return head + _best_block(name, metric, best, spec, storage_url) + _generated_block(best)


def _best_block(name: str, metric: str, best: FrozenTrial | None, spec, storage_url) -> str:
    if best is None:
        return '<div class="best">no COMPLETE trial yet: nothing to export.</div>'
    hyper = facts.hyperparameters(best, spec)
    items = ", ".join(f"{html.escape(k)}=<b>{html.escape(facts.fmt(v))}</b>" for k, v in hyper.items())
    status = facts.checkpoint_status(best)
    ppl = best.user_attrs.get("best_perplexity")
    extra = f" (perplexity {facts.fmt(ppl, 2)})" if isinstance(ppl, float) else ""
    at = best.user_attrs.get("best_epoch")
    at_text = f" at epoch {at:g}" if isinstance(at, int | float) else ""
    return (
        f'<div class="best"><b>Best: trial {best.number}</b> &mdash; {html.escape(metric)} '
        f"<b>{facts.fmt(facts.finite_value(best))}</b>{extra}{at_text}; checkpoint {status}<br>{items}"
        f"<pre>{html.escape(facts.export_command(name, best.number, storage_url))}</pre></div>"
    )


def _generated_block(best: FrozenTrial | None) -> str:
    """The best trial's generated answers beside their references (``evaluation.generate``)."""
    if best is None:
        return ""
    line, samples = facts.generated(best)
    if not line:
        return ""
    cells = ("prompt", "prediction", "reference")
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(s.get(k, '')))}</td>" for k in cells) + "</tr>"
        for s in samples
    )
    head = "<tr><th>prompt</th><th>answer</th><th>reference</th></tr>"
    table = f'<table class="generated">{head}{rows}</table>' if samples else ""
    return (
        f'<h2 id="generated">Generated answers of trial {best.number}</h2>'
        f'<p class="meta">{html.escape(line)}</p>{table}'
    )


def _write(out: Path, page: str) -> Path:
    """Write beside ``out`` and rename into place, so a reader never sees half a report."""
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for sharing
        os.replace(tmp, out)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"--out {out}: cannot write the report ({e.strerror or e})") from e
    return out
