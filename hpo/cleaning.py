"""Cleaning and splitting examples, one row at a time (pure Python, no tokenizer).

Cleaning strips every field and drops empty rows and exact duplicates (after whitespace
normalisation). Duplicates are found by a 64-bit hash of each kept example (about 60 bytes a
row, whatever the row's size; two different examples share a hash with a chance of about
n**2 / 2**65: one in 3.7 million for 10 million rows). The train/validation split is a seeded
shuffle of the example indices, held in 4 bytes each.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hpo import formats
from hpo.errors import DataError


@dataclass
class CleanReport:
    """What cleaning did to the rows of one file."""

    read: int = 0
    empty: int = 0
    duplicate: int = 0
    kept: int = 0


class Cleaner:
    """Cleans rows one at a time: strip, drop empty rows and exact duplicates (after whitespace
    normalisation), counting each in ``report``. Remembers a 64-bit hash of each kept example,
    not the example, and one byte a row: whether it was kept, so ``replay`` can give the same
    examples again from a second read of the same rows without hashing them.

    Args:
        keys: the fields that make one example, in order.
        source: the file name, for errors.
        settings: the spec settings naming ``keys`` (default: prompt/completion or text field).
    """

    def __init__(self, keys: list[str], source: str, settings: list[str] | None = None):
        self.keys, self.source, self.settings = keys, source, settings
        self.report = CleanReport()
        self._seen: set[int] = set()
        self.flags = bytearray()  # 1 for each row read that was kept

    def __call__(self, row: dict[str, Any]) -> tuple | None:
        """The row's example (tuple of stripped strings; a chat's messages as one tuple of
        (role, content) pairs), or None when it is empty or a duplicate.

        Raises:
            DataError: the row lacks a field.
        """
        self.report.read += 1
        self.flags.append(0)
        keys = self.keys
        missing = [k for k in keys if k not in row]
        if missing:
            where = f"{self.source}:{row.get('_line', '?')}"
            fields = ", ".join(k for k in row if k != "_line") or "none"
            raise DataError(
                f"{where}: no field {missing[0]!r} (fields: {fields}); "
                f"add it, or set data.{_setting(keys, missing[0], self.settings)} in the spec"
            )
        example = tuple(_stripped(row[k], f"{self.source}:{row.get('_line', '?')}", k) for k in keys)
        if not all(_usable(x) for x in example):
            self.report.empty += 1
            return None
        digest = hashlib.blake2b(repr(tuple(_normal(x) for x in example)).encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        if key in self._seen:
            self.report.duplicate += 1
            return None
        self._seen.add(key)
        self.report.kept += 1
        self.flags[-1] = 1
        return example

    def kept(self, rows: Iterable[dict[str, Any]]) -> Iterator[tuple]:
        """The examples of ``rows`` that cleaning keeps, in order."""
        for row in rows:
            if (example := self(row)) is not None:
                yield example

    def replay(self, rows: Iterable[dict[str, Any]]) -> Iterator[tuple]:
        """The kept examples again, from the same rows read a second time.

        Raises:
            DataError: the rows are not those cleaned (the file changed in between).
        """
        try:
            for row, keep in zip(rows, self.flags, strict=True):
                if keep:
                    yield tuple(_stripped(row[k], self.source, k) for k in self.keys)
        except ValueError as e:  # zip: more or fewer rows than the first time
            raise DataError(f"{self.source}: changed while being prepared; run again") from e

    def finish(self) -> CleanReport:
        """The counts, once every row went through; forgets the hashes.

        Raises:
            DataError: nothing is left.
        """
        self._seen = set()
        r = self.report
        if not r.kept:
            raise DataError(
                f"{self.source}: no usable rows after cleaning (read {r.read}: {r.empty} empty, "
                f"{r.duplicate} duplicate); every example needs non-empty {' and '.join(self.keys)}"
            )
        return r


def clean(
    rows: list[dict[str, Any]], keys: list[str], source: str, settings: list[str] | None = None
) -> tuple[list[tuple], CleanReport]:
    """Clean a list of rows (see ``Cleaner``).

    Args:
        rows: dicts as read (``hpo.formats.read_rows``).
        keys: the fields that make one example, in order.
        source: the file name, for errors.
        settings: the spec settings naming ``keys`` (default: prompt/completion or text field).

    Returns:
        The kept examples and the counts.

    Raises:
        DataError: a row lacks a field, or nothing is left.
    """
    cleaner = Cleaner(keys, source, settings)
    kept = list(cleaner.kept(rows))
    return kept, cleaner.finish()


def _stripped(value: Any, where: str, key: str) -> Any:
    if isinstance(value, tuple):  # a chat's messages: strip each content
        return tuple((role, content.strip()) for role, content in value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} holds a {type(value).__name__}; expected text")
    return value.strip()


def _usable(value: Any) -> bool:
    return formats.chat_has_reply(value) if isinstance(value, tuple) else bool(value)


def _normal(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple((role, " ".join(content.split())) for role, content in value)
    return " ".join(value.split())


def _setting(keys: list[str], key: str, settings: list[str] | None) -> str:
    if settings is None:
        settings = ["prompt_field", "completion_field"] if len(keys) == 2 else ["text_field"]
    return settings[keys.index(key)]


def n_validation(n: int, fraction: float) -> int:
    """How many of ``n`` examples a ``fraction`` split puts in validation (at least one of each).

    Raises:
        DataError: fewer than 2 examples.
    """
    if n < 2:
        raise DataError(
            f"need at least 2 examples to split off a validation set, got {n}; "
            "add data or set data.validation_path"
        )
    return min(n - 1, max(1, round(n * fraction)))


def validation_indices(n: int, fraction: float, seed: int) -> array:
    """The indices of the examples a seeded split of ``n`` puts in validation (unsorted), held
    in 4 bytes each: the shuffle is ``random.Random(seed).shuffle`` of ``range(n)``."""
    n_val = n_validation(n, fraction)
    order = array("I", range(n))  # shuffles exactly as the list would, in a tenth of the memory
    random.Random(seed).shuffle(order)
    return order[:n_val]


def split(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded train/validation split of examples (at least one of each), each in input order."""
    val = set(validation_indices(len(examples), fraction, seed))
    return [e for i, e in enumerate(examples) if i not in val], [
        e for i, e in enumerate(examples) if i in val
    ]
