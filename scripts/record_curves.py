"""Record a learning-curve table: run a study with no early stopping through hpo itself, then read
every evaluation of each full-budget trial back from its storage into a JSONL table.

The study file should say ``schedule: none`` (every trial runs its budget), ``sampler: random``
(seeded: the configurations are a reproducible random draw of the space) and an ``eval_every``
that gives several evaluations per trial. The run goes in chunks until ``--configs`` trials have
finished or ``--minutes`` have passed; rerunning the same command continues the same study.

  # the tiny model (demo study's space; ~45 min on a shared 2-core machine):
  flock /tmp/hpo-heavy.lock python scripts/record_curves.py --spec studies/curves-tiny.yaml \\
      --configs 200 --minutes 45 --out benchmarks/curves/tiny-demo.jsonl
  # SmolLM2-135M (the realistic study; hours on 2 cores):
  flock /tmp/hpo-heavy.lock python scripts/record_curves.py --spec studies/curves-smollm2.yaml \\
      --configs 50 --minutes 600 --out benchmarks/curves/smollm2.jsonl
  # on another machine (no runs/curves/): the same command puts the table's curves back into a new
  # storage first, so the seeded draw goes on where it stopped; on another CPU kind add
  # --calibrate 4: four of the table's configurations train again here first, and this machine's
  # seconds go into the table divided by the measured factor (the table's time base stays its own)
  # rows whose seconds a loaded machine inflated, trained again here (the table's own CPU kind) and
  # replaced: --rerecord 0-11 (or 3,5,7-9, or all)
  # the table alone, from what the storage holds:
  python scripts/record_curves.py --spec studies/curves-tiny.yaml --export-only --out ...
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from curves_again import parse_rows, queued, restore, runs_dir, spread, train_again, trained

from hpo import curves, spec, storage
from hpo.errors import HpoError

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """What ran it: CPU model, its bf16 units (which precision ``auto`` trains in), cores, Python."""
    from hpo import placement

    return {
        "cpu": placement.cpu_model(),
        "bf16": placement.bf16_units(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(args: argparse.Namespace) -> int:
    from hpo.study import run_study

    s = spec.load(args.spec)
    if s.schedule.type != "none":
        return _fail(
            f"{args.spec}: schedule must be none (every trial its full budget), not {s.schedule.type}"
        )
    earlier = curves.read(args.out) if Path(args.out).is_file() else None  # the table so far
    other = _other_machine(earlier)
    if other and not args.export_only and not args.any_machine and not args.calibrate:
        return _fail(
            f"{args.out} was recorded on {other!r}, this machine is {_kind(machine())!r}: its trials "
            "would take other seconds (and maybe another precision); record there, pass --calibrate 4 (train "
            "4 of its configurations again here first, to put this machine's seconds in the table's), "
            "or --any-machine"
        )
    if args.rerecord:  # checked before any storage is made
        if other or earlier is None:
            where = f"was recorded on {other!r}: rerecord on that CPU kind" if other else "does not exist yet"
            return _fail(f"--rerecord: {args.out} {where}")
        parse_rows(args.rerecord, earlier)  # a row the table lacks: refused here, in one line
    url = _storage(s, args, earlier)
    missing = _missing_from_storage(earlier, s.name, url)
    if missing:
        return _fail(
            f"{args.out} holds {len(missing)} curve(s) that {url} lacks (trials {missing[0]}, ...: "
            "recorded on another machine); move the storage aside so that the table is restored into a "
            "new one"
        )
    calibration = None
    calibrated = f"{s.name}-calibration" in storage.study_names(storage.open_storage(url))
    if other and (calibrated or (args.calibrate and not args.export_only)):  # export: this storage's own
        assert earlier is not None
        calibration = calibrate_here(s, args.spec, url, earlier, args.calibrate or 4)
        if _too_far(calibration, args):
            return 2
    rerecorded = None
    if args.rerecord and earlier is not None and not args.export_only:
        rerecorded = rerecord(s, args, url, earlier)
    deadline, t0 = _deadline(args), time.time()
    # the code that recorded: this invocation's commit, after those of earlier invocations that
    # recorded into the same table (rerunning the command continues the study, maybe at a newer commit)
    commits = _earlier_commits(earlier)
    commits += [] if commits and commits[-1] == commit() else [commit()]
    target = len(_trials(s.name, url))
    while not args.export_only and target < args.configs and time.time() < deadline:
        target = min(args.configs, target + args.chunk)
        summary = run_study(s.name, trials=target, storage=url, runs_dir=runs_dir(url, s.name))
        print(f"{time.time() - t0:7.0f}s  {target} trials finished ({summary.counts})", flush=True)
        # after every chunk: a stopped recording keeps what it made
        write_table(s, url, args.out, commits, earlier, calibration, rerecorded)
        if summary.interrupted:
            break
    n = write_table(s, url, args.out, commits, earlier, calibration, rerecorded)
    print(f"{args.out}: {n} curves", flush=True)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _storage(s: spec.StudySpec, args: argparse.Namespace, earlier: curves.Table | None) -> str:
    """The recording's storage URL; a new one gets the study and the table's curves first."""
    from hpo.study import create_study

    url = args.storage or f"sqlite:///{(ROOT / 'runs' / 'curves' / f'{s.name}.db').as_posix()}"
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if s.name not in storage.study_names(storage.open_storage(url, create=True)):
        create_study(args.spec, storage=url)
        restored = restore(s, url, earlier, Path(args.out).name)
        if restored:
            print(f"{url}: a new storage; restored the {restored} curves of {args.out} into it", flush=True)
    return url


def _deadline(args: argparse.Namespace) -> float:
    """When to stop starting chunks: ``--minutes`` from now, or ``--until`` (UTC HH:MM today) if sooner."""
    deadline = time.time() + args.minutes * 60
    if args.until:  # an absolute end for a run queued behind a lock
        hh, mm = (int(x) for x in args.until.split(":"))
        now = datetime.datetime.now(datetime.timezone.utc)
        deadline = min(deadline, now.replace(hour=hh, minute=mm, second=0).timestamp())
    return deadline


def write_table(
    s: spec.StudySpec,
    url: str,
    out: str,
    commits: list[str],
    earlier: curves.Table | None = None,
    calibration: curves.Calibration | None = None,
    rerecorded: dict | None = None,
) -> int:
    """Write the table of every full-budget trial the storage holds; returns the curves written.

    The table keeps the time base of the machine that started it (its header's ``machine``): with
    a ``calibration``, the seconds of the trials recorded here (not restored from the table) are
    put in that base, and the header lists each calibration. Rows the storage's ``<study>-rerecord``
    study trained again replace the study's own; ``rerecorded`` is this invocation's header entry
    for them (the header lists every rerecording)."""
    table, here = [], []
    again = trained(s, url, "rerecord")
    for t in _trials(s.name, url):
        c = curves.curve_of(t, s.training.eval_every)
        if c is not None and calibration is not None and "restored_from" not in t.user_attrs:
            c = calibration.to_table_seconds(c)
            here.append(c.number)
        if c is not None:
            table.append(again.get(c.number, c))
    header = {
        "study": s.name,
        "direction": s.objective.direction,
        "metric": s.objective.metric,
        "eval_every": s.training.eval_every,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "machine": (earlier.header.get("machine") if earlier else None) or machine(),
        "commits": commits,  # the commits whose code ran the trials, oldest first
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spec": s.model_dump(mode="json"),
    }
    calibrations = list(earlier.header.get("calibrations", [])) if earlier else []
    if calibration is not None:  # this machine's entry, with the curves it recorded (first, last)
        entry = {"machine": machine(), **dataclasses.asdict(calibration)}
        # this entry replaces its earlier self, and older ones of these curves
        same = {**entry, "recorded": None}
        calibrations = [
            c
            for c in calibrations
            if c["machine"] != entry["machine"]
            or ({**c, "recorded": None} != same and not _overlaps(c, here))
        ]
        calibrations.append({**entry, "recorded": [min(here), max(here)] if here else None})
    if calibrations:
        header["calibrations"] = calibrations
    redone = [r for r in (earlier.header.get("rerecorded", []) if earlier else []) if r != rerecorded]
    if redone or rerecorded:
        header["rerecorded"] = redone + ([rerecorded] if rerecorded else [])
    curves.write(Path(out), header, table)
    return len(table)


def _recorded_elsewhere(table: curves.Table, number: int) -> bool:
    """Whether a curve came from a calibrated machine (its seconds are already scaled), and was not
    trained again on the table's own machine kind since (``--rerecord``)."""
    redone = {n for r in table.header.get("rerecorded", []) for n in r["rows"]}
    return number not in redone and any(_overlaps(c, [number]) for c in table.header.get("calibrations", []))


def _overlaps(entry: dict, numbers: list[int]) -> bool:
    first, last = entry.get("recorded") or (None, None)
    return first is not None and any(first <= n <= last for n in numbers)


def calibrate_here(
    s: spec.StudySpec, spec_path: str, url: str, table: curves.Table, k: int
) -> curves.Calibration:
    """Train ``k`` of the table's configurations (``spread``, rows of the table's own machine) again on
    this machine (``curves_again.train_again``: a rerun reuses the rows it queued) and compare.

    Raises:
        HpoError: a calibration trial did not complete.
    """
    before = queued(s, url, "calibration")  # a rerun: the rows the first run chose
    own = [c for c in table.curves if not _recorded_elsewhere(table, c.number)]
    rows = [c for c in table.curves if c.number in before] if before else spread(own, k)
    again = train_again(s, spec_path, url, rows, "calibration")
    return curves.calibrate(sorted(rows, key=lambda c: c.number), again)


def rerecord(s: spec.StudySpec, args: argparse.Namespace, url: str, table: curves.Table) -> dict:
    """Train the rows ``--rerecord`` names again here (``curves_again.train_again``) and return the
    header entry that says so: this machine, the rows, the median ratio of their seconds here to the
    table's, and the largest relative gap of their final values (their curves replace the table's
    in ``write_table``)."""
    rows = parse_rows(args.rerecord, table)
    again = train_again(s, args.spec, url, rows, "rerecord")
    by_number = {c.number: c for c in again}
    compared = curves.calibrate(rows, [by_number[r.number] for r in rows])
    print(
        f"rerecorded {len(rows)} rows of {args.out}: they took {compared.factor:g}x their seconds in the "
        f"table; final values within {compared.value_gap:.2%}",
        flush=True,
    )
    return {
        "machine": machine(),
        "rows": compared.rows,
        "factor": compared.factor,
        "value_gap": compared.value_gap,
        "date": datetime.date.today().isoformat(),
    }


def _other_machine(table: curves.Table | None) -> str | None:
    """The CPU an existing table was recorded on, when it is not this machine's kind (else None):
    another model name, or the same name with other bf16 units (a header without them, from
    before they were recorded, is compared by name)."""
    recorded = (table.header.get("machine") if table else None) or {}
    here = machine()
    if not recorded.get("cpu"):
        return None
    if recorded["cpu"] != here["cpu"]:
        return recorded["cpu"]
    if "bf16" in recorded and recorded["bf16"] != here["bf16"]:
        return _kind(recorded)
    return None


def _kind(m: dict) -> str:
    return f"{m['cpu']} (bf16: {'/'.join(m['bf16']) or 'none'})"


def _too_far(calibration: curves.Calibration, args: argparse.Namespace) -> bool:
    """Print the calibration; True (and say why) when the table's values do not reproduce here."""
    print(
        f"calibration on {len(calibration.rows)} of the table's configurations: this machine takes "
        f"{calibration.factor:g}x the table's seconds; final values within {calibration.value_gap:.2%}",
        flush=True,
    )
    if calibration.value_gap <= args.tolerance:
        return False
    print(
        f"error: {args.out}: this machine trains the table's configurations to values up to "
        f"{calibration.value_gap:.2%} away from its own (--tolerance {args.tolerance:.2%}): another "
        "precision or other training code; record on the table's machine kind, or start a new table",
        file=sys.stderr,
    )
    return True


def _missing_from_storage(table: curves.Table | None, name: str, url: str) -> list[int]:
    """The table's curves the storage has no trial for: recorded on another machine after this
    storage was made (writing the table from this storage would drop them)."""
    if table is None:
        return []
    have = {t.number for t in _trials(name, url)}
    return sorted(c.number for c in table.curves if c.number not in have)


def _earlier_commits(table: curves.Table | None) -> list[str]:
    if table is None:
        return []
    header = table.header
    return list(header.get("commits") or ([header["commit"]] if header.get("commit") else []))


def _trials(name: str, url: str) -> list:
    return storage.load(name, url).get_trials(deepcopy=False)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="the study file (schedule: none, sampler: random)")
    p.add_argument("--out", required=True, help="the table to write (JSONL)")
    p.add_argument("--configs", type=int, default=200, help="finished trials to reach (default %(default)s)")
    p.add_argument(
        "--minutes", type=float, default=45.0, help="stop starting chunks after this (default %(default)s)"
    )
    p.add_argument("--until", help="also stop starting chunks at this UTC time today (HH:MM)")
    p.add_argument("--chunk", type=int, default=20, help="trials per hpo run (default %(default)s)")
    p.add_argument("--storage", help="storage URL (default sqlite:///runs/curves/<study>.db)")
    p.add_argument("--export-only", action="store_true", help="write the table from the storage, run nothing")
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="K",
        help="on a machine kind other than the table's: train K of its configurations (spread over it) "
        "again here, then record with this machine's seconds put in the table's time base",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="--calibrate: the largest relative gap in final values accepted (default %(default)s)",
    )
    p.add_argument(
        "--rerecord",
        metavar="ROWS",
        help="train these rows of the table (0-11, 3,5,7-9 or all) again here, on the table's own CPU kind, "
        "and replace them: for rows whose seconds a loaded machine inflated",
    )
    p.add_argument(
        "--any-machine",
        action="store_true",
        help="record into a table another CPU kind started (its seconds and precision may differ)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return record(args)
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
