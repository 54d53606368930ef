"""hpo/rayworker.py, the script a local Ray starts its Python workers with instead of Ray's
setup_worker.py: the same worker, command line and environment, without importing Ray first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hpo import rayworker

RAY_SETUP = "/ray/_private/workers/setup_worker.py"


def _argv(context: dict | None, language: str = "PYTHON") -> list[str]:
    out = [
        "/ray/default_worker.py",
        "--node-ip-address=127.0.0.1",
        "--temp-dir=/tmp/x",
        f"--language={language}",
    ]
    if context is not None:
        out.append(f"--serialized-runtime-env-context={json.dumps(context)}")
    return out


def test_a_context_that_only_sets_variables_execs_the_worker_directly():
    context = {
        "command_prefix": [],
        "env_vars": {"PL_DISABLE_FORK": "1"},
        "py_executable": "/venv/bin/python",
    }
    program, args, env = rayworker.plan(_argv(context), RAY_SETUP)
    assert program == "/venv/bin/python"
    assert args == [
        "/venv/bin/python",
        "/ray/default_worker.py",
        "--node-ip-address=127.0.0.1",
        "--temp-dir=/tmp/x",
    ]
    assert env == {"PL_DISABLE_FORK": "1"}
    # Ray's separate-value spelling, and no context at all
    argv = ["/ray/default_worker.py", "--language", "PYTHON", "--serialized-runtime-env-context", "{}"]
    assert rayworker.plan(argv, RAY_SETUP) == (sys.executable, [sys.executable, "/ray/default_worker.py"], {})
    assert rayworker.plan(_argv(None), RAY_SETUP)[1][1:] == _argv(None)[:3]


@pytest.mark.parametrize(
    "argv",
    [
        _argv({"command_prefix": ["conda", "run"], "env_vars": {}}),  # a conda or container prefix
        _argv({"override_worker_entrypoint": "/other.py"}),
        _argv({"java_jars": ["a.jar"]}),
        _argv({"env_vars": {}, "something_new": 1}),  # a context from a newer Ray
        _argv({"env_vars": ["not", "a", "dict"]}),
        _argv({}, language="JAVA"),
        ["/ray/default_worker.py", "--serialized-runtime-env-context={not json", "--language=PYTHON"],
        ["/ray/default_worker.py", "--language"],
        ["--language=PYTHON"],
    ],
)
def test_anything_else_goes_to_rays_own_setup_worker_unchanged(argv):
    assert rayworker.plan(argv, RAY_SETUP) == (sys.executable, [sys.executable, RAY_SETUP, *argv], {})


def test_variables_are_set_as_rays_update_envs_sets_them(monkeypatch):
    from ray._private.utils import update_envs

    env_vars = {"A": "x${HOME}y", "B": "${A}-${NOT_SET_ANYWHERE}", "C": "$HOME/plain"}
    monkeypatch.setenv("HOME", "/home/u")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    results = []
    for setter in (update_envs, rayworker.set_env):
        for k in env_vars:
            monkeypatch.delenv(k, raising=False)
        setter(env_vars)
        results.append({k: os.environ[k] for k in env_vars})
    assert results[0] == results[1] == {"A": "x/home/uy", "B": "x/home/uy-", "C": "/home/u/plain"}


def test_the_script_execs_the_worker_with_its_arguments_and_variables(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import json, os, sys\nprint(json.dumps([sys.argv[1:], os.environ.get('HPO_T')]))\n")
    context = {"env_vars": {"HPO_T": "set"}, "py_executable": sys.executable}
    argv = [
        str(worker),
        "--a=1",
        "--language=PYTHON",
        f"--serialized-runtime-env-context={json.dumps(context)}",
    ]
    r = subprocess.run(
        [sys.executable, rayworker.__file__, *argv], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [["--a=1"], "set"]
    assert os.path.isfile(rayworker.ray_setup_worker())  # where anything unusual goes
