"""The report's plotly figures, each a function of plain trial lists (no storage access here).

Trials come in as Optuna ``FrozenTrial``s; the spec (when the study has one) supplies the epoch
grid of the intermediate values (step k = k * ``eval_every`` epochs) and the ASHA rungs. Figures
use SVG traces only (no WebGL) so they render on machines without a GPU; one trace per trial
state keeps a 2,000-trial study light.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from dashboards import facts

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

#: Line style per trial state in the learning curves: (color, dash, width, opacity).
STYLE = {
    "COMPLETE": ("#1f77b4", "solid", 1.2, 0.55),
    "PRUNED": ("#ff7f0e", "dot", 1.0, 0.45),
    "RUNNING": ("#2ca02c", "solid", 1.5, 0.9),
    "FAIL": ("#7f7f7f", "dash", 1.0, 0.5),
}
BEST_COLOR = "#d62728"
HEIGHT = 420


# ---------------------------------------------------------------- pure helpers


def best_so_far(values: list[float], minimize: bool) -> list[float]:
    """The running best of ``values`` (min when minimizing, else max).

    >>> best_so_far([3.0, 2.0, 2.5, 1.0], minimize=True)
    [3.0, 2.0, 2.0, 1.0]
    """
    out: list[float] = []
    for v in values:
        out.append(v if not out else (min(out[-1], v) if minimize else max(out[-1], v)))
    return out


def epoch_grid(spec: StudySpec | None) -> float:
    """Epochs per intermediate-value step (1.0 when the study has no hpo spec)."""
    return float(spec.training.eval_every) if spec is not None else 1.0


def rungs_of(spec: StudySpec | None) -> list[float]:
    """The ASHA rungs of a study's spec; none without ASHA."""
    return spec.asha_rungs() if spec is not None else []


# ---------------------------------------------------------------- figures


def _layout(fig: go.Figure, x: str, y: str) -> go.Figure:
    """The report's common look; the report's section headings title the figures."""
    fig.update_layout(
        xaxis_title=x,
        yaxis_title=y,
        height=HEIGHT,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        legend={"orientation": "h", "y": -0.18},
    )
    return fig


def placeholder(message: str) -> go.Figure:
    """An empty figure that says why there is nothing to plot yet."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 15, "color": "#666"}, x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=220, template="plotly_white", margin={"t": 20, "b": 20})
    return fig


def history(trials: list[FrozenTrial], minimize: bool, metric: str) -> go.Figure:
    """Objective value per trial number with the best-so-far line; pruned trials at their last value."""
    import plotly.graph_objects as go

    done = [(t.number, v) for t in trials if (v := facts.finite_value(t)) is not None]
    if not done:
        return placeholder("no COMPLETE trial yet")
    numbers, values = [n for n, _ in done], [v for _, v in done]
    fig = go.Figure()
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials if _pruned(t)]
    if pruned:
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in pruned],
                y=[v for _, v in pruned],
                mode="markers",
                name="PRUNED (last eval)",
                marker={"symbol": "x", "size": 5, "color": STYLE["PRUNED"][0], "opacity": 0.5},
            )
        )
    fig.add_trace(
        go.Scatter(
            x=numbers, y=values, mode="markers", name="COMPLETE", marker={"color": STYLE["COMPLETE"][0]}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=numbers,
            y=best_so_far(values, minimize),
            mode="lines",
            name="best so far",
            line={"color": BEST_COLOR, "shape": "hv", "width": 2},
        )
    )
    return _layout(fig, "trial", metric)


def _pruned(t: FrozenTrial) -> bool:
    return t.state == TrialState.PRUNED and bool(t.intermediate_values)


def _curves(group: list[FrozenTrial], step_epochs: float) -> tuple[list, list, list]:
    """x, y and trial numbers of many curves in one trace (None separates the curves)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    ids: list[int | None] = []
    for t in group:
        for step, value in sorted(t.intermediate_values.items()):
            xs.append(step * step_epochs)
            ys.append(value)
            ids.append(t.number)
        xs.append(None)
        ys.append(None)
        ids.append(None)
    return xs, ys, ids


