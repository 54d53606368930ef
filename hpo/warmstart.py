"""Warm trial processes: the trial's imports happen once per run, and every trial slot's process is
forked from a process that already has them.

A Ray trial process that runs the trial loop itself first imports torch, transformers and the
model's code, each slot's process at the same time: measured on 2 cores, 3.7 s (Xeon with AMX) to
11 s (EPYC, AVX2) before the first step, and a node with 8 slots makes 8 such imports compete. A
run on a Ray that hpo starts itself (one machine) instead starts one *warm process* first thing,
before the driver imports Ray: it imports what a trial imports (``trial.import_code``) while the
driver starts Ray and Tune, moves those objects out of the garbage collector's reach
(``gc.freeze``, so children share them copy-on-write), and then forks one *trial process* for each
Ray trial process that connects. The Ray trial process becomes a thin proxy: it hands each trial's
config to its forked process and passes each report to Tune and Tune's answer back, synchronously,
so ASHA's stop (``SystemExit`` raised in Tune's ``report``) reaches the trial at the same report as
before. A forked trial process runs trial after trial for its Ray process, as a reused Ray process
did, with the Ray process's environment (``CUDA_VISIBLE_DEVICES`` and hpo's settings included).

Lifetimes: the warm process dies with the driver (Linux's parent-death signal); at the end of a run
the driver kills its process group (the warm process, every trial process forked from it and their
data-parallel ranks); a trial process exits when its Ray process is gone (it polls the pid), when
the connection closes, and after a trial that hit a CUDA error no process recovers from
(``hpo/cudafault.py``): its Ray process's next trial forks a new one. Where any of this does not
hold (a cluster, not Linux, ``HPO_WARM_START=0``, a warm process that failed, or one whose imports
started the CUDA driver: a forked child could not use CUDA, see ``hpo/cudaprobe.py``), the Ray
process runs the trial itself, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hpo import cudafault, distributed, memory
from hpo.cudaprobe import cuda_driver_started
from hpo.errors import CudaError, OutOfMemory, TrialError

log = logging.getLogger(__name__)

ENV = "HPO_WARM_START"  # "0": every Ray trial process imports and runs its trials itself
READY_TIMEOUT_S = 600.0  # how long a Ray trial process waits for the warm process's imports
STOP_WAIT_S = 1.0  # after Tune stops a trial: how long the proxy waits for the trial to unwind
WATCH_S = 0.5  # a trial process checks this often that its Ray process is alive


@dataclass
class Warm:
    """The driver's handle on the warm process."""

    process: subprocess.Popen
    folder: str  # private (0700) folder holding the socket

    @property
    def address(self) -> str:
        return os.path.join(self.folder, "s")


