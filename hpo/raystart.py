"""Ray's start and stop for a run: join a cluster, or start a local Ray that listens on
127.0.0.1 only (``_node_ip_address`` plus ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray is
imported), reports no usage stats, starts no dashboard, and keeps its temp files under the study's
runs folder when the path is short enough for Ray's unix sockets. The only module that starts Ray.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from hpo import placement
from hpo.errors import RunError

# Ray reads these at import: keep it on loopback, quiet and cheap.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial CSV/JSON/TensorBoard files
    "TUNE_GLOBAL_CHECKPOINT_S": "60",  # Ray's experiment snapshots are a cache: throttle them
    "TUNE_DISABLE_SIGINT_HANDLER": "1",  # hpo handles Ctrl-C itself (fail + re-queue live trials)
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 the classic reporter prints nothing; hpo prints progress
    "TOKENIZERS_PARALLELISM": "false",
    # hpo plans each trial's memory and holds CPU trials to it; Ray's memory monitor would kill a
    # Ray worker instead, which Tune 2.60 does not survive ("Caught unexpected exception").
    "RAY_memory_monitor_refresh_ms": "0",
}
_SOCKET_ROOM = 107 - len("/session_2026-11-25_01-38-34_899804_10948/sockets/plasma_store") - 1
OBJECT_STORE_BYTES = 2**30  # a local Ray's object store (reports and configs only)


def ray_env() -> None:
    """Set Ray's environment before it is imported (idempotent; the user's values win)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)


def temp_dir(runs_dir: Path) -> str:
    """Ray's temp folder: under the runs folder if its unix socket paths stay short enough."""
    wanted = (runs_dir / "ray-tmp").resolve()
    if len(str(wanted)) <= _SOCKET_ROOM:
        return str(wanted)
    return f"/tmp/hpo-ray-{hashlib.sha1(str(wanted).encode()).hexdigest()[:10]}"


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster to join: ``--address``, else ``$RAY_ADDRESS``; None (or "local"): start one."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def start(runs_dir: Path, address: str | None = None) -> bool:
    """Join the cluster at ``cluster_address(address)`` or start a local, loopback-only Ray whose
    temp files go under ``runs_dir``.

    Returns:
        True if this call connected to Ray (the run then disconnects at its end); False when Ray
        was already initialized in this process (a notebook), which is then used as it is.

    Raises:
        RunError: Ray cannot start, or the cluster cannot be reached.
    """
    ray_env()
    import ray

    for name in ("ray", "ray.tune", "ray.train"):  # hpo reports progress and errors itself
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return False
    address = cluster_address(address)
    # hpo's settings reach the trial processes on every node; the storage URL (with its password)
    # stays in the driver: only the driver writes the storage, and Ray keeps runtime envs in its GCS
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("HPO_") and k != "HPO_STORAGE"}
    common: dict[str, Any] = {
        "runtime_env": {"env_vars": env_vars},
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    if address:
        _check_reachable(address)
        if placement.is_loopback(address):  # a cluster on this machine: Ray must not swap in the outward IP
            loopback_only()
    try:
        if address:
            ray.init(address=address, **common)
        else:
            loopback_only()
            ray.init(
                _node_ip_address="127.0.0.1",
                # Ray's prestarted workers never serve Tune's trials (those carry a runtime env)
                _system_config={"prestart_worker_first_driver": False},
                include_dashboard=False,
                # trials pass nothing large through Ray's object store: its default (30% of the
                # machine's memory) would come off the memory Ray lets trials reserve
                object_store_memory=OBJECT_STORE_BYTES,
                _temp_dir=temp_dir(runs_dir),
                configure_logging=True,
                **common,
            )
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
        raise RunError(
            f"cannot start Ray{' at ' + address if address else ''}: {str(e).splitlines()[0]}"
        ) from e
    return True


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail at once when nothing listens at ``address`` (Ray itself would retry for minutes)."""
    hp = placement.host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as e:
        raise RunError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one there with "
            "`ray start --head` (docs/cluster.md), or fix --address / RAY_ADDRESS"
        ) from e


def loopback_only() -> None:
    """Keep a Ray that hpo starts on 127.0.0.1, even if ray was imported before ``ray_env()`` ran
    or ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` was set to 1. The processes Ray spawns read the
    variable. The driver read it once, at ``import ray``, into a private constant that turns even
    ``_node_ip_address="127.0.0.1"`` into the outward address (measured: without the rebind a Ray
    started after ``import ray`` listens on 0.0.0.0); Ray has no public switch, so the constant is
    set here: the one private Ray name hpo uses (docs/dependencies.md; tests/test_private_apis.py).

    Raises:
        RunError: this Ray moved the constant (a newer Ray than hpo was tested with).
    """
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants: Any = None
    with contextlib.suppress(ImportError):
        from ray._private import ray_constants as constants
    if not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        raise RunError(
            f"ray {ray.__version__} moved ray._private.ray_constants.ENABLE_RAY_CLUSTER, which hpo sets "
            "to keep its Ray on 127.0.0.1; install the ray version in constraints.txt"
        )
    constants.ENABLE_RAY_CLUSTER = False


def stop() -> None:
    """Stop the Ray hpo started (or disconnect from the cluster it joined)."""
    import ray

    ray.shutdown()
