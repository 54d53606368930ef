"""The study storage: opening, and create / load / list / delete of studies (its URLs are
``hpo/storageurl.py``'s, re-exported here).

Any SQLAlchemy URL that Optuna accepts works; SQLite (``sqlite:///hpo.db``) is the default and
PostgreSQL is the choice for a study shared by several machines. The study's spec is stored
with it (study user attribute ``hpo_spec``), so later commands need only the study's name.
A malformed URL is bad input (``UsageError``, checked before anything is opened); a database
that cannot be reached or refuses an operation is a ``StorageError``. Messages name the URL
with its password masked. Only ``create`` makes a new SQLite file: reading commands refuse a
missing one instead of leaving an empty database behind.

Optuna is reached through its public API (``create_study``, ``load_study``, ``Study``, the
``RDBStorage`` opened here, ``optuna.storages.fail_stale_trials``). Optuna keeps a study's storage
behind a private attribute, so ``backend(study)`` returns the one hpo opened it on. The parameters
a queued trial will take are kept in its user attribute ``ENQUEUED_ATTR`` (Optuna's own copy is a
private system attribute). docs/dependencies.md lists every private name hpo still uses.
"""

from __future__ import annotations

import contextvars
import logging
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo import spec as spec_mod
from hpo.errors import StorageError, UsageError
from hpo.storageurl import DEFAULT_URL as DEFAULT_URL  # re-exported: callers use hpo.storage's names
from hpo.storageurl import check_url as check_url
from hpo.storageurl import exists as exists
from hpo.storageurl import is_local_sqlite as is_local_sqlite
from hpo.storageurl import mask as mask
from hpo.storageurl import resolve_url as resolve_url
from hpo.storageurl import scrub, sqlite_file
from hpo.summary import WARM_START_ATTR

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

SPEC_ATTR = "hpo_spec"
DATA_REPORT_ATTR = "hpo_data_report"
#: The searched parameters a queued trial will be asked with (warm start or re-queue).
ENQUEUED_ATTR = "enqueued_params"
#: Seconds between trial heartbeats, and how old a heartbeat may get before its trial is stale.
HEARTBEAT_S = 10
GRACE_S = 60
#: Seconds to wait for a database server to answer before giving up.
CONNECT_TIMEOUT_S = 10


@contextmanager
def _db_errors(url: str, doing: str) -> Iterator[None]:
    """Turn database errors into one ``StorageError`` line naming the masked URL."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, StorageInternalError) as e:
        cause = getattr(e, "orig", None) or e.__cause__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        fix = (
            "check that the file is an hpo (Optuna) SQLite database"
            if url.startswith("sqlite:")
            else "check that the database server is running and the URL is right (--storage / HPO_STORAGE)"
        )
        raise StorageError(f"storage {mask(url)}: {doing} failed: {scrub(first, url)}; {fix}") from e


def open_storage(
    url: str | None = None, *, heartbeat: bool = False, create: bool = False
) -> optuna.storages.RDBStorage:
    """Open the storage at ``url`` (creating Optuna's tables if needed).

    Args:
        url: a SQLAlchemy URL; ``None`` means ``resolve_url(None)``.
        heartbeat: record trial heartbeats so a dead run's RUNNING trials can be found (``hpo run``).
        create: make the SQLite file if there is none (only creating a study does).

    Raises:
        UsageError: the URL is malformed, its driver missing, or its SQLite file missing.
        StorageError: the database cannot be reached.
    """
    import optuna

    url = resolve_url(url)
    check_url(url)
    path = sqlite_file(url)
    if path is not None and not create and not path.is_file():
        raise UsageError(
            f"no study storage at {mask(url)} (no file {path.resolve()}); create a study first with "
            "`hpo study create SPEC`, or point --storage / HPO_STORAGE at the right database"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # hpo records heartbeats itself (ask/tell, not Study.optimize): Optuna's notes on that are noise
    warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
    with _db_errors(url, "opening"):
        try:
            storage = optuna.storages.RDBStorage(url, **_storage_kwargs(url, heartbeat))
        except RuntimeError as e:  # the tables are from another Optuna version (the message says what to do)
            raise StorageError(f"storage {mask(url)}: {scrub(str(e), url)}") from e
        if path is not None:
            _enable_wal(storage)
    return storage


def _storage_kwargs(url: str, heartbeat: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # wait for a concurrent writer instead of failing with "database is locked"
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        kwargs["engine_kwargs"] = {
            "pool_pre_ping": True,
            "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
        }
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat:
        kwargs.update(
            heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, heartbeat_stale_trial_callback=_note_stale
        )
    return kwargs


def _enable_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL lets readers (dashboard, ``study show``) read while a run writes; it persists in the file."""
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))


