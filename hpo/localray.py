"""Starting a single-machine Ray in about a second: only what a local hpo run uses.

``ray.init`` of a new local Ray spends most of its 2-3 s on steps such a run never needs:

1. having started the raylet, it asks the GCS for it after 0.1 s and, the raylet not yet
   registered (that takes ~0.6 s here), Ray's C++ lookup sleeps a whole second before asking again;
2. it starts the dashboard's API server (with ``include_dashboard=False`` a minimal one that only
   reports usage stats, which hpo turns off) and polls until it has written its address (0.5 s);
3. it starts the autoscaler monitor (nothing autoscales a local Ray, and the monitor ignores
   shutdown's SIGTERM for a second) and the log monitor (it forwards worker output to the driver;
   hpo starts Ray with ``log_to_driver=False``). Each such helper is a Python process importing
   ray, half a second of CPU while the first trial processes import torch;
4. the raylet starts each Python worker through Ray's ``setup_worker.py``, which imports all of Ray
   only to set a few variables and exec the worker, which imports Ray again: ``hpo/rayworker.py``
   does the same with the standard library (~0.7 s less CPU per worker process).

``quick_start()`` swaps those steps of Ray's private start-up code for a 20 ms poll and no-ops
while ``ray.init`` runs, and puts them back after. A Ray whose internals moved starts the usual
way, only slower. Measured (ray 2.60, 2 cores): ``ray.init`` 3.15 -> 1.0 s, ``ray.shutdown`` 1.1
-> 0.06 s; with 4, the first trials of a 2-slot run start 1.1 s sooner (median of 8 pairs, 7.39
-> 6.32 s). Only for a Ray that hpo starts itself; a cluster it joins is left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

REGISTER_WAIT_S = 10.0  # how long the poll waits for the raylet before leaving it to Ray's own wait
POLL_S = 0.02


@contextlib.contextmanager
def quick_start() -> Iterator[None]:
    """Around ``ray.init`` of a new local Ray: start only what a local run uses."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for owner, name, replacement in _replacements():
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def _replacements() -> list[tuple[Any, str, Any]]:
    """(owner, attribute, replacement) for each step of Ray's start-up this Ray still has."""
    try:
        from ray._private import node, services
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
    except ImportError:
        log.debug("Ray's start-up moved; starting it the usual way")
        return []
    out: list[tuple[Any, str, Any]] = []
    if callable(getattr(services, "get_node", None)):
        out.append((services, "get_node", _polled(services.get_node, GcsClient)))
    if callable(getattr(services, "start_api_server", None)):
        out.append((services, "start_api_server", _no_api_server))
    if callable(getattr(services, "start_raylet", None)):
        out.append((services, "start_raylet", _quick_workers(services.start_raylet)))
    for name in ("start_monitor", "start_log_monitor"):
        if callable(getattr(node.Node, name, None)):
            out.append((node.Node, name, _not_started))
    return out


def _polled(get_node: Callable, gcs_client: Callable) -> Callable:
    """Ray's node lookup, called once the raylet has registered (polled every ``POLL_S``)."""

    def wait_then_get_node(gcs_address: str, node_id: str):
        deadline = time.monotonic() + REGISTER_WAIT_S
        try:
            client = gcs_client(address=gcs_address)
            while time.monotonic() < deadline:
                if any(n.hex() == node_id for n in client.get_all_node_info(timeout=1)):
                    break
                time.sleep(POLL_S)
        except Exception:  # noqa: BLE001 - Ray's own lookup below reports what is wrong
            log.debug("polling for the raylet failed", exc_info=True)
        return get_node(gcs_address, node_id)

    return wait_then_get_node


def _quick_workers(start_raylet: Callable) -> Callable:
    """Ray's raylet start, with ``hpo/rayworker.py`` in place of Ray's ``setup_worker.py`` in the
    command the raylet starts each Python worker with."""
    import inspect

    from hpo import rayworker

    try:
        signature = inspect.signature(start_raylet)
    except (TypeError, ValueError):
        return start_raylet
    if "setup_worker_path" not in signature.parameters:
        return start_raylet

    def start_raylet_quick_workers(*args: Any, **kwargs: Any):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["setup_worker_path"] = rayworker.__file__
        return start_raylet(*bound.args, **bound.kwargs)

    return start_raylet_quick_workers


def _no_api_server(*args: Any, **kwargs: Any) -> tuple[None, None]:
    """(dashboard address, process): none started."""
    return None, None


def _not_started(self: Any) -> None:
    """A helper process a local hpo run does not use: not started."""
