"""The study report (dashboards/report.py, figures.py, table.py) on synthetic studies of 0, 1, 30
and 2,000 trials made with Optuna directly, and the ``hpo report`` command."""

from __future__ import annotations

import re
import time
from pathlib import Path

import optuna
import pytest

from dashboards import facts, figures
from dashboards.report import build_report
from hpo.specsections import asha_rungs
from tests.conftest import run_cli
from tests.synthetic import make_study

FIGURES = ("fig-history", "fig-curves", "fig-parallel", "fig-importance")
PARAMS = ("learning_rate", "batch_size", "epochs", "dropout")


def _divs(page: str) -> set[str]:
    return set(re.findall(r'<div id="(fig-[\w-]+)"', page))


def _rows(page: str) -> int:
    if '<table class="sortable"' not in page:
        return 0
    return page.split('<table class="sortable"', 1)[1].count("<tr") - 1  # minus the header row


def _report(tmp_path: Path, n: int, **kw) -> str:
    study = make_study(None, n, **kw)
    out = build_report(study, tmp_path / "sub" / "report.html")
    return out.read_text(encoding="utf-8")


def test_report_is_self_contained_with_every_figure(tmp_path: Path) -> None:
    page = _report(tmp_path, 30, ckpt_root=tmp_path / "runs")
    assert set(FIGURES) | {f"fig-slices-{p}" for p in PARAMS} <= _divs(page)
    assert not re.findall(r"<(?:script|link)[^>]*\b(?:src|href)=", page)  # plotly.js is inlined: no CDN
    assert "Plotly.newPlot" in page and len(page) > 3_000_000
    assert _rows(page) == 30
    # the header: the best trial, its params and the command that exports it
    best = min((t for t in make_study(None, 30).trials if t.value is not None), key=lambda t: t.value)
    assert f"Best: trial {best.number}" in page
    assert f"hpo export --study synth --trial {best.number} --out exports/synth-trial-{best.number}" in page
    assert "weight_decay=<b>0.0100</b>" in page  # fixed parameters are listed too
    assert "checkpoint kept" in page
    # the table sorts and marks deleted checkpoints
    assert "table.sortable th" in page and 'data-v="deleted"' in page


def test_report_of_an_empty_study(tmp_path: Path) -> None:
    page = _report(tmp_path, 0)
    assert set(FIGURES) <= _divs(page)
    assert "no COMPLETE trial yet: nothing to export" in page
    assert "no trials yet" in page and _rows(page) == 0


def test_report_of_one_trial_explains_the_missing_importances(tmp_path: Path) -> None:
    page = _report(tmp_path, 1)
    assert set(FIGURES) <= _divs(page)
    assert "needs at least 2 COMPLETE trials (has 1)" in page
    assert "Best: trial 0" in page and _rows(page) == 1


def test_report_of_2000_trials_is_fast(tmp_path: Path) -> None:
    study = make_study(None, 2000)
    t0 = time.perf_counter()
    out = build_report(study, tmp_path / "big.html")
    seconds = time.perf_counter() - t0
    print(f"\n2,000-trial report: {seconds:.2f} s, {out.stat().st_size / 1e6:.1f} MB")
    page = out.read_text(encoding="utf-8")
    assert set(FIGURES) <= _divs(page) and _rows(page) == 2000
    assert seconds < 30, f"the 2,000-trial report took {seconds:.1f} s (issue bound: 10 s)"


def test_learning_curves_mark_rungs_and_pruned_trials() -> None:
    study = make_study(None, 40)
    spec = facts.spec_or_none(study)
    fig = figures.learning_curves(study.trials, spec, best=3, metric="eval_loss")
    by_name = {t.name.split(" (")[0]: t for t in fig.data}
    assert {"COMPLETE", "PRUNED", "stopped by ASHA", "best: trial 3"} <= set(by_name)
    assert by_name["PRUNED"].line.dash != by_name["COMPLETE"].line.dash
    assert by_name["PRUNED"].line.color != by_name["COMPLETE"].line.color
    assert sorted(s.x0 for s in fig.layout.shapes) == [0.25, 0.5, 1.0]  # the ASHA rungs, in epochs
    assert max(x for x in by_name["COMPLETE"].x if x is not None) == 2.0  # steps mapped to epochs


@pytest.mark.parametrize(
    ("grace", "rf", "max_t", "rungs"),
    [
        (0.25, 2, 2.0, [0.25, 0.5, 1.0]),
        (0.25, 3, 2.0, [0.25, 0.75]),
        (1.0, 2, 1.0, []),
        (0.5, 2, 4, [0.5, 1, 2]),
    ],
)
def test_asha_rungs(grace: float, rf: float, max_t: float, rungs: list[float]) -> None:
    assert asha_rungs(grace, rf, max_t) == rungs


def test_best_so_far() -> None:
    assert figures.best_so_far([3.0, 2.0, 2.5, 1.0], minimize=True) == [3.0, 2.0, 2.0, 1.0]
    assert figures.best_so_far([1.0, 3.0, 2.0], minimize=False) == [1.0, 3.0, 3.0]
    assert figures.best_so_far([], minimize=True) == []


def test_report_of_a_study_hpo_did_not_create(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.3) ** 2, n_trials=5)
    page = build_report(study, tmp_path / "plain.html").read_text(encoding="utf-8")
    assert "fig-slices-x" in _divs(page) and _rows(page) == 5
    assert "hpo export --study" in page


def test_hpo_report_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    make_study(url, 12, name="demo")
    out = tmp_path / "r" / "demo.html"
    r = run_cli("report", "--storage", url, "--study", "demo", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out} (12 trials of 'demo'" in r.stdout
    page = out.read_text(encoding="utf-8")
    assert set(FIGURES) <= _divs(page)
    assert f"hpo export --storage {url} --study demo --trial" in page  # not the default storage: named
    missing = run_cli("report", "--storage", url, "--study", "nope", "--out", str(out), timeout=120)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no study 'nope'"), missing.stderr
