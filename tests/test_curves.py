"""Learning-curve tables (hpo/curves.py): round trip, a trial's curve from its stored
evaluations, and one-line refusals of what is not a table."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest

from hpo import curves
from hpo.bookkeeping import EVAL_TIME_PREFIX
from hpo.errors import UsageError
from tests.conftest import small_spec

ROOT = Path(__file__).resolve().parents[1]


def _trial(state, values: dict[int, float], times: dict[int, list], epoch: float, epochs: int = 1):
    return optuna.trial.create_trial(
        state=state,
        value=min(values.values()) if state == optuna.trial.TrialState.COMPLETE else None,
        params={"learning_rate": 1e-3, "epochs": epochs},
        distributions={
            "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "epochs": optuna.distributions.IntDistribution(1, 2),
        },
        intermediate_values=values,
        user_attrs={"epoch": epoch, **{f"{EVAL_TIME_PREFIX}{s}": t for s, t in times.items()}},
    )


def test_a_complete_trials_curve_has_its_epochs_values_and_segment_seconds():
    t = _trial(
        optuna.trial.TrialState.COMPLETE,
        {1: 3.0, 2: 2.5, 3: 2.4, 4: 2.3},
        {1: [10.0, 100], 2: [15.0, 200], 3: [21.0, 300], 4: [26.5, 400]},
        epoch=1.0,
    )
    c = curves.curve_of(t, 0.25)
    assert c is not None and c.complete
    assert c.epochs == [0.25, 0.5, 0.75, 1.0]
    assert c.values == [3.0, 2.5, 2.4, 2.3]
    assert c.seconds == [10.0, 5.0, 6.0, 5.5]  # per segment, not cumulative
    assert c.tokens == [100, 200, 300, 400]


def test_pruned_trials_and_trials_without_times_are_left_out_unless_asked():
    pruned = _trial(optuna.trial.TrialState.PRUNED, {1: 3.0}, {1: [10.0, 100]}, epoch=0.25, epochs=2)
    assert curves.curve_of(pruned, 0.25) is None
    c = curves.curve_of(pruned, 0.25, pruned=True)
    assert c is not None and not c.complete
    untimed = _trial(optuna.trial.TrialState.COMPLETE, {1: 3.0}, {}, epoch=0.25)
    assert curves.curve_of(untimed, 0.25) is None


def test_a_table_round_trips(tmp_path):
    rows = [curves.Curve(0, {"lr": 1.0}, [0.5, 1.0], [2.0, 1.5], [3.0, 3.0], [10, 20])]
    path = tmp_path / "t.jsonl"
    curves.write(path, {"direction": "minimize", "command": "x"}, rows)
    table = curves.read(path)
    assert table.curves == rows and table.header["command"] == "x" and table.best() == 1.5


@pytest.mark.parametrize(
    "text, says",
    [
        (None, "no such curve table"),
        ("{not json\n", "not a curve-table record"),
        ('{"kind": "header"}\n', "needs"),
    ],
)
def test_what_is_not_a_table_is_refused_in_one_line(tmp_path, text, says):
    path = tmp_path / "t.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=says) as e:
        curves.read(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_the_recorder_refuses_a_study_with_early_stopping(capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    assert record_curves.main(["--spec", str(ROOT / "studies/demo.yaml"), "--out", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "schedule must be none" in err and "demo.yaml" in err and not Path("x.jsonl").exists()


def test_a_recording_continues_on_a_machine_without_its_storage(tmp_path):
    """The table's curves go back into a new storage as COMPLETE trials and come out unchanged."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    from hpo import spec as hpo_spec

    rows = [
        curves.Curve(
            0,
            {"learning_rate": 1e-3, "batch_size": 8, "epochs": 1},
            [0.25, 0.5, 0.75, 1.0],
            [3.0, 2.5, 2.2, 2.1],
            [4.0, 4.1, 3.9, 4.2],
            [100, 200, 300, 400],
        ),
        curves.Curve(
            1,
            {"learning_rate": 5e-3, "batch_size": 16, "epochs": 2},
            [0.5, 1.0, 1.5, 2.0],
            [2.8, 2.0, 1.7, 1.75],
            [8.0, 8.1, 7.9, 8.2],
            [200, 400, 600, 800],
        ),
    ]
    s = hpo_spec.load(ROOT / "studies" / "curves-tiny.yaml")
    out = tmp_path / "table.jsonl"
    curves.write(
        out, {"study": s.name, "direction": "minimize", "eval_every": 0.25, "commits": ["abc"]}, rows
    )
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    args = ["--spec", str(ROOT / "studies" / "curves-tiny.yaml"), "--storage", url, "--out", str(out)]
    assert record_curves.main([*args, "--export-only"]) == 0
    table = curves.read(out)
    assert [(c.params, c.epochs, c.values, c.seconds, c.tokens) for c in table.curves] == [
        ({k: r.params[k] for k in c.params}, r.epochs, r.values, r.seconds, r.tokens)
        for c, r in zip(table.curves, rows, strict=True)
    ]
    assert table.header["commits"][0] == "abc"
    from hpo import storage

    trials = storage.load(s.name, url).trials  # what a run's sampler offsets its seed by
    assert len(trials) == 2 and all(t.user_attrs["restored_from"] == "table.jsonl" for t in trials)


