"""The report's trials table: plain HTML, sortable by any column with a few lines of inline JS."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from dashboards import facts

if TYPE_CHECKING:
    from hpo.spec import StudySpec

#: Sorts the table on a header click: numbers by value (``data-v``), the rest as text; blanks last.
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var key = function (row) {
      var cell = row.cells[col], v = cell.getAttribute('data-v');
      if (v === null || v === '') { return null; }
      var n = Number(v);
      return isNaN(n) ? v : n;
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return x === y ? 0 : (x === null ? 1 : -1); }
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _cell(shown: str, sort_key: Any = None, cls: str = "") -> str:
    key = "" if sort_key is None else str(sort_key)
    klass = f' class="{cls}"' if cls else ""
    return f'<td data-v="{html.escape(key, quote=True)}"{klass}>{html.escape(shown)}</td>'


def _row(
    t: FrozenTrial, params: list[str], spec: StudySpec | None, best: int | None, generates: bool = False
) -> str:
    value = facts.finite_value(t)
    last = facts.last_value(t)
    epoch = facts.epochs_reached(t, spec)
    wall = facts.wall_seconds(t)
    status = facts.checkpoint_status(t)
    note = t.user_attrs.get("error_message") or t.user_attrs.get("fail_reason") or ""
    if t.user_attrs.get("error_class"):
        note = f"{t.user_attrs['error_class']}: {note}"
    cells = [
        _cell(str(t.number), t.number),
        _cell(t.state.name, t.state.name, cls=f"state {t.state.name}"),
        _cell(facts.fmt(value), value),
        _cell(facts.fmt(last), last),
        _cell(f"{epoch:g}" if epoch is not None else "-", epoch),
        _cell(f"{wall:.0f}" if wall is not None else "-", wall),
    ]
    if generates:  # evaluation.generate: the seconds spent generating and scoring answers
        gen = t.user_attrs.get("generate_s")
        cells.append(_cell(f"{gen:.1f}" if isinstance(gen, int | float) else "-", gen))
    cells.append(_cell(status if status != "none" else "-", status, cls=f"ckpt {status}"))
    for name in params:
        v = t.params.get(name)
        cells.append(_cell(facts.fmt(v), v))
    cells.append(_cell(note[:120], note))
    klass = ' class="best"' if t.number == best else ""
    return f"<tr{klass}>" + "".join(cells) + "</tr>"


def trials_table(
    trials: list[FrozenTrial], params: list[str], spec: StudySpec | None, best: int | None
) -> str:
    """Every trial as one row: state, value, last eval, epochs, wall time, checkpoint, params, note."""
    if not trials:
        return '<p class="empty">no trials yet; start some with <code>hpo run</code></p>'
    generates = any("generate_s" in t.user_attrs for t in trials)
    gen = ["generate s"] if generates else []
    heads = ["#", "state", "value", "last eval", "epochs", "wall s", *gen, "checkpoint", *params, "note"]
    head = "".join(f'<th title="sort by {html.escape(h)}">{html.escape(h)}</th>' for h in heads)
    rows = "\n".join(_row(t, params, spec, best, generates) for t in trials)
    return (
        f'<table class="sortable" id="trials"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>'
        f"</table>\n<script>{SORT_JS}</script>"
    )
