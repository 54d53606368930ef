"""Packing tokenized examples into fixed blocks, streamed into ``.npy`` files a slab at a time.

Examples are packed whole (one never straddles two blocks); each block carries position ids
that restart at 0 for every example, so transformers masks attention block-diagonally and the
packed loss is the sum of the per-example losses (``hpo.data`` says why; ``tests/test_packing.py``
checks it). The tail of a block is padding with label ``IGNORE`` and positions of its own.

A ``Packer`` holds one open block as Python lists and a buffer of finished blocks (about
``FLUSH_TOKENS`` tokens) that it hands to a sink when full, so its memory does not grow with
the data; ``NpyWriter`` is the sink that appends those blocks to an int32 ``.npy`` file whose
header gets the final row count on close. numpy is imported where used (``import hpo.data``
stays light for ``hpo study create``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

IGNORE = -100  # label of tokens that carry no loss
FLUSH_TOKENS = 1 << 18  # tokens per array buffered before the sink gets them (1 MiB of int32)

#: Receives finished blocks: (ids, labels, positions), each an int32 array of shape (n, block).
Sink = Callable[[Any, Any, Any], None]


class Packer:
    """Packs (ids, labels) examples whole into blocks of ``block`` tokens, one example at a time.

    Each example's positions count from 0 and its first token carries no loss (alone, nothing
    predicts it; packed, the previous example's last token would). An example longer than a
    block is cut to its first block (``overlong="truncate"``) or left out (``"drop"``).

    Args:
        block: tokens per block.
        pad_id: the id that fills a block's tail.
        overlong: ``"truncate"`` or ``"drop"``.
        sink: called with each buffer of finished blocks (the arrays are reused afterwards).
        flush_blocks: blocks per buffer (default: about ``FLUSH_TOKENS`` tokens).
    """

    def __init__(self, block: int, pad_id: int, overlong: str, sink: Sink, flush_blocks: int | None = None):
        import numpy as np

        self.block, self.pad_id, self.overlong, self.sink = block, pad_id, overlong, sink
        rows = flush_blocks or max(1, FLUSH_TOKENS // block)
        self._buf = [np.empty((rows, block), dtype=np.int32) for _ in range(3)]
        self._pad_pos = np.arange(block, dtype=np.int32)
        self._n = 0  # finished blocks in the buffer
        self._ids: list[int] = []
        self._labels: list[int] = []
        self._pos: list[int] = []
        self.blocks = 0  # blocks handed to the sink
        self.loss_tokens = 0  # tokens of those blocks that carry loss
        self.truncated = 0  # examples cut to one block (overlong: truncate)
        self.dropped = 0  # examples left out for their length (overlong: drop)

    def add(self, ids: list[int], labels: list[int]) -> None:
        """Pack one example (its ids and labels, as long as each other)."""
        if len(ids) > self.block:
            if self.overlong == "drop":
                self.dropped += 1
                return
            ids, labels, self.truncated = ids[: self.block], labels[: self.block], self.truncated + 1
        if len(self._ids) + len(ids) > self.block:
            self._close_block()
        self._ids += ids
        self._labels += [IGNORE, *labels[1:]]  # nothing before an example predicts its first token
        self._pos += range(len(ids))

    def close(self) -> None:
        """Finish the open block and hand every buffered block to the sink."""
        if self._ids:
            self._close_block()
        self._flush()

    def _close_block(self) -> None:
        n, k = len(self._ids), self._n
        ids, labels, pos = self._buf
        ids[k, :n], ids[k, n:] = self._ids, self.pad_id
        labels[k, :n], labels[k, n:] = self._labels, IGNORE
        pos[k, :n], pos[k, n:] = self._pos, self._pad_pos[: self.block - n]  # the padding: a segment
        self._ids, self._labels, self._pos = [], [], []
        self._n += 1
        if self._n == len(ids):
            self._flush()

    def _flush(self) -> None:
        if not self._n:
            return
        ids, labels, pos = (a[: self._n] for a in self._buf)
        self.loss_tokens += int((labels != IGNORE).sum())
        self.blocks += self._n
        self.sink(ids, labels, pos)
        self._n = 0


@dataclass
class Packed:
    """Blocks of token ids, labels (-100: no loss) and positions (0 at each example's start)."""

    ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    pos: list[list[int]] = field(default_factory=list)
    truncated: int = 0  # examples cut to one block (overlong: truncate)
    dropped: int = 0  # examples left out for their length (overlong: drop)


def pack(
    examples: list[tuple[list[int], list[int]]], block: int, pad_id: int, overlong: str = "truncate"
) -> Packed:
    """Pack (ids, labels) examples whole into blocks of ``block`` tokens, in memory (see ``Packer``)."""
    out = Packed()

    def keep(ids, labels, pos) -> None:
        out.ids.extend(ids.tolist())
        out.labels.extend(labels.tolist())
        out.pos.extend(pos.tolist())

    packer = Packer(block, pad_id, overlong, keep)
    for ids, labels in examples:
        packer.add(ids, labels)
    packer.close()
    out.truncated, out.dropped = packer.truncated, packer.dropped
    return out


def split_long(docs: list[list[int]], block: int) -> tuple[list[list[int]], int]:
    """Cut token sequences longer than ``block`` into block-sized pieces; returns the pieces and
    how many sequences were cut."""
    pieces: list[list[int]] = []
    cut = 0
    for d in docs:
        if len(d) > block:
            cut += 1
        pieces += [d[i : i + block] for i in range(0, len(d), block)]
    return pieces, cut


class NpyWriter:
    """An int32 ``.npy`` file of shape (rows, width), appended a slab of rows at a time.

    The header is written last, once the row count is known: it is reserved at open (a 2-D
    int32 header is 128 bytes for any row count below 10**30, numpy pads it to 64-byte lines).
    """

    def __init__(self, path: str | os.PathLike, width: int):
        self.path, self.width, self.rows = path, width, 0
        self._offset = len(npy_header(0, width))
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._file.seek(self._offset)

    def write(self, rows: Any) -> None:
        """Append rows (an int32 array of shape (n, width))."""
        assert rows.shape[1:] == (self.width,) and rows.dtype.name == "int32", (rows.shape, rows.dtype)
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> int:
        """Write the header with the final row count; returns the row count."""
        header = npy_header(self.rows, self.width)
        assert len(header) == self._offset, "the .npy header changed size"  # see the class doc
        self._file.seek(0)
        self._file.write(header)
        self._file.close()
        return self.rows


def npy_header(rows: int, width: int) -> bytes:
    """The ``.npy`` (format 1.0) header of a C-ordered int32 array of shape (rows, width)."""
    import numpy as np

    buf = io.BytesIO()
    header = {"descr": np.dtype(np.int32).str, "fortran_order": False, "shape": (rows, width)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()