@pytest.mark.parametrize("other", ["name", "bf16"])
def test_a_table_from_another_cpu_is_not_extended_here(tmp_path, capsys, other):
    """Seconds recorded on one CPU kind do not compare with another's (another model name, or the
    same name with other bf16 units: an AVX2-only EPYC trains in fp32, a Zen 4 EPYC in bf16):
    refused in one line, and no storage is made."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    here = record_curves.machine()
    recorded = (
        {"cpu": "Another CPU"}
        if other == "name"
        else {"cpu": here["cpu"], "bf16": [] if here["bf16"] else ["amx_bf16"]}
    )
    args, db = _table_recorded_on(tmp_path, recorded)
    assert record_curves.main(args) == 2
    err = capsys.readouterr().err
    assert recorded["cpu"] in err and "--calibrate 4" in err and "--any-machine" in err
    assert len(err.strip().splitlines()) == 1
    assert not db.exists()


def _table_recorded_on(tmp_path: Path, machine: dict) -> tuple[list[str], Path]:
    """A one-row curves-tiny table whose header names ``machine``; the recorder's arguments for it
    with a storage not made yet, and that storage's file."""
    out, db = tmp_path / "table.jsonl", tmp_path / "fresh.db"
    row = curves.Curve(0, {"learning_rate": 1e-3}, [1.0], [2.0], [4.0], [100])
    curves.write(out, {"study": "curves-tiny", "direction": "minimize", "machine": machine}, [row])
    spec_path = str(ROOT / "studies" / "curves-tiny.yaml")
    return ["--spec", spec_path, "--storage", f"sqlite:///{db}", "--out", str(out)], db


def _row(number: int, lr: float, seconds: list[float], values: list[float]) -> curves.Curve:
    return curves.Curve(number, {"learning_rate": lr, "batch_size": 8}, [0.5, 1.0], values, seconds, [10, 20])


def test_calibration_puts_another_machines_seconds_in_the_tables_time_base():
    """The factor is the median of seconds-here / seconds-in-the-table over the configurations
    trained again; the value gap the largest relative difference of their final values."""
    rows = [_row(0, 1e-3, [4.0, 4.0], [3.0, 2.0]), _row(1, 3e-3, [8.0, 8.0], [2.5, 1.0])]
    again = [_row(0, 1e-3, [8.0, 8.0], [3.0, 2.02]), _row(1, 3e-3, [24.0, 24.0], [2.5, 1.0])]
    cal = curves.calibrate(rows, again)
    assert cal.rows == [0, 1] and cal.factor == 2.5 and cal.value_gap == pytest.approx(0.01)
    here = _row(7, 2e-3, [5.0, 10.0], [2.0, 1.5])
    assert cal.to_table_seconds(here).seconds == [2.0, 4.0]
    assert cal.to_table_seconds(here).values == here.values
    with pytest.raises(ValueError, match="row 1 and its run again differ"):
        curves.calibrate(rows, [again[0], _row(1, 9e-3, [1.0, 1.0], [1.0, 1.0])])
    with pytest.raises(ValueError, match="2 table rows but 1"):
        curves.calibrate(rows, again[:1])


