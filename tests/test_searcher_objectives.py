"""The bridge with several objectives and in confirm mode, driven by hand (no Ray run): the values
it tells, the intermediate values it writes, which queued trials each kind of run asks, and that
confirm runs are never re-queued."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from hpo import spec as spec_mod
from hpo import storage as storage_mod
from hpo.bookkeeping import BUDGET_DONE
from hpo.searcher import OptunaBridge
from tests.conftest import small_spec

TWO = [{"metric": "eval_loss"}, {"metric": "train_seconds"}]
CONFIRM = {"confirm": True, "confirm_of": 0, "confirm_seed": 11}
PARAMS = {"learning_rate": 1e-3, "batch_size": 8, "epochs": 1, "dropout": 0.1}


def _bridge(tmp_path: Path, target: int, confirm: bool = False, **overrides):
    spec = spec_mod.load(small_spec(tmp_path, **overrides))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage_mod.create(spec, url)
    study = storage_mod.load(spec.name, url, heartbeat=True)
    make = lambda n, p, folder: {"params": p, "checkpoint_dir": folder}  # noqa: E731
    return OptunaBridge(study, spec, target, make, tmp_path / "trials", "run1", confirm=confirm), study


def _end(loss: float, **more) -> dict:
    return {
        "eval_loss": loss,
        "epoch": 1.0,
        "best_objective": loss,
        "best_eval_loss": loss,
        BUDGET_DONE: True,
        **more,
    }


def test_two_objectives_tell_a_list_and_write_the_first_as_intermediate_values(tmp_path: Path):
    bridge, study = _bridge(tmp_path, target=3, objectives=TWO)
    try:
        for i in range(3):
            assert bridge.suggest(f"ray{i}") is not None
        bridge.on_trial_result("ray0", {"eval_loss": 3.0, "epoch": 0.25, "best_eval_loss": 3.0})
        bridge.on_trial_complete("ray0", _end(2.0, train_s=12.5))
        bridge.on_trial_complete("ray1", {"eval_loss": 4.0, "epoch": 0.25, "best_eval_loss": 4.0})  # ASHA
        bridge.on_trial_complete("ray2", _end(2.5))  # no train_s: an objective is missing
        t0, t1, t2 = study.get_trials()
        assert t0.state == TrialState.COMPLETE and t0.values == [2.0, 12.5]
        assert t0.intermediate_values == {1: 3.0, 4: 2.0}
        assert t1.state == TrialState.PRUNED and t1.values is None and t1.intermediate_values == {1: 4.0}
        assert t2.state == TrialState.FAIL and "reported no train_seconds" in t2.user_attrs["error_message"]
    finally:
        bridge.close()


def test_confirm_mode_runs_only_queued_confirm_runs_with_their_seed(tmp_path: Path):
    bridge, study = _bridge(tmp_path, target=2, confirm=True)
    try:
        storage_mod.enqueue(study, PARAMS, **CONFIRM)
        storage_mod.enqueue(study, PARAMS, **{**CONFIRM, "confirm_seed": 12})
        configs = [bridge.suggest("ray0"), bridge.suggest("ray1")]
        assert [c["params"]["seed"] for c in configs] == [11, 12]
        bridge._counts_cache = (0.0, 0, 0)
        assert bridge.suggest("ray2") is None  # the target is met by the running runs
        bridge.on_trial_complete("ray0", _end(2.0))
        bridge.on_trial_complete("ray1", _end(2.1))
        bridge._counts_cache = (0.0, 0, 0)
        assert bridge.suggest("ray3") == OptunaBridge.FINISHED
        assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    finally:
        bridge.close()


def test_confirm_mode_never_samples_and_never_requeues(tmp_path: Path):
    bridge, study = _bridge(tmp_path, target=5, confirm=True)
    try:
        storage_mod.enqueue(study, PARAMS, **CONFIRM)
        assert bridge.suggest("ray0") is not None
        assert bridge.suggest("ray1") == OptunaBridge.FINISHED  # nothing queued: no sample
        bridge.abandon_live()  # Ctrl-C
        (t,) = study.get_trials()
        assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"
    finally:
        bridge.close()


def test_a_search_run_closes_a_confirm_run_left_queued_and_asks_on(tmp_path: Path):
    bridge, study = _bridge(tmp_path, target=3)
    try:
        storage_mod.enqueue(study, PARAMS, **CONFIRM)
        config = bridge.suggest("ray0")
        left, asked = study.get_trials()
        assert left.state == TrialState.FAIL and left.user_attrs["fail_reason"] == "a confirm run left queued"
        assert asked.state == TrialState.RUNNING and config is not None and "seed" not in config["params"]
    finally:
        bridge.close()
