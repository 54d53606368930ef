"""Storage URLs: which database a command uses (``--storage``, else ``$HPO_STORAGE``, else
``sqlite:///hpo.db``), a malformed URL, unknown database kind or missing driver refused before
anything is opened (``UsageError``), and a password never shown (``mask``, ``scrub``).
``hpo.storage`` re-exports these for its callers."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote

from hpo.errors import UsageError

DEFAULT_URL = "sqlite:///hpo.db"
FIX = "check --storage / HPO_STORAGE (e.g. sqlite:///hpo.db or postgresql://USER@HOST:5432/DB)"
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the given one, else ``$HPO_STORAGE``, else ``sqlite:///hpo.db``."""
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_URL


def _password(url: str) -> tuple[int, int] | None:
    """Where the password of ``scheme://user:password@host/...`` is in ``url``, if it has one.

    The password runs to the *last* ``@``, so one holding an unescaped ``@``, ``/`` or ``?`` is
    still masked whole (an ``@`` in the query masks a little too much, which is the safe side).
    """
    start = url.find("://")
    if start < 0:
        return None
    start += 3
    at = url.rfind("@", start)
    colon = url.find(":", start, at) if at >= 0 else -1
    if colon < 0 or "/" in url[start:colon]:  # no userinfo (a path such as sqlite:////a:b@c.db)
        return None
    return colon + 1, at


def mask(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to print and to store)."""
    span = _password(url)
    if span is not None:
        url = url[: span[0]] + "***" + url[span[1] :]
    return _QUERY_PASSWORD.sub(r"\g<key>***", url)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with the URL masked and its password nowhere."""
    text = text.replace(url, mask(url))
    span = _password(url)
    if span is not None:
        pw = url[span[0] : span[1]]
        for secret in {pw, unquote(pw)}:
            if len(secret) >= 3:  # a shorter one would garble the message; drivers do not echo it
                text = text.replace(secret, "***")
    return text


def is_local_sqlite(url: str) -> bool:
    """Whether ``url`` is a SQLite file only this machine can use."""
    return url.startswith("sqlite:")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for in-memory SQLite and other databases)."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def exists(url: str | None = None) -> bool:
    """Whether the storage is there to read: False only for a SQLite file that does not exist."""
    url = resolve_url(url)
    check_url(url)
    path = sqlite_file(url)
    return path is None or path.is_file()


def check_url(url: str) -> None:
    """Refuse a malformed URL, an unknown database kind or a missing driver, opening nothing.

    Raises:
        UsageError: naming the (masked) URL and what to change.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = mask(url)
    if "://" not in url:
        raise UsageError(f"storage {shown!r} is not a database URL; {FIX}")
    span = _password(url)
    if span is not None and any(c in url[span[0] : span[1]] for c in "@/"):
        raise UsageError(
            f"storage {shown}: the password holds '@' or '/'; percent-encode them (%40, %2F) "
            "or keep the password in ~/.pgpass"
        )
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError as e:
        raise UsageError(f"storage {shown}: unknown database kind {url.split(':')[0]!r}; {FIX}") from e
    except (ArgumentError, ValueError) as e:
        raise UsageError(f"storage {shown}: malformed URL ({scrub(str(e), url)}); {FIX}") from e
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise UsageError(
            f"storage {shown}: the Python driver for {parsed.drivername} is not installed ({e.name}); "
            "install it, or use sqlite:///FILE or postgresql://... (psycopg is installed)"
        ) from e
    path = sqlite_file(url)
    if path is not None and not path.resolve().parent.is_dir():
        raise UsageError(f"storage {shown}: folder {path.resolve().parent} does not exist; create it first")