def test_a_calibrated_recording_scales_only_the_trials_recorded_here(tmp_path):
    """The table keeps its first machine's time base: restored curves keep their seconds, a trial
    recorded here has its seconds divided by the calibration's factor, and the header names the
    first machine and lists the calibration; a storage that lacks some of the table's curves is
    refused (writing the table from it would drop them)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import curves_again
    import record_curves

    from hpo import space, storage
    from hpo import spec as hpo_spec
    from hpo.study import create_study

    spec_path = ROOT / "studies" / "curves-tiny.yaml"
    s = hpo_spec.load(spec_path)
    out = tmp_path / "table.jsonl"
    elsewhere = {"cpu": "Another CPU", "bf16": []}
    header = {"study": s.name, "direction": "minimize", "eval_every": 0.5, "machine": elsewhere}
    curves.write(out, header, [_row(0, 1e-3, [4.0, 4.0], [3.0, 2.0]), _row(1, 3e-3, [8.0, 8.0], [2.5, 1.0])])
    table = curves.read(out)
    url = f"sqlite:///{tmp_path / 'here.db'}"
    create_study(spec_path, storage=url)
    assert curves_again.restore(s, url, table, out.name) == 2
    params = {"learning_rate": 2e-3, "batch_size": 8}
    storage.load(s.name, url).add_trial(  # a trial recorded on this machine: 6 s, then 12 s
        optuna.trial.create_trial(
            params=params,
            distributions={k: d for k, d in space.distributions(s.space).items() if k in params},
            value=1.5,
            intermediate_values={1: 2.0, 2: 1.5},
            user_attrs={"epoch": 1.0, f"{EVAL_TIME_PREFIX}1": [6.0, 10], f"{EVAL_TIME_PREFIX}2": [18.0, 20]},
        )
    )
    cal = curves.Calibration([0], 2.0, 0.001)
    assert record_curves.write_table(s, url, str(out), ["abc"], table, cal) == 3
    again = curves.read(out)
    assert [c.seconds for c in again.curves] == [[4.0, 4.0], [8.0, 8.0], [3.0, 6.0]]
    assert again.header["machine"] == elsewhere
    entry = {"machine": record_curves.machine(), "rows": [0], "factor": 2.0, "value_gap": 0.001}
    assert again.header["calibrations"] == [{**entry, "recorded": [2, 2]}]
    record_curves.write_table(s, url, str(out), ["abc"], again, cal)  # a later chunk: the entry, updated
    assert curves.read(out).header["calibrations"] == [{**entry, "recorded": [2, 2]}]

    extra = _row(9, 5e-3, [1.0, 1.0], [2.0, 1.9])  # a curve recorded elsewhere since
    curves.write(out, again.header, [*again.curves, extra])
    args = ["--spec", str(spec_path), "--storage", url, "--out", str(out), "--export-only"]
    assert record_curves.main(args) == 2
    assert len(curves.read(out).curves) == 4  # not rewritten


@pytest.mark.slow
@pytest.mark.e2e
def test_a_table_from_another_machine_kind_is_extended_after_calibration(tmp_path, tiny_model, capsys):
    """The real stack: a table recorded "elsewhere" (two configurations), then --calibrate 1 here
    trains its first configuration again in a study of its own (same seed: the same values on the
    same machine), measures the factor, and the recording goes on to three curves."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    spec_path = small_spec(
        tmp_path, name="cal", rows=60, schedule="none", sampler="random", training={"eval_every": 0.5}
    )
    out, url = tmp_path / "table.jsonl", f"sqlite:///{tmp_path / 'first.db'}"
    base = ["--spec", str(spec_path), "--out", str(out), "--chunk", "2"]
    assert record_curves.main([*base, "--storage", url, "--configs", "2"]) == 0
    first = curves.read(out)
    first.header["machine"] = {"cpu": "Another CPU", "bf16": []}
    curves.write(out, first.header, first.curves)

    url = f"sqlite:///{tmp_path / 'here.db'}"  # this machine has no storage yet: restored from the table
    assert record_curves.main([*base, "--storage", url, "--configs", "3", "--calibrate", "1"]) == 0
    table = curves.read(out)
    assert len(table.curves) == 3 and table.curves[:2] == first.curves
    (cal,) = table.header["calibrations"]
    assert cal["rows"] == [0] and cal["factor"] > 0 and cal["value_gap"] <= 0.01 and cal["recorded"] == [2, 2]
    # the table again from this storage alone: the curve recorded here keeps its calibrated seconds
    assert record_curves.main([*base, "--storage", url, "--export-only"]) == 0
    assert curves.read(out).curves == table.curves
    assert table.header["machine"] == {"cpu": "Another CPU", "bf16": []}
    assert "calibration on 1 of the table's configurations" in capsys.readouterr().out


