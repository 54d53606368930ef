"""The study storage: URLs, opening, and create / load / list / delete of studies.

Any SQLAlchemy URL that Optuna accepts works; SQLite (``sqlite:///hpo.db``) is the default and
PostgreSQL is the choice for a study shared by several machines. The study's spec is stored
with it (study user attribute ``hpo_spec``), so later commands need only the study's name.
Every database error is re-raised here as a ``StorageError`` naming the (masked) URL.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hpo import spec as spec_mod
from hpo.errors import StorageError, UsageError

if TYPE_CHECKING:
    import optuna

    from hpo.spec import StudySpec

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///hpo.db"
SPEC_ATTR = "hpo_spec"
#: Seconds between trial heartbeats, and how old a heartbeat may get before its trial is stale.
HEARTBEAT_S = 10
GRACE_S = 60

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@]*:)(?P<pw>[^@]*)(?P<tail>@)")


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the given one, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``."""
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_URL


def mask(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and to store)."""
    return _PASSWORD.sub(r"\g<head>***\g<tail>", url)


def is_local_sqlite(url: str) -> bool:
    """Whether ``url`` is a SQLite file only this machine can use."""
    return url.startswith("sqlite:")


@contextmanager
def _db_errors(url: str, doing: str) -> Iterator[None]:
    """Turn database errors into one ``StorageError`` line naming the masked URL."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(f"storage {mask(url)}: {doing} failed: {first}") from e
    except (ValueError, ImportError, ModuleNotFoundError) as e:  # bad URL, missing DB driver
        if isinstance(e, UsageError):
            raise
        raise StorageError(f"storage {mask(url)}: {doing} failed: {e}; check --storage / HPO_STORAGE") from e


def open_storage(url: str | None = None, *, heartbeat: bool = False) -> optuna.storages.RDBStorage:
    """Open (and create the tables of) the storage at ``url``.

    Args:
        url: a SQLAlchemy URL; ``None`` means ``resolve_url(None)``.
        heartbeat: record trial heartbeats so a dead run's RUNNING trials can be found (``hpo run``).

    Raises:
        StorageError: the URL is malformed, the database unreachable, or the driver missing.
    """
    import optuna

    url = resolve_url(url)
    _check_scheme(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # wait for a concurrent writer instead of failing with "database is locked"
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    if heartbeat:
        kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # hpo records heartbeats itself (ask/tell, not Study.optimize): Optuna's notes on that are noise
    warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
    with _db_errors(url, "opening"):
        storage = optuna.storages.RDBStorage(url, **kwargs)
        if url.startswith("sqlite:") and ":memory:" not in url and url != "sqlite://":
            _enable_wal(storage)
    return storage


def _check_scheme(url: str) -> None:
    if "://" not in url:
        raise StorageError(
            f"storage {mask(url)!r} is not a database URL; use e.g. sqlite:///hpo.db or "
            "postgresql://user@127.0.0.1:5432/db"
        )


def _enable_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL lets readers (dashboard, ``study show``) read while a run writes; it persists in the file."""
    from sqlalchemy import text

    with storage.engine.connect() as conn:
        conn.execute(text("PRAGMA journal_mode=WAL"))


def study_names(storage: optuna.storages.RDBStorage) -> list[str]:
    """The names of all studies in the storage."""
    with _db_errors(str(storage.url), "listing studies"):
        return [s.study_name for s in storage.get_all_studies()]


def create(study_spec: StudySpec, url: str | None = None) -> optuna.Study:
    """Create a study from a validated spec; nothing is left behind if any step fails.

    Raises:
        UsageError: a study of that name exists already.
        StorageError: the storage cannot be reached.
    """
    import optuna

    storage = open_storage(url)
    name = study_spec.name
    if name in study_names(storage):
        raise UsageError(
            f"study {name!r} already exists in {mask(resolve_url(url))}; pick another with --name, "
            f"or remove it with `hpo study delete {name}`"
        )
    with _db_errors(resolve_url(url), "creating the study"):
        study = optuna.create_study(
            storage=storage, study_name=name, direction=study_spec.objective.direction
        )
        try:
            study.set_user_attr(SPEC_ATTR, study_spec.to_json())
        except BaseException:
            optuna.delete_study(study_name=name, storage=storage)
            raise
    return study


def load(
    name: str | None, url: str | None = None, *, heartbeat: bool = False, sampler: Any = None
) -> optuna.Study:
    """Load a study by name, or the only study when ``name`` is None.

    Raises:
        UsageError: no such study, or several and no name given (the message lists them).
    """
    import optuna

    storage = open_storage(url, heartbeat=heartbeat)
    names = study_names(storage)
    where = mask(resolve_url(url))
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
        raise UsageError(f"no study {name!r} in {where} (studies there: {known})")
    with _db_errors(resolve_url(url), "loading the study"):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)


def spec_of(study: optuna.Study) -> StudySpec:
    """The spec stored with a study.

    Raises:
        UsageError: the study was not created by hpo.
    """
    text = study.user_attrs.get(SPEC_ATTR)
    if text is None:
        raise UsageError(f"study {study.study_name!r} was not created by hpo (it has no stored spec)")
    return spec_mod.from_json(text)


def delete(name: str, url: str | None = None) -> None:
    """Delete a study and all its trials from the storage."""
    import optuna

    study = load(name, url)
    with _db_errors(resolve_url(url), "deleting the study"):
        optuna.delete_study(study_name=study.study_name, storage=open_storage(url))
