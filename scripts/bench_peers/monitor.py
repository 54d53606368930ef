"""A background thread in the bench process sampling a running system about once a second:
disk under its work folder (checkpoints, run folders, storage; Ray's temp folder left out), the RSS
of its driver process and of its whole process tree, the peak RSS of each trial process (with its
children), and the machine's load and CPU use.

It lives in the parent so sampling never competes with the measured driver for its GIL.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from typing import Any

import psutil

#: Titles of Ray's own helper processes (the rest of the ``ray::`` processes run trials).
RAY_SERVICES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobSupervisor")
#: hpo's warm process and the trial processes forked from it (``hpo/warmstart.py``) run trials too.
WARM = "hpo.warmstart"
#: Folder names under a work folder that hold Ray's session files (sockets, logs), not results.
NOT_RESULTS = frozenset({"rt", "ray-tmp"})


def du_bytes(path: str, skip: frozenset[str] = NOT_RESULTS) -> int:
    """Bytes of regular files under ``path``, not following links, skipping folders named in ``skip``."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if e.name not in skip:
                        stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except OSError:
                pass  # deleted while we looked
    return total


class Monitor(threading.Thread):
    """Samples one system's process and work folder until ``stop()``; results in ``figures()``."""

    def __init__(self, pid: int, work_dir: str, interval: float = 1.0):
        super().__init__(name="bench-monitor", daemon=True)
        self.pid, self.work_dir, self.interval = pid, work_dir, interval
        self._halt = threading.Event()
        self.disk_peak = 0
        self.rss: list[tuple[float, float]] = []  # (seconds since start, driver RSS MB)
        self.tree_rss_peak = 0.0
        self.load: list[float] = []
        self.cpu_busy: list[float] = []
        self.cpu_s: dict[int, tuple[str, float]] = {}  # pid -> (process title, CPU seconds so far)
        self.trial_rss_peak: dict[int, float] = {}  # trial process pid -> peak RSS MB (with children)
        self._titles: dict[int, str] = {}
        self.t0 = time.time()

    def run(self) -> None:
        psutil.cpu_percent(interval=None)
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.interval)
        self._sample()

    def _sample(self) -> None:
        self.disk_peak = max(self.disk_peak, du_bytes(self.work_dir))
        try:
            proc = psutil.Process(self.pid)
            rss = proc.memory_info().rss
            children = proc.children(recursive=True)
            tree = rss + sum(_rss(c) for c in children)
        except psutil.Error:
            return
        for p in (proc, *children):
            self._note_cpu(p)
        self._note_trials(children)
        self.rss.append((round(time.time() - self.t0, 1), rss / 1e6))
        self.tree_rss_peak = max(self.tree_rss_peak, tree / 1e6)
        self.load.append(os.getloadavg()[0])
        self.cpu_busy.append(psutil.cpu_percent(interval=None))

    def _note_cpu(self, p: psutil.Process) -> None:
        try:
            with p.oneshot():
                t = p.cpu_times()
                title = " ".join(p.cmdline()[:3])[:80] or p.name()
            self.cpu_s[p.pid] = (title, t.user + t.system)
        except psutil.Error:
            pass

    def _title(self, p: psutil.Process) -> str:
        if p.pid not in self._titles:
            try:
                self._titles[p.pid] = " ".join(p.cmdline()[:4]) or p.name()
            except psutil.Error:
                return ""
        return self._titles[p.pid]

    def _note_trials(self, procs: list[psutil.Process]) -> None:
        """Peak RSS of each trial process with its own children: a Ray worker (a child of the
        raylet: a peer's trial, or hpo's thin proxy) or a trial process hpo forked from its warm
        process (``hpo/warmstart.py``). Read from ``/proc`` via psutil at each sample."""
        by_pid = {p.pid: p for p in procs}
        kids: dict[int, list[int]] = {}
        for p in procs:
            with contextlib.suppress(psutil.Error):
                kids.setdefault(p.ppid(), []).append(p.pid)
        for p in procs:
            try:
                parent = by_pid.get(p.ppid())
            except psutil.Error:
                continue
            if parent is None:
                continue
            raylet_child = _name(parent) == "raylet"
            forked = WARM in self._title(p) and WARM in self._title(parent)
            if raylet_child or forked:
                mb = sum(_rss(by_pid[q]) for q in _descendants(p.pid, kids) if q in by_pid) / 1e6
                self.trial_rss_peak[p.pid] = max(self.trial_rss_peak.get(p.pid, 0.0), mb)

    def trial_memory(self) -> dict[str, Any]:
        """The largest trial process's peak, the median over those that trained (a peak at least
        half the largest: Ray's idle workers and hpo's proxies are far smaller), and every peak."""
        peaks = sorted(self.trial_rss_peak.values(), reverse=True)
        if not peaks:
            return {"trial_rss_peak_mb": None}
        worked = [v for v in peaks if v >= peaks[0] / 2]
        return {
            "trial_rss_peak_mb": round(peaks[0], 1),
            "trial_rss_peak_median_mb": round(statistics.median(worked), 1),
            "trial_rss_peaks_mb": [round(v, 1) for v in worked],
        }

    def cpu_split(self) -> dict[str, float]:
        """CPU seconds of the driver, of trial processes (Ray workers), and of Ray's own services."""
        out = {"driver_cpu_s": 0.0, "trial_processes_cpu_s": 0.0, "ray_services_cpu_s": 0.0}
        for pid, (title, seconds) in self.cpu_s.items():
            if pid == self.pid:
                key = "driver_cpu_s"
            elif (title.startswith("ray::") and not title.startswith(RAY_SERVICES)) or WARM in title:
                key = "trial_processes_cpu_s"
            else:
                key = "ray_services_cpu_s"
            out[key] += seconds
        return {k: round(v, 1) for k, v in out.items()}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def figures(self) -> dict[str, Any]:
        rss = [r for _, r in self.rss]
        return {
            "disk_peak_mb": round(self.disk_peak / 1e6, 2),
            "driver_rss_mb": round(max(rss), 1) if rss else None,
            "driver_rss_end_mb": round(rss[-1], 1) if rss else None,
            "tree_rss_peak_mb": round(self.tree_rss_peak, 1),
            "load1_mean": round(sum(self.load) / len(self.load), 2) if self.load else None,
            "load1_max": round(max(self.load), 2) if self.load else None,
            "machine_cpu_busy_pct_mean": (
                round(sum(self.cpu_busy) / len(self.cpu_busy), 1) if self.cpu_busy else None
            ),
            "samples": len(self.rss),
            **self.cpu_split(),
            **self.trial_memory(),
        }


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, stack = [], [pid]
    while stack:
        q = stack.pop()
        out.append(q)
        stack.extend(kids.get(q, []))
    return out


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0