def test_a_restored_table_keeps_its_trial_numbers_across_a_failed_trial(tmp_path):
    """A table whose first machine had a trial fail (no curve numbered 1): restoring it puts a FAIL
    trial there, so the storage's numbers are the table's and the next trial is number 3."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import curves_again
    import record_curves

    from hpo import spec as hpo_spec
    from hpo import storage
    from hpo.study import create_study

    spec_path = ROOT / "studies" / "curves-tiny.yaml"
    s = hpo_spec.load(spec_path)
    header = {"study": s.name, "direction": "minimize", "eval_every": 0.5}
    table = curves.Table(
        header, [_row(0, 1e-3, [4.0, 4.0], [3.0, 2.0]), _row(2, 3e-3, [8.0, 8.0], [2.5, 1.0])]
    )
    url = f"sqlite:///{tmp_path / 'here.db'}"
    create_study(spec_path, storage=url)
    assert curves_again.restore(s, url, table, "table.jsonl") == 2
    trials = storage.load(s.name, url).trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert trials[2].params["learning_rate"] == 3e-3
    assert record_curves._missing_from_storage(table, s.name, url) == []


def test_the_calibration_rows_are_spread_over_the_table():
    """A table's seconds drift with the load of the machine that recorded it: the rows trained
    again span it, first and last included."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import curves_again

    rows = [_row(n, 1e-3 + n * 1e-5, [1.0, 1.0], [2.0, 1.0]) for n in (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)]
    assert [r.number for r in curves_again.spread(rows, 4)] == [0, 4, 7, 10]
    assert [r.number for r in curves_again.spread(rows, 1)] == [0]
    assert len(curves_again.spread(rows, 20)) == 10


def test_rows_to_rerecord_are_named_as_ranges_and_checked_against_the_table():
    sys.path.insert(0, str(ROOT / "scripts"))
    import curves_again

    table = curves.Table({}, [_row(n, 1e-3, [1.0, 1.0], [2.0, 1.0]) for n in (0, 1, 2, 4, 5)])
    pick = curves_again.parse_rows
    assert [c.number for c in pick("0-2", table)] == [0, 1, 2]
    assert [c.number for c in pick("5, 0-1,1", table)] == [0, 1, 5]
    assert [c.number for c in pick("all", table)] == [0, 1, 2, 4, 5]
    with pytest.raises(UsageError, match="no curve numbered 3"):
        pick("2-4", table)
    with pytest.raises(UsageError, match="0-11, 3,5,7-9 or all"):
        pick("first", table)


