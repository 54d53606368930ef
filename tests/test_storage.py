"""The study storage over every backend (SQLite and the local PostgreSQL, one fixture): create,
load, list, delete, refusals, password masking, and reading while another connection writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from hpo import spec as spec_mod
from hpo import storage, storageurl
from hpo.errors import StorageError, UsageError
from tests.conftest import small_spec

REPORT = {"train": {"read": 3, "empty": 0, "duplicate": 1, "kept": 2}, "pairs": True}


@pytest.fixture
def spec(tmp_path):
    return spec_mod.load(small_spec(tmp_path))


def test_create_load_list_delete(storage_url, spec):
    created = storage.create(spec, storage_url, data_report=REPORT)
    assert created.study_name == "small"
    other = spec.model_copy(update={"name": "other"})
    storage.create(other, storage_url)
    st = storage.open_storage(storage_url)
    assert sorted(storage.study_names(st)) == ["other", "small"]

    loaded = storage.load("small", storage_url)
    assert storage.spec_of(loaded) == spec  # the spec round-trips through the storage
    assert storage.data_report(loaded) == REPORT
    assert storage.data_report(storage.load("other", storage_url)) is None
    assert loaded.direction == optuna.study.StudyDirection.MINIMIZE

    storage.delete("other", storage_url)
    assert storage.study_names(storage.open_storage(storage_url)) == ["small"]
    assert storage.load(None, storage_url).study_name == "small"  # the only study needs no name


def test_duplicate_name_refused_and_nothing_added(storage_url, spec):
    storage.create(spec, storage_url)
    with pytest.raises(UsageError, match=r"study 'small' already exists in .*--name.*hpo study delete small"):
        storage.create(spec, storage_url, data_report=REPORT)
    st = storage.open_storage(storage_url)
    assert storage.study_names(st) == ["small"]
    assert storage.data_report(storage.load("small", storage_url)) is None  # the first one is untouched


def test_load_refusals_list_what_is_there(storage_url, spec):
    storage.create(spec, storage_url)
    with pytest.raises(UsageError, match=r"no study 'nope' in .*\(studies there: small\)"):
        storage.load("nope", storage_url)
    with pytest.raises(UsageError, match="no study 'nope'"):
        storage.delete("nope", storage_url)
    storage.create(spec.model_copy(update={"name": "b"}), storage_url)
    with pytest.raises(UsageError, match=r"holds 2 studies \(.*\); name one with --study"):
        storage.load(None, storage_url)


def test_empty_storage_has_no_study(storage_url, spec):
    storage.create(spec, storage_url)
    storage.delete("small", storage_url)
    with pytest.raises(UsageError, match="no study in .*hpo study create"):
        storage.load(None, storage_url)


def test_a_failed_create_leaves_no_study(storage_url, spec, monkeypatch):
    def broken(self, key, value):
        raise RuntimeError("disk full")

    monkeypatch.setattr(optuna.Study, "set_user_attr", broken)
    with pytest.raises(RuntimeError):
        storage.create(spec, storage_url)
    monkeypatch.undo()
    if storage_url.startswith("sqlite"):
        assert not storage.exists(storage_url)  # the file it made is gone too
    else:
        assert storage.study_names(storage.open_storage(storage_url)) == []


def test_study_not_made_by_hpo(storage_url, spec):
    storage.create(spec, storage_url)  # makes the SQLite file
    optuna.create_study(study_name="foreign", storage=storage_url)
    with pytest.raises(UsageError, match="was not created by hpo"):
        storage.spec_of(storage.load("foreign", storage_url))


# ---------------------------------------------------------------- SQLite files


def test_reading_commands_never_create_a_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    for call in (
        lambda: storage.load(None, url),
        lambda: storage.open_storage(url),
        lambda: storage.delete("x", url),
    ):
        with pytest.raises(UsageError, match=r"no study storage at .*none\.db.*hpo study create"):
            call()
    assert not storage.exists(url) and list(tmp_path.iterdir()) == []


def test_sqlite_in_a_missing_folder_and_relative_paths(tmp_path, monkeypatch, spec):
    with pytest.raises(UsageError, match="folder .*missing does not exist"):
        storage.create(spec, f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    storage.create(spec, None)  # the default: sqlite:///hpo.db in the current folder
    assert (tmp_path / "hpo.db").is_file()
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{tmp_path / 'env.db'}")
    assert (
        storage.resolve_url(None).endswith("env.db")
        and storage.resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    )


def test_sqlite_is_in_wal_mode(tmp_path, spec):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    storage.create(spec, url)
    import sqlite3

    with sqlite3.connect(tmp_path / "w.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


WRITER = textwrap.dedent(
    """
    import sys, time, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from hpo import storage, storageurl
    study = storage.load("small", sys.argv[1])
    print("ready", flush=True)
    end = time.time() + float(sys.argv[2])
    n = 0
    while time.time() < end:
        t = study.ask()
        for step in range(3):
            t.report(1.0 / (step + 1), step)
        t.set_user_attr("checkpoint", "/x" * 50)
        study.tell(t, 0.5)
        n += 1
    print(n, flush=True)
    """
)


def test_reader_reads_while_another_connection_writes_sqlite(tmp_path, spec):
    url = f"sqlite:///{tmp_path / 'rw.db'}"
    storage.create(spec, url)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        seen, reads, end = [], 0, time.time() + 2.0
        while time.time() < end:  # what `hpo study show` (hpo's load) and the dashboard (Optuna's) do
            if reads % 2:
                study = optuna.load_study(study_name="small", storage=url)
            else:
                study = storage.load("small", url)
            seen.append(len(study.get_trials(deepcopy=False)))
            reads += 1
        out, err = writer.communicate(timeout=60)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert "locked" not in err
    written = int(out.strip())
    assert reads >= 5 and written >= 5
    assert seen == sorted(seen) and seen[-1] > seen[0]  # the reader saw the writes as they came
    assert len(optuna.load_study(study_name="small", storage=url).trials) == written


# ---------------------------------------------------------------- URLs and masking


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@127.0.0.1:5432/db", "postgresql://user:***@127.0.0.1:5432/db"),
        ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql://u:s@cr/et@h/db", "postgresql://u:***@h/db"),  # an unescaped @ or / in it
        ("postgresql://:secret@h/db", "postgresql://:***@h/db"),
        (
            "postgresql://u@h/db?sslmode=require&password=secret",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///hpo.db", "sqlite:///hpo.db"),
        ("sqlite:////tmp/a:b@c.db", "sqlite:////tmp/a:b@c.db"),  # a path, not a password
    ],
)
def test_mask(url, masked):
    assert storage.mask(url) == masked


@pytest.mark.parametrize(
    ("url", "error", "needle"),
    [
        ("postgresql://user:secret@127.0.0.1:1/db", StorageError, "opening failed"),
        ("postgresql://user:secret@127.0.0.1:notaport/db", UsageError, "malformed URL"),
        ("postgresql://user:sec@ret@127.0.0.1:1/db", UsageError, "percent-encode"),
        ("postgresql://user@127.0.0.1:1/db?password=secret", StorageError, "opening failed"),
        ("nosuchdb://user:secret@h/db", UsageError, "unknown database kind 'nosuchdb'"),
        ("mysql://user:secret@127.0.0.1:1/db", UsageError, "driver for mysql is not installed"),
        ("hpo.db", UsageError, "is not a database URL"),
    ],
)
def test_errors_never_print_the_password(tmp_path, spec, url, error, needle):
    with pytest.raises(error) as e:
        storage.create(spec, url)
    text = str(e.value)
    assert needle in text and "secret" not in text and "\n" not in text
    assert "--storage" in text or "percent-encode" in text or "driver" in text
    assert list(tmp_path.iterdir()) == [tmp_path / "data.jsonl", tmp_path / "small.yaml"]


def test_scrub_removes_a_password_a_driver_echoes():
    url = "postgresql://u:hunter2@h/db"
    assert storageurl.scrub(f"cannot connect to {url} (password hunter2 rejected)", url) == (
        "cannot connect to postgresql://u:***@h/db (password *** rejected)"
    )


def test_exit_codes_bad_url_is_input_unreachable_is_runtime():
    assert UsageError("x").exit_code == 2 and StorageError("x").exit_code == 1


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_show_and_list_count_states_and_find_the_best(storage_url, spec, direction):
    """``study show`` / ``study list``: ties go to the lower number, infinities are never best,
    other studies in the storage do not count."""
    from optuna.trial import TrialState, create_trial

    from hpo.study import list_studies, show_study

    metric = "eval_loss" if direction == "minimize" else "token_accuracy"
    spec = spec.model_copy(update={"objective": spec_mod.ObjectiveSpec(metric=metric, direction=direction)})
    storage.create(spec.model_copy(update={"name": "other"}), storage_url)
    storage.load("other", storage_url).add_trial(
        create_trial(state=TrialState.COMPLETE, value=-100.0 if direction == "minimize" else 1e2)
    )
    storage.create(spec, storage_url)
    study = storage.load("small", storage_url)
    assert show_study("small", storage_url)["best"] is None
    inf = float("-inf") if direction == "minimize" else float("inf")
    for state, value in [
        (TrialState.PRUNED, None),
        (TrialState.FAIL, None),
        (TrialState.COMPLETE, inf),  # never the best: hpo exports a finite loss only
        (TrialState.COMPLETE, 2.5),
        (TrialState.COMPLETE, 1.5),
        (TrialState.COMPLETE, 3.5),
        (TrialState.COMPLETE, 1.5 if direction == "minimize" else 3.5),  # a tie: the earlier one wins
        (TrialState.PRUNED, None),
    ]:
        study.add_trial(create_trial(state=state, value=value))
    study.ask()  # one RUNNING
    shown = show_study("small", storage_url)
    counts = {"COMPLETE": 5, "PRUNED": 2, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    assert shown["counts"] == counts
    assert shown["best"]["trial"] == (4 if direction == "minimize" else 5)
    listed = {row["study"]: row for row in list_studies(storage_url)}
    assert listed["small"]["counts"] == counts and listed["small"]["trials"] == 9
    assert listed["small"]["best_value"] == (1.5 if direction == "minimize" else 3.5)
    assert listed["other"]["trials"] == 1


def test_studies_opened_elsewhere_have_no_hpo_backend():
    with pytest.raises(UsageError, match="was not opened with hpo.storage.load"):
        storage.backend(optuna.create_study())