_BACKENDS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_STALE: contextvars.ContextVar[list[optuna.trial.FrozenTrial] | None] = contextvars.ContextVar(
    "hpo_stale", default=None
)


def backend(study: optuna.Study) -> optuna.storages.RDBStorage:
    """The storage hpo opened ``study`` on (``create`` or ``load``).

    Raises:
        UsageError: the study was not opened through this module.
    """
    try:
        return _BACKENDS[study]
    except KeyError:
        raise UsageError(f"study {study.study_name!r} was not opened with hpo.storage.load") from None


def _opened(study: optuna.Study, storage: optuna.storages.RDBStorage) -> optuna.Study:
    _BACKENDS[study] = storage
    return study


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study`` (the key of the storage's trial methods)."""
    return backend(study).get_study_id_from_name(study.study_name)


def fail_stale(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail the RUNNING trials whose heartbeat is older than ``GRACE_S`` (Optuna's
    ``fail_stale_trials``); returns the ones this call failed (another process that failed one
    first gets it instead), as they were when failed. A no-op on a storage without heartbeats."""
    import optuna

    failed: list[optuna.trial.FrozenTrial] = []
    token = _STALE.set(failed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    finally:
        _STALE.reset(token)
    return failed


def _note_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The storage's ``heartbeat_stale_trial_callback``: Optuna calls it for each trial it failed."""
    failed = _STALE.get()
    if failed is None:  # failed by something other than ``fail_stale``: nobody will re-queue it
        log.warning("trial %d failed for a stale heartbeat outside hpo's recovery", trial.number)
        return
    failed.append(trial)


def study_names(storage: optuna.storages.RDBStorage) -> list[str]:
    """The names of all studies in the storage."""
    with _db_errors(str(storage.url), "listing studies"):
        return [s.study_name for s in storage.get_all_studies()]


def create(
    study_spec: StudySpec,
    url: str | None = None,
    *,
    data_report: dict[str, Any] | None = None,
    history: Any = None,
) -> optuna.Study:
    """Create a study from a validated spec; nothing is left behind if any step fails. The
    spec's ``enqueue`` configurations are queued as the study's first trials (warm start).

    Args:
        study_spec: the validated spec, stored with the study.
        url: the storage URL (``None``: ``resolve_url(None)``).
        data_report: the data dry run's cleaning counts (``hpo.data.check``), stored with the study.
        history: an earlier study's trials to copy in (``hpo.priorstudy.History``), checked already.

    Raises:
        UsageError: the URL is malformed, or a study of that name exists already.
        StorageError: the storage cannot be reached.
    """
    url = resolve_url(url)
    check_url(url)
    path = sqlite_file(url)
    new_file = path is not None and not path.exists()
    storage = open_storage(url, create=True)
    try:
        return _create_study(storage, url, study_spec, data_report, history)
    except BaseException:
        if new_file and path is not None:  # the file is ours: remove it rather than leave it empty
            storage.engine.dispose()
            for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                f.unlink(missing_ok=True)
        raise


def _create_study(
    storage: optuna.storages.RDBStorage,
    url: str,
    study_spec: StudySpec,
    report: dict[str, Any] | None,
    history: Any = None,
) -> optuna.Study:
    import optuna

    name = study_spec.name
    taken = UsageError(
        f"study {name!r} already exists in {mask(url)}; pick another with --name, "
        f"or remove it with `hpo study delete {name}`"
    )
    if name in study_names(storage):
        raise taken
    with _db_errors(url, "creating the study"):
        try:
            study = optuna.create_study(  # several objectives: a multi-objective study
                storage=storage, study_name=name, directions=study_spec.directions
            )
        except optuna.exceptions.DuplicatedStudyError:  # another process created it just now
            raise taken from None
        try:
            study.set_user_attr(SPEC_ATTR, study_spec.to_json())
            if report is not None:
                study.set_user_attr(DATA_REPORT_ATTR, report)
            if history is not None:  # an earlier study's trials, as the sampler's history
                study.add_trials(history.trials)
                study.set_user_attr(WARM_START_ATTR, history.record())
            for i, params in enumerate(study_spec.enqueue):  # warm start: tried first, in order
                enqueue(study, params, enqueued=i)
        except BaseException:
            optuna.delete_study(study_name=name, storage=storage)
            raise
    return _opened(study, storage)


def enqueue(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    """Queue a trial with ``params`` (asked before any new sample), carrying ``attrs`` and the
    parameters themselves as user attributes (``ENQUEUED_ATTR``: what a trial killed before it
    wrote its parameters is re-queued with)."""
    study.enqueue_trial(params, user_attrs={**attrs, ENQUEUED_ATTR: dict(params)}, skip_if_exists=False)


def load(
    name: str | None, url: str | None = None, *, heartbeat: bool = False, sampler: Any = None
) -> optuna.Study:
    """Load a study by name, or the only study when ``name`` is None.

    Raises:
        UsageError: no storage, no such study, or several and no name given (the message lists them).
        StorageError: the storage cannot be reached.
    """
    import optuna

    url = resolve_url(url)
    storage = open_storage(url, heartbeat=heartbeat)
    names = study_names(storage)
    where = mask(url)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif not names:
            raise UsageError(f"no study in {where}; create one with `hpo study create studies/NAME.yaml`")
        else:
            raise UsageError(
                f"{where} holds {len(names)} studies ({', '.join(names)}); name one with --study"
            )
    elif name not in names:
        known = ", ".join(names) or "none"
        raise UsageError(
            f"no study {name!r} in {where} (studies there: {known}); check the name with `hpo study list`"
        )
    with _db_errors(url, "loading the study"):
        return _opened(optuna.load_study(study_name=name, storage=storage, sampler=sampler), storage)


def direction(study: Any) -> optuna.study.StudyDirection:
    """The direction of a study's first objective (``study.direction`` refuses a multi-objective
    study): what single-value code paths (ASHA, the best checkpoint, "best so far") rank by."""
    return study.directions[0]


def spec_of(study: optuna.Study) -> StudySpec:
    """The spec stored with a study.

    Raises:
        UsageError: the study was not created by hpo.
    """
    text = study.user_attrs.get(SPEC_ATTR)
    if text is None:
        raise UsageError(f"study {study.study_name!r} was not created by hpo (it has no stored spec)")
    return spec_mod.from_json(text)


def data_report(study: optuna.Study) -> dict[str, Any] | None:
    """The cleaning counts stored at creation (``hpo.data.check``), if any."""
    report = study.user_attrs.get(DATA_REPORT_ATTR)
    return report if isinstance(report, dict) else None


def delete(name: str, url: str | None = None) -> None:
    """Delete a study and all its trials from the storage.

    Raises:
        UsageError: no storage or no such study.
        StorageError: the storage cannot be reached.
    """
    import optuna

    url = resolve_url(url)
    study = load(name, url)
    with _db_errors(url, "deleting the study"):
        optuna.delete_study(study_name=study.study_name, storage=backend(study))
