"""Time budgets: the pure decisions with hand-picked numbers (hpo/budget.py), and on the real stack
a run whose budget ends while trials train: they are stopped at the deadline, recorded FAIL
``budget`` with their checkpoints, re-queued, and a rerun resumes them."""

from __future__ import annotations

import datetime
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from hpo import budget
from hpo import spec as spec_mod
from hpo.bookkeeping import checkpoints_to_delete
from hpo.study import run_budget, run_target
from tests.conftest import run_cli, small_spec

# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400),
        ("2h", 7200),
        ("3600s", 3600),
        ("1.5h", 5400),
        ("45", 45),
        (" 10 min ", 600),
        ("1d", 86400),
    ],
)
def test_durations_people_write(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1h", "0h", "0", "2x", "h", "", "1h30m", "nan", "inf"])
def test_bad_durations_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="not a positive duration; give one like 90m, 2h or 3600s"):
        budget.parse_duration(text)


def test_describe():
    assert [budget.describe(s) for s in (44.6, 60, 754, 5400, 7200)] == [
        "45s",
        "1m",
        "12m34s",
        "1h30m",
        "2h00m",
    ]


# ---------------------------------------------------------------- pace and the start decision


def test_pace_is_work_over_epochs_and_startup_the_median_overhead():
    # 3 trials: 1 epoch in 30 s (wall 40), 0.5 in 20 s (wall 26), 0.25 in 10 s (wall 30)
    pace = budget.measured_pace([(1.0, 30.0, 40.0), (0.5, 20.0, 26.0), (0.25, 10.0, 30.0)])
    assert pace is not None and pace.trials == 3
    assert pace.s_per_epoch == pytest.approx(60.0 / 1.75)
    assert pace.startup_s == pytest.approx(10.0)  # median of 10, 6, 20
    assert pace.seconds_for(0.5) == pytest.approx(10.0 + 30.0 / 1.75)


def test_no_measurable_trial_means_no_pace():
    assert budget.measured_pace([]) is None
    assert budget.measured_pace([(0.0, 5.0, 9.0), (1.0, 0.0, 3.0)]) is None
    # a wall time shorter than the work (clock skew) is no negative start-up
    assert budget.measured_pace([(1.0, 10.0, 8.0)]) == budget.Pace(10.0, 0.0, 1)


def test_a_trial_starts_only_when_its_first_rung_fits_with_slack():
    pace = budget.Pace(s_per_epoch=100.0, startup_s=10.0, trials=4)
    # first rung at 0.5 epoch: (10 + 50) s x 1.2 slack = 72 s
    assert budget.can_start(72.0, 0.5, pace)
    assert not budget.can_start(71.9, 0.5, pace)
    assert budget.can_start(60.0, 0.5, pace, slack=1.0)
    assert not budget.can_start(491.0, 4.0, pace)  # 4 epochs: (10 + 400) s x 1.2 = 492 s
    assert budget.can_start(492.0, 4.0, pace)


def test_without_a_pace_trials_start_while_time_is_left():
    assert budget.can_start(1.0, 10.0, None)
    assert not budget.can_start(0.0, 0.25, None)
    assert not budget.can_start(-5.0, 0.25, budget.Pace(1.0, 0.0, 1))


def test_first_rung_is_ashas_first_or_the_first_evaluation():
    assert budget.first_rung([0.25, 0.5, 1.0], 2.0, 0.25) == 0.25
    assert budget.first_rung([], 2.0, 0.5) == 0.5  # no ASHA: the first evaluation
    assert budget.first_rung([], 0.2, 0.5) == 0.2


def _trial(state, number=0, wall=None, **attrs):
    start = datetime.datetime(2026, 1, 1)
    return SimpleNamespace(
        number=number,
        state=state,
        user_attrs=attrs,
        values=None,
        datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=wall) if wall is not None else None,
    )


def test_pace_samples_take_the_studys_own_finished_unresumed_trials():
    trials = [
        _trial(TrialState.COMPLETE, wall=40, epoch=1.0, trial_s=30.0),
        _trial(TrialState.PRUNED, wall=26, epoch=0.5, trial_s=20.0),
        _trial(TrialState.RUNNING, epoch=0.5, trial_s=20.0),  # not finished
        _trial(TrialState.FAIL, wall=9, epoch=0.25, trial_s=5.0),  # failed: its pace says little
        _trial(TrialState.COMPLETE, wall=9, epoch=2.0, trial_s=5.0, resumed_from="/x"),  # part elsewhere
        _trial(TrialState.COMPLETE, wall=9, epoch=2.0, trial_s=5.0, imported="old"),  # another study
        _trial(TrialState.COMPLETE, wall=9),  # reported nothing
    ]
    assert budget.pace_samples(trials) == [(1.0, 30.0, 40.0), (0.5, 20.0, 26.0)]


