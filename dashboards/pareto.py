"""The report's Pareto front (several objectives): every COMPLETE search trial on the first two
objectives, the front joined and marked, each point's values and export command on hover, and
the same as an HTML list (the commands to copy)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from dashboards import facts
from hpo.summary import complete_values, pareto

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from optuna.trial import FrozenTrial

    from hpo.spec import StudySpec

FRONT_COLOR, OTHER_COLOR = "#d62728", "#1f77b4"


def figure(trials: list[FrozenTrial], spec: StudySpec, name: str, url: str | None) -> go.Figure:
    """The first two objectives of every COMPLETE search trial; the front in red, joined in order."""
    import plotly.graph_objects as go

    from dashboards.figures import placeholder

    points = complete_values(trials, len(spec.metrics))
    if not points:
        return placeholder("no COMPLETE trial yet")
    front = sorted((t.number for t in pareto(trials, spec.directions)), key=lambda n: points[n][0])
    x_name, y_name = spec.metrics[0], spec.metrics[1]

    def hover(n: int) -> str:
        values = "<br>".join(f"{m} {facts.fmt(v)}" for m, v in zip(spec.metrics, points[n], strict=True))
        return f"trial {n}<br>{values}<br>{html.escape(facts.export_command(name, n, url))}"

    fig = go.Figure()
    others = [n for n in points if n not in front]
    for label, numbers, color, mode in (
        ("dominated", others, OTHER_COLOR, "markers"),
        ("Pareto front", front, FRONT_COLOR, "lines+markers"),
    ):
        fig.add_trace(
            go.Scatter(
                x=[points[n][0] for n in numbers],
                y=[points[n][1] for n in numbers],
                mode=mode,
                name=label,
                text=[hover(n) for n in numbers],
                hoverinfo="text",
                marker={"color": color, "size": 9 if color == FRONT_COLOR else 6},
                line={"color": color, "shape": "hv", "dash": "dot"},
            )
        )
    fig.update_layout(
        height=440, template="plotly_white", xaxis_title=x_name, yaxis_title=y_name, margin={"t": 30}
    )
    return fig


def commands(trials: list[FrozenTrial], spec: StudySpec, name: str, url: str | None) -> str:
    """The front as an HTML list: each trial's values and its export command."""
    items = []
    for t in pareto(trials, spec.directions):
        values = ", ".join(f"{m} <b>{facts.fmt(v)}</b>" for m, v in zip(spec.metrics, t.values, strict=True))
        status = facts.checkpoint_status(t)
        cmd = html.escape(facts.export_command(name, t.number, url))
        items.append(f"<li>trial {t.number}: {values}; checkpoint {status}<pre>{cmd}</pre></li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""