class TrialProcessError(TrialError):
    """A trial failed in its forked process; carries that error's class name and message."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


# ---------------------------------------------------------------- the driver's side


def wanted() -> bool:
    """Whether this platform and the environment allow warm trial processes."""
    return sys.platform.startswith("linux") and os.environ.get(ENV, "1") != "0"


def start(model_path: str) -> Warm | None:
    """Start the warm process for trials of ``model_path`` (its own messages go to a log beside its
    socket; a trial's go where Ray puts its Ray process's); None if it cannot start (trials then
    import for themselves)."""
    folder = tempfile.mkdtemp(prefix="hpo-warm-")  # 0700: only this user can connect
    # the socket listens before this returns, so a Ray trial process can never connect too early:
    # its connection waits in the backlog until the warm process, done importing, accepts it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.path.join(folder, "s"))
        listener.listen(128)
        with open(os.path.join(folder, "log"), "ab") as out:
            args = [str(listener.fileno()), model_path, str(os.getpid())]
            process = subprocess.Popen(
                [sys.executable, "-m", "hpo.warmstart", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=[listener.fileno()],
                start_new_session=True,  # its own process group: Ctrl-C on the terminal goes to the driver
            )
    except OSError as e:
        log.debug("no warm process: %s", e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    finally:
        listener.close()  # the warm process holds its own copy
    return Warm(process, folder)


def stop(warm: Warm | None, keep_log: Path | None = None) -> None:
    """Kill the warm process and every process forked from it, and remove its folder; its log is
    copied to ``keep_log`` if that file's folder exists."""
    if warm is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(warm.process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        warm.process.wait(timeout=10)
    if keep_log is not None and keep_log.parent.is_dir():
        with contextlib.suppress(OSError):
            shutil.copyfile(os.path.join(warm.folder, "log"), keep_log)
    shutil.rmtree(warm.folder, ignore_errors=True)


# ---------------------------------------------------------------- the Ray trial process's side

_CHILD: dict[str, TrialProcess] = {}  # per Ray trial process: its forked trial process, by address


class TrialProcess:
    """A Ray trial process's forked trial process: ``run`` has ``trial.run``'s signature."""

    def __init__(self, conn: Connection, pid: int, address: str):
        self.conn, self.pid, self.address = conn, pid, address

    def run(self, config: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Run one trial in the forked process; ``config["placement"]`` gets what it decided there
        (device, precision) before each report, as if the trial had run here.

        Raises:
            TrialProcessError: the trial failed (its class and message).
            TrialError: the forked process died.
        """
        seen = config.setdefault("placement", {})
        self.oom_kills = memory.oom_kills()  # the kernel's count: did it kill this process for memory?
        self._send(("trial", config))
        while True:
            msg = self._recv()
            if msg[0] != "report":
                return self._finished(msg)
            seen.update(msg[2])
            try:
                report(msg[1])
            except BaseException:  # Tune stopped the trial (SystemExit): stop it there too
                self._stop()
                raise
            self._send("continue")

    def _send(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except OSError as e:
            raise self._died() from e

    def _recv(self) -> Any:
        try:
            return self.conn.recv()
        except (EOFError, OSError) as e:
            raise self._died() from e

    def _died(self) -> TrialError:
        self.close()
        if memory.oom_kills() > getattr(self, "oom_kills", memory.oom_kills()):
            return OutOfMemory(
                f"the trial process (pid {self.pid}) was killed by the kernel's out-of-memory killer; set "
                "training.max_micro_batch: auto, resources.memory_gb, or fewer trials at once (--concurrency)"
            )
        return TrialError(f"the trial process (pid {self.pid}) died: killed, or out of host memory")

    def _finished(self, msg: tuple) -> dict[str, Any]:
        if msg[0] == "error":
            if msg[1] == CudaError.__name__:  # that process exits: the next trial forks a new one
                self.close()
            raise TrialProcessError(msg[1], msg[2])
        return msg[1]

    def _stop(self) -> None:
        """Answer the report with "stop" and wait for the trial to unwind; kill it if it does not."""
        try:
            self.conn.send("stop")
            if self.conn.poll(STOP_WAIT_S):
                self.conn.recv()
                return
        except (EOFError, OSError):
            pass
        self.close()

    def close(self) -> None:
        """Forget this process (killed if still alive); the next trial forks a new one."""
        if _CHILD.get(self.address) is self:
            del _CHILD[self.address]
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)


def connect(address: str | None) -> TrialProcess | None:
    """This Ray trial process's forked trial process, forked on first use; None when there is no
    warm process to fork from (then the trial runs here)."""
    if not address:
        return None
    if address in _CHILD:
        return _CHILD[address]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)  # the warm process accepts once its imports are done
        socket.send_fds(sock, [b"o"], [1, 2])  # the trial's output goes where this process's goes
    except OSError as e:
        sock.close()
        log.debug("no warm process at %s: %s", address, e)
        return None
    conn = Connection(sock.detach())
    try:
        conn.send({"pid": os.getpid(), "env": dict(os.environ)})
        if not conn.poll(READY_TIMEOUT_S):
            raise EOFError("the warm process did not answer")
        _, pid = conn.recv()
    except (EOFError, OSError) as e:
        conn.close()
        log.debug("the warm process at %s did not fork: %s", address, e)
        return None
    _CHILD[address] = TrialProcess(conn, pid, address)
    return _CHILD[address]


# ---------------------------------------------------------------- the warm process and its forks


def main(argv: list[str]) -> None:
    """``python -m hpo.warmstart LISTENER_FD MODEL_PATH DRIVER_PID``: import, then fork on request
    (the driver bound and listens on the socket whose descriptor it passes)."""
    t0 = time.monotonic()
    fd, model_path, driver = int(argv[0]), argv[1], int(argv[2])
    distributed.parent_death_signal(driver)  # a thread would not survive the forks: no watcher
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listener = socket.socket(fileno=fd)  # Ray trial processes wait in its backlog until the imports are done
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() must not init CUDA
    import gc

    from hpo import trial

    trial.import_code(model_path)  # torch, transformers, the model's code (the collector paused meanwhile)
    unsafe = cuda_driver_started()
    if unsafe:  # a forked child could not use CUDA: let trials import themselves
        log.warning("warm process: %s while importing; trials will import for themselves", unsafe)
        return
    gc.collect()
    gc.freeze()
    log.warning("warm process %d: ready in %.1f s (%s)", os.getpid(), time.monotonic() - t0, model_path)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked trial processes are reaped by the kernel
    while True:
        sock, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            _serve(sock)
        sock.close()


def _serve(sock: socket.socket) -> None:
    """A forked trial process: take the Ray process's output files and environment, then run its
    trials."""
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # data-parallel ranks are waited for
        _, fds, _, _ = socket.recv_fds(sock, 1, 2)
        for fd, target in zip(fds, (1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
        conn = Connection(sock.detach())
        hello = conn.recv()
        os.environ.clear()
        os.environ.update(hello["env"])
        _exit_when_gone(hello["pid"])
        conn.send(("ready", os.getpid()))
        from hpo import trial

        while True:
            try:
                _, config = conn.recv()
            except (EOFError, OSError):
                break
            reply = _one_trial(trial, config, conn)
            conn.send(reply)
            if reply[:2] == ("error", CudaError.__name__):
                break  # CUDA cannot be used in this process any more (hpo/cudafault.py)
    except BaseException:  # noqa: BLE001 - the proxy sees the closed connection and fails the trial
        log.exception("trial process")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _one_trial(trial, config: dict[str, Any], conn: Connection) -> tuple:
    """Run one trial; its reports go to the proxy, which answers "continue" or "stop"."""
    placement = config.setdefault("placement", {})

    def report(metrics: dict[str, Any]) -> None:
        conn.send(("report", metrics, placement))
        if conn.recv() != "continue":
            raise SystemExit(0)  # what Tune's report raises in a Ray process when it stops the trial

    try:
        return ("done", trial.run(config, report))
    except SystemExit:
        return ("stopped", None)
    except Exception as e:  # noqa: BLE001 - the proxy raises it in the Ray process
        broken = cudafault.fault(e)
        if broken is not None:
            return ("error", CudaError.__name__, str(broken))
        return ("error", type(e).__name__, str(e))  # the runner writes its first line


def _exit_when_gone(pid: int) -> None:
    """End this trial process when the Ray process it serves is gone."""

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass
            time.sleep(WATCH_S)

    threading.Thread(target=watch, name="hpo-ray-process-watch", daemon=True).start()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