def learning_curves(
    trials: list[FrozenTrial], spec: StudySpec | None, best: int | None, metric: str
) -> go.Figure:
    """Every trial's intermediate values against epochs, by state, with the ASHA rungs marked."""
    import plotly.graph_objects as go

    curved = [t for t in trials if t.intermediate_values]
    if not curved:
        return placeholder("no trial has reported an evaluation yet")
    step_epochs = epoch_grid(spec)
    hover = "trial %{customdata}<br>epoch %{x:.3g}<br>" + metric + " %{y:.4f}<extra></extra>"
    fig = go.Figure()
    for state, (color, dash, width, opacity) in STYLE.items():
        group = [t for t in curved if t.state.name == state]
        if not group:
            continue
        xs, ys, ids = _curves(group, step_epochs)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                customdata=ids,
                mode="lines",
                name=f"{state} ({len(group)})",
                line={"color": color, "dash": dash, "width": width},
                opacity=opacity,
                hovertemplate=hover,
            )
        )
    _add_pruned_ends(fig, curved, step_epochs, metric)
    _add_best_curve(fig, curved, best, step_epochs, hover)
    for r in rungs_of(spec):
        fig.add_vline(x=r, line={"color": "#999", "dash": "dash", "width": 1})
        fig.add_annotation(x=r, y=1.0, yref="paper", text=f"rung {r:g}", showarrow=False, yshift=8)
    xlabel = "epoch" if spec is not None else "step"
    return _layout(fig, xlabel, metric)


def _add_pruned_ends(fig: go.Figure, trials: list[FrozenTrial], step_epochs: float, metric: str) -> None:
    import plotly.graph_objects as go

    ends = [(t.number, max(t.intermediate_values)) for t in trials if _pruned(t)]
    if not ends:
        return
    by_number = {t.number: t for t in trials}
    fig.add_trace(
        go.Scatter(
            x=[s * step_epochs for _, s in ends],
            y=[by_number[n].intermediate_values[s] for n, s in ends],
            customdata=[n for n, _ in ends],
            mode="markers",
            name="stopped by ASHA",
            marker={"symbol": "x", "size": 7, "color": STYLE["PRUNED"][0]},
            hovertemplate="trial %{customdata} PRUNED at epoch %{x:.3g}<br>"
            + metric
            + " %{y:.4f}<extra></extra>",
        )
    )


def _add_best_curve(
    fig: go.Figure, trials: list[FrozenTrial], best: int | None, step_epochs: float, hover: str
) -> None:
    import plotly.graph_objects as go

    chosen = [t for t in trials if t.number == best]
    if not chosen:
        return
    xs, ys, ids = _curves(chosen, step_epochs)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            customdata=ids,
            mode="lines+markers",
            name=f"best: trial {best}",
            line={"color": BEST_COLOR, "width": 3},
            hovertemplate=hover,
        )
    )


def importances(study: optuna.Study, n_complete: int) -> go.Figure:
    """Parameter importances (Optuna's default evaluator) as a bar chart; a note below 2 trials."""
    import optuna
    import plotly.graph_objects as go

    if n_complete < 2:
        return placeholder(f"needs at least 2 COMPLETE trials (has {n_complete})")
    try:
        scores = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        log.info("parameter importances unavailable: %s", e)
        return placeholder(f"not computable yet: {e}")
    if not scores:
        return placeholder("no searched parameter varies yet")
    names = list(scores)[::-1]
    fig = go.Figure(
        go.Bar(
            x=[scores[n] for n in names],
            y=names,
            orientation="h",
            marker={"color": STYLE["COMPLETE"][0]},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    _layout(fig, "importance (sums to 1)", "")
    fig.update_layout(height=max(240, 60 + 45 * len(names)))
    return fig


def parallel(study: optuna.Study, n_complete: int) -> go.Figure:
    """Parallel coordinates of the searched parameters against the objective (COMPLETE trials)."""
    import optuna

    if n_complete < 1:
        return placeholder("no COMPLETE trial yet")
    fig = optuna.visualization.plot_parallel_coordinate(study)
    fig.update_layout(title=None, height=HEIGHT, template="plotly_white", margin={"t": 40})
    return fig


def slices(study: optuna.Study, params: list[str], n_complete: int) -> list[tuple[str, go.Figure]]:
    """One slice plot (objective against the parameter, colored by trial number) per parameter."""
    import optuna

    if n_complete < 1:
        return [("none", placeholder("no COMPLETE trial yet"))]
    out = []
    for name in params:
        fig = optuna.visualization.plot_slice(study, params=[name])
        fig.update_layout(title=name, height=360, template="plotly_white", showlegend=False)
        out.append((name, fig))
    return out