def test_rerecorded_rows_replace_the_tables_own_and_stay_replaced(tmp_path):
    """Rows trained again here (the ``<study>-rerecord`` study, each trial tagged with its row)
    replace the restored rows in every table written from that storage; the header lists the
    rerecording once, however often the table is written; such a row counts as the table's own
    machine's again (a later calibration may pick it)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import curves_again
    import record_curves

    from hpo import space, storage
    from hpo import spec as hpo_spec
    from hpo.study import create_study

    spec_path = ROOT / "studies" / "curves-tiny.yaml"
    s = hpo_spec.load(spec_path)
    out = tmp_path / "table.jsonl"
    elsewhere = {"cpu": "Another CPU", "bf16": []}
    header = {
        "study": s.name,
        "direction": "minimize",
        "eval_every": 0.5,
        "calibrations": [
            {"machine": elsewhere, "rows": [0], "factor": 2.0, "value_gap": 0.0, "recorded": [0, 1]}
        ],
    }
    rows = [_row(0, 1e-3, [40.0, 40.0], [3.0, 2.0]), _row(1, 3e-3, [80.0, 80.0], [2.5, 1.0])]
    curves.write(out, header, rows)
    table = curves.read(out)
    url = f"sqlite:///{tmp_path / 'here.db'}"
    create_study(spec_path, storage=url)
    assert curves_again.restore(s, url, table, out.name) == 2
    create_study(spec_path, name=f"{s.name}-rerecord", storage=url)
    params = {"learning_rate": 3e-3, "batch_size": 8}
    storage.load(f"{s.name}-rerecord", url).add_trial(  # row 1 trained again here: 6 s, then 12 s
        optuna.trial.create_trial(
            params=params,
            distributions={k: d for k, d in space.distributions(s.space).items() if k in params},
            value=1.01,
            intermediate_values={1: 2.5, 2: 1.01},
            user_attrs={
                "rerecords": 1,
                "epoch": 1.0,
                f"{EVAL_TIME_PREFIX}1": [6.0, 10],
                f"{EVAL_TIME_PREFIX}2": [18.0, 20],
            },
        )
    )
    assert curves_again.queued(s, url, "rerecord") == {1}
    entry = {
        "machine": record_curves.machine(),
        "rows": [1],
        "factor": 0.1125,
        "value_gap": 0.01,
        "date": "x",
    }
    assert record_curves.write_table(s, url, str(out), ["abc"], table, None, entry) == 2
    again = curves.read(out)
    assert [c.seconds for c in again.curves] == [[40.0, 40.0], [6.0, 12.0]]
    assert [c.number for c in again.curves] == [0, 1] and again.curves[1].values == [2.5, 1.01]
    assert again.header["rerecorded"] == [entry]
    record_curves.write_table(s, url, str(out), ["abc"], again, None, entry)  # a later chunk
    record_curves.write_table(s, url, str(out), ["abc"], curves.read(out))  # a later command, no --rerecord
    final = curves.read(out)
    assert final.header["rerecorded"] == [entry] and final.curves == again.curves
    assert record_curves._recorded_elsewhere(final, 0) and not record_curves._recorded_elsewhere(final, 1)


def test_rerecording_is_refused_for_a_table_of_another_cpu(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    args, db = _table_recorded_on(tmp_path, {"cpu": "Another CPU"})
    assert record_curves.main([*args, "--rerecord", "0", "--any-machine"]) == 2
    err = capsys.readouterr().err
    assert "Another CPU" in err and "rerecord on that CPU kind" in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_row_is_trained_again_and_replaced_through_the_real_stack(tmp_path, tiny_model, capsys):
    """Two configurations recorded, then ``--rerecord 0``: its configuration trains again in a study
    of its own (same seed, same machine: the same values), and its curve in the table is the new
    one, seconds and all; the header says so; a third configuration is recorded after it."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import record_curves

    spec_path = small_spec(
        tmp_path, name="rr", rows=60, schedule="none", sampler="random", training={"eval_every": 0.5}
    )
    out, url = tmp_path / "table.jsonl", f"sqlite:///{tmp_path / 'rr.db'}"
    base = ["--spec", str(spec_path), "--out", str(out), "--chunk", "2", "--storage", url]
    assert record_curves.main([*base, "--configs", "2"]) == 0
    first = curves.read(out)
    assert record_curves.main([*base, "--configs", "3", "--rerecord", "0"]) == 0
    table = curves.read(out)
    assert len(table.curves) == 3 and table.curves[1] == first.curves[1]
    redone, was = table.curves[0], first.curves[0]
    assert redone.params == was.params and redone.seconds != was.seconds
    assert redone.values[-1] == pytest.approx(was.values[-1], rel=0.01)
    (entry,) = table.header["rerecorded"]
    assert entry["rows"] == [0] and entry["value_gap"] <= 0.01 and entry["factor"] > 0
    assert "rerecorded 1 rows of" in capsys.readouterr().out
