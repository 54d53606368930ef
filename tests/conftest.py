"""Shared fixtures: the tiny base model, small studies, and one storage fixture over SQLite and
PostgreSQL (a fresh database per test on the server at ``$HPO_TEST_PG``, default 127.0.0.1:5432;
when none answers there, on a throwaway server started for the session (tests/pgserver.py); when
none can start, the PostgreSQL tests skip with one line saying how to enable them).

Markers are set here where they follow from a test's fixtures: every test on PostgreSQL is
``postgres`` (``-m "not postgres"`` leaves them out)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "studies" / "data" / "support.jsonl"
PG_ADMIN = os.environ.get("HPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Ray must never bind or contact anything but loopback in tests
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The offline tiny GPT-2 (built once per machine into the hpo cache)."""
    from hpo import basemodel

    return str(basemodel.tiny_gpt2())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    """A small study's prepared data (240 support rows: 214 training blocks) for calling the trial
    loop directly, once per test module."""
    from hpo import data
    from hpo import spec as spec_mod

    tmp = tmp_path_factory.mktemp("prepared")
    spec = spec_mod.load(small_spec(tmp, rows=240))
    return data.prepare(spec.data, tiny_model, 0, tmp / "cache")


def write_rows(path: Path, n: int, start: int = 0) -> Path:
    """The first ``n`` rows of the shipped support data (from ``start``) as a JSONL file."""
    lines = SUPPORT.read_text(encoding="utf-8").splitlines()[start : start + n]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_spec(tmp_path: Path, name: str = "small", rows: int = 400, **overrides) -> Path:
    """A study file for a fast real run: 400 support rows, 128-token blocks, ASHA from 0.25 epoch."""
    data = write_rows(tmp_path / "data.jsonl", rows)
    spec = {
        "name": name,
        "model": "hpo:tiny-gpt2",
        "data": {"path": data.name, "format": "jsonl", "validation_fraction": 0.1, "block_size": 128},
        "space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [8, 16]},
            "epochs": {"type": "int", "low": 1, "high": 2},
            "dropout": {"type": "float", "low": 0.0, "high": 0.2},
            "weight_decay": 0.01,
        },
        "schedule": {"type": "asha", "grace_period": 0.25, "reduction_factor": 2},
        "training": {"eval_every": 0.25},
        "resources": {"cpus_per_trial": 1, "concurrency": 2},
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_config(prepared, model: str, folder: Path, params: dict, **settings) -> dict:
    """A ``trial.run`` config for calling the trial loop directly on the tiny model (no Ray):
    evaluations every 0.5 epoch, 1 CPU, no GPU, unless ``settings`` say otherwise."""
    return {
        "params": dict(params),
        "model_path": model,
        "data_path": prepared.path,
        "checkpoint_dir": str(folder),
        "trial_number": 0,
        "seed": 0,
        "eval_every": 0.5,
        "warmup_ratio": 0.1,
        "max_micro_batch": 32,
        "max_grad_norm": 1.0,
        "cpus": 1,
        "gpus": 0,
        **settings,
    }


def validation_loss(model, prepared, precision: str) -> float:
    """``model``'s eval loss on ``prepared``'s validation blocks, computed as a trial evaluates in
    ``precision`` (bf16 autocast or fp32), so it can be compared with what a trial reported."""
    import torch

    from hpo import trial, trialsetup

    arrays = prepared.arrays()
    ids, labels, pos = (torch.from_numpy(arrays[k].copy()) for k in ("val_ids", "val_labels", "val_pos"))
    autocast = trialsetup.autocast(torch.device("cpu"), precision)
    return trial.evaluate(model, ids, labels, pos=pos, autocast=autocast)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    return small_spec(tmp_path)


def _pg_available(url: str) -> bool:
    try:
        import sqlalchemy

        eng = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def pg_admin():
    """An admin URL of a PostgreSQL server for the session: ``$HPO_TEST_PG`` when it answers,
    else a throwaway server (stopped and deleted at the end); the tests skip when neither."""
    from tests import pgserver

    if os.environ.get("HPO_SKIP_POSTGRES"):
        pytest.skip("PostgreSQL tests skipped: HPO_SKIP_POSTGRES is set")
    if _pg_available(PG_ADMIN):
        yield PG_ADMIN
        return
    server, why = pgserver.start()
    if server is None:
        pytest.skip(f"PostgreSQL tests skipped: nothing answers at {PG_ADMIN} and {why}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_admin):
    """A fresh PostgreSQL database, dropped afterwards."""
    import sqlalchemy

    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = pg_admin.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pytest_collection_modifyitems(config, items):
    """Mark every test that runs on PostgreSQL ``postgres``."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "pg_url" in getattr(item, "fixturenames", ()) or params.get("storage_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path: Path) -> str:
    """One fixture running a test over every storage backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hpo.db'}"
    return request.getfixturevalue("pg_url")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900):
    """Run the real ``hpo`` command in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_json(text: str):
    return json.loads(text)