def test_a_budget_stopped_trial_keeps_its_checkpoint_until_its_requeued_trial_ends(tmp_path):
    folder = tmp_path / "00000"
    (folder / "step-4").mkdir(parents=True)
    stopped = _trial(TrialState.FAIL, number=0, trial_dir=str(folder), fail_reason="budget")
    waiting = _trial(TrialState.WAITING, number=1, requeued_from=0, resume_checkpoint=str(folder / "step-4"))
    assert checkpoints_to_delete([stopped, waiting], 1, optuna.study.StudyDirection.MINIMIZE) == []
    resumed = _trial(TrialState.COMPLETE, number=1, requeued_from=0)
    resumed.values = [1.0]
    gone = checkpoints_to_delete([stopped, resumed], 1, optuna.study.StudyDirection.MINIMIZE)
    assert gone == [str(folder / "step-4")]


def test_the_summary_says_what_the_budget_bought():
    from hpo.runner import RunSummary

    s = RunSummary("demo", budget.NO_TARGET, finished_before=2, budget_s=5400.0, wall_s=5310.0)
    s.counts = {"COMPLETE": 5, "PRUNED": 4, "FAIL": 3, "RUNNING": 0, "WAITING": 2}
    s.best_value, s.best_trial, s.budget_stopped = 1.23456, 7, [11, 12]
    s.budget_note = "started no trial in the last 4m of the budget: ..."
    assert budget.run_lines(s) == [
        "time budget 1h30m: used 1h28m, 7 trial(s) finished in it; best so far 1.2346 (trial 7)",
        "budget: started no trial in the last 4m of the budget: ...",
        "budget: stopped trial(s) 11, 12 at the deadline (FAIL budget, checkpoints kept, re-queued); "
        "rerun to resume them",
    ]


# ---------------------------------------------------------------- CLI over spec, trials and budget


def test_the_cli_budget_overrides_the_specs_and_trials_combine(tmp_path):
    s = spec_mod.load(small_spec(tmp_path, budget={"hours": 1, "minutes": 30}))
    assert s.budget is not None and s.budget.seconds == 5400
    assert run_budget(None, s) == 5400
    assert run_budget("10m", s) == 600
    assert run_budget(None, spec_mod.load(small_spec(tmp_path))) is None
    assert run_target(None, None) == 20
    assert run_target(None, 600.0) == budget.NO_TARGET  # a budget alone ends the run
    assert run_target(5, 600.0) == 5  # whichever comes first


def test_a_spec_budget_needs_a_positive_amount(tmp_path):
    for bad, needle in (({}, "give hours or minutes"), ({"hours": -1}, "greater than 0")):
        with pytest.raises(spec_mod.SpecError, match=needle):
            spec_mod.load(small_spec(tmp_path, budget=bad))


# ---------------------------------------------------------------- the real stack


@pytest.mark.e2e
def test_a_budget_stops_trials_at_the_deadline_and_a_rerun_resumes_them(tmp_path, tiny_model):
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    # 2 trials at once of 2 epochs each, never pruned: a trial started before the last few seconds
    # (when the budget starts no more) is still training at the deadline
    spec = small_spec(  # each best written as it is found: a stopped trial resumes from it
        tmp_path,
        name="bud",
        rows=1200,
        space={"epochs": 2, "batch_size": 8},
        schedule="none",
        training={"save_best": "immediate"},
    )
    assert run_cli("study", "create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0

    def run(budget: str, target: int | None = None):
        t0 = time.time()
        extra = ["--trials", str(target)] if target else []
        r = run_cli("run", "--time-budget", budget, *extra, "--storage", url, cwd=tmp_path, timeout=300)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Traceback" not in out, out
        assert f"time budget {budget}: used" in out, out
        trials = optuna.load_study(study_name="bud", storage=url).get_trials()
        assert not [t for t in trials if t.state == TrialState.RUNNING], "no trial may be left RUNNING"
        return trials, out, time.time() - t0

    trials, out, took = run("25s")
    assert took < 25 + 60, f"the run took {took:.0f}s for a 25 s budget (Ray's start and stop included)"
    stopped = [t for t in trials if t.user_attrs.get("fail_reason") == "budget"]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped), [t.user_attrs for t in trials]
    assert "at the deadline" in out
    queued = {t.user_attrs["requeued_from"]: t for t in trials if t.state == TrialState.WAITING}
    assert sorted(queued) == sorted(t.number for t in stopped)
    for t in stopped:  # recorded as it stood; its checkpoint kept and handed to its re-queued trial
        assert queued[t.number].user_attrs["enqueued_params"] == t.params
        if t.user_attrs.get("checkpoint"):
            assert t.user_attrs["stopped_at_epoch"] > 0
            assert queued[t.number].user_attrs["resume_checkpoint"]

    # the next run takes the re-queued trials first, resuming from their checkpoints
    trials, _, _ = run("25s", target=len(trials) + 10)
    again = {t.user_attrs.get("requeued_from"): t for t in trials if t.state != TrialState.WAITING}
    for t in stopped:
        assert t.number in again and again[t.number].params == t.params
        if t.user_attrs.get("checkpoint"):
            assert again[t.number].user_attrs.get("resumed_from")


