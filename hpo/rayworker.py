"""What a local Ray runs to start each of its Python worker processes, in place of Ray's own
``setup_worker.py``.

Ray's raylet starts every worker as ``python setup_worker.py default_worker.py ARGS
--language=PYTHON --serialized-runtime-env-context=JSON``. Ray's script imports all of Ray (its
runtime-env classes live there; ~0.7 s of CPU on 2 cores) only to set the context's environment
variables and exec ``bash -c "exec python default_worker.py ARGS"``, which imports Ray again. For a
context that only sets variables, which is all a local hpo run's trials have, this script does the
same with the standard library alone and execs the worker directly. Any other context (a command
prefix such as a container or conda, another entry point, Java jars, another language) goes to
Ray's own script unchanged.

Run as a script by path (``hpo.localray`` puts it in the raylet's worker command): it imports
nothing from hpo.
"""

from __future__ import annotations

import json
import os
import re
import sys

CONTEXT = "--serialized-runtime-env-context"
LANGUAGE = "--language"
_UNSET = re.compile(r"\$\{[A-Z0-9_]+\}")
_KNOWN = {"command_prefix", "env_vars", "py_executable", "override_worker_entrypoint", "java_jars"}


def plan(argv: list[str], ray_setup: str) -> tuple[str, list[str], dict[str, str]]:
    """(program, its argv, the variables to set) that start the worker ``argv`` describes.

    Args:
        argv: this script's arguments (``sys.argv[1:]``): the worker's command line with Ray's
            ``--language`` and ``--serialized-runtime-env-context`` among them.
        ray_setup: the path of Ray's own ``setup_worker.py``, which anything unusual goes to.
    """
    fallback: tuple[str, list[str], dict[str, str]] = (sys.executable, [sys.executable, ray_setup, *argv], {})
    options: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name in (CONTEXT, LANGUAGE):
            if not eq:  # "--language PYTHON"
                if i + 1 >= len(argv):
                    return fallback
                i, value = i + 1, argv[i + 1]
            options[name] = value
        else:
            rest.append(argv[i])
        i += 1
    if options.get(LANGUAGE) != "PYTHON" or not rest:
        return fallback
    try:
        context = json.loads(options.get(CONTEXT) or "{}")
    except ValueError:
        return fallback
    if not isinstance(context, dict) or not set(context) <= _KNOWN:
        return fallback
    if any(context.get(k) for k in ("command_prefix", "override_worker_entrypoint", "java_jars")):
        return fallback
    env_vars = context.get("env_vars") or {}
    if not isinstance(env_vars, dict):
        return fallback
    python = context.get("py_executable") or sys.executable
    return python, [python, *rest], {str(k): str(v) for k, v in env_vars.items()}


def set_env(env_vars: dict[str, str]) -> None:
    """Set the context's variables as Ray's ``update_envs`` does: ``${X}`` from the environment
    (variables set before count), references to unset ones removed."""
    for key, value in env_vars.items():
        os.environ[key] = _UNSET.sub("", os.path.expandvars(value))


def ray_setup_worker() -> str:
    """Where Ray's own ``setup_worker.py`` is (found without importing Ray)."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    root = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else ""
    return os.path.join(root, "_private", "workers", "setup_worker.py")


def main() -> None:
    program, args, env_vars = plan(sys.argv[1:], ray_setup_worker())
    set_env(env_vars)
    os.execvp(program, args)  # a bare py_executable ("python3") is looked up on PATH, as bash did


if __name__ == "__main__":
    main()