# ---------------------------------------------------------------- the bridge (real storage, no Ray run)


def _budget_bridge(tmp_path, deadline: float):
    from hpo import storage as storage_mod
    from hpo.searcher import OptunaBridge

    spec = spec_mod.load(small_spec(tmp_path))  # ASHA's first rung: 0.25 epoch
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage_mod.create(spec, url)
    study = storage_mod.load(spec.name, url, heartbeat=True)
    events: list = []
    make = lambda n, p, folder: {"params": p, "checkpoint_dir": folder}  # noqa: E731
    bridge = OptunaBridge(
        study, spec, 10, make, tmp_path / "trials", "run1", events.append, deadline=deadline
    )
    return bridge, study, events


def test_the_bridge_starts_no_trial_its_first_rung_would_not_fit(tmp_path):
    from hpo.bookkeeping import BUDGET_DONE
    from hpo.searcher import OptunaBridge

    bridge, study, _ = _budget_bridge(tmp_path, deadline=time.time() + 3600)
    try:
        assert bridge.suggest("ray0") is not None  # no pace yet: a trial starts
        # it trained 1 epoch in 400 s of work: 0.25 epoch takes 100 s (+ its start-up)
        result = {"eval_loss": 2.0, "epoch": 1.0, "best_eval_loss": 2.0, "trial_s": 400.0, BUDGET_DONE: True}
        bridge.on_trial_complete("ray0", result)
        assert bridge.suggest("ray1") is not None  # an hour left
        bridge.deadline = time.time() + 60  # a minute left: not enough for 0.25 epoch at this pace
        assert bridge.suggest("ray2") == OptunaBridge.FINISHED
        assert bridge.budget_note and "first evaluation at 0.25 epochs" in bridge.budget_note
        assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING]
    finally:
        bridge.close()


def test_at_the_deadline_live_trials_are_failed_as_budget_and_requeued(tmp_path):
    bridge, study, events = _budget_bridge(tmp_path, deadline=time.time() + 3600)
    try:
        config = bridge.suggest("ray0")
        ckpt = tmp_path / "trials" / "00000" / "step-0000005"
        ckpt.mkdir(parents=True)
        (tmp_path / "trials" / "00000" / "BEST").write_text("step-0000005")
        report = {
            "eval_loss": 3.0,
            "epoch": 0.25,
            "best_eval_loss": 3.0,
            "checkpoint": str(ckpt),
            "trial_s": 9.0,
        }
        bridge.on_trial_result("ray0", report)
        bridge.budget_over = True  # what the runner's stopper sets at the deadline
        assert bridge.suggest("ray1") == "FINISHED"
        bridge.abandon_live()  # Tune stopped the trial without telling the searcher
        stopped, queued = study.get_trials()
        assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "budget"
        assert stopped.user_attrs["stopped_at_epoch"] == 0.25 and stopped.user_attrs["checkpoint"] == str(
            ckpt
        )
        assert stopped.intermediate_values == {1: 3.0}
        assert queued.state == TrialState.WAITING and queued.user_attrs["requeued_from"] == 0
        assert queued.user_attrs["enqueued_params"] == stopped.params
        assert queued.user_attrs["resume_checkpoint"] == str(ckpt)  # the next run resumes from it
        assert bridge.budget_stopped == [0] and ckpt.is_dir()
        assert events[-1].kind == "interrupted" and "time budget" in events[-1].message
        assert config is not None
    finally:
        bridge.close()
