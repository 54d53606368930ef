"""Reading a study's data into rows, and turning examples into token ids with their loss labels
(the chat template included). Pure Python: ``datasets`` only for the datasets and hub formats,
imported where used; the tokenizer is passed in.

Sources (``data.format``):

- ``jsonl`` / ``csv``: one example per line/record; prompt/completion pairs, or a text column.
- ``text``: a file holds one document per line; a folder holds one document per file (every
  regular, non-hidden file under it, in sorted path order).
- ``chat``: JSONL whose ``messages`` field is a list of ``{"role": ..., "content": ...}``.
- ``datasets``: a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict``: ``data.split``).
- ``hub``: a Hugging Face dataset id, loaded with ``datasets.load_dataset`` (needs the hub).

A row is a dict of field -> string (chat: ``messages`` -> tuple of (role, content) pairs) plus
``_line`` (its line, record or file) for messages that name where a problem is.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hpo.errors import DataError
from hpo.spec import DataSpec

Row = dict[str, Any]
Messages = tuple[tuple[str, str], ...]
#: The role whose turns carry the loss in a chat.
ASSISTANT = "assistant"


def read_rows(data: DataSpec, path: str, split: str | None = None) -> list[Row]:
    """Read the rows of one data source into a list (``iter_rows`` reads them one at a time).

    Raises:
        DataError: as ``iter_rows``.
    """
    return list(iter_rows(data, path, split))


def iter_rows(data: DataSpec, path: str, split: str | None = None) -> Iterator[Row]:
    """The rows of one data source, read as they are consumed (memory: one row, or one
    document of a text folder; ``datasets``/``hub`` rows come from the memory-mapped table).

    Args:
        data: the data spec (format and field names).
        path: the file, folder or dataset id.
        split: the split to read for ``datasets``/``hub`` (default ``data.split``).

    Raises:
        DataError: naming the file and line (or record) of the first unreadable row, a missing
            column, a malformed chat, or a dataset that cannot load.
    """
    try:
        rows = _source_rows(data, path, split)
        first = next(rows, None)
        if first is None:
            return
        chat = kind(data, [first]) == "chat"
        for row in itertools.chain([first], rows):
            yield _chat_row(row, data, path) if chat else row
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file and its permissions") from e


def _source_rows(data: DataSpec, path: str, split: str | None) -> Iterator[Row]:
    if data.format in ("datasets", "hub"):
        return _read_dataset(data, path, split or data.split)
    if data.format in ("jsonl", "chat"):
        return _read_jsonl(path)
    if data.format == "csv":
        return _read_csv(path, data)
    if os.path.isdir(path):
        return _read_text_folder(path, data.text_field)
    return _read_lines(path, data.text_field)


def _read_lines(path: str, field: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            yield {field: line, "_line": str(n)}


def kind(data: DataSpec, rows: Sequence[Row]) -> str:
    """What the rows hold: ``pairs`` (prompt/completion), ``text`` or ``chat``."""
    if data.format in ("text", "chat"):
        return data.format
    first = rows[0] if rows else {}
    if data.prompt_field in first:
        return "pairs"
    if data.messages_field in first:
        return "chat"
    return "text" if data.text_field in first else "pairs"


#: The spec settings that name each kind's fields (for messages that say what to change).
FIELD_SETTINGS = {
    "pairs": ["prompt_field", "completion_field"],
    "text": ["text_field"],
    "chat": ["messages_field"],
}


def keys(data: DataSpec, row_kind: str) -> list[str]:
    """The fields that make one example of ``row_kind``, in order."""
    return {
        "pairs": [data.prompt_field, data.completion_field],
        "text": [data.text_field],
        "chat": [data.messages_field],
    }[row_kind]


def _read_jsonl(path: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of line 1
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object"
                ) from e
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{n}: expected a JSON object, got {type(row).__name__}; "
                    'each line must be one object such as {"prompt": ..., "completion": ...}'
                )
            yield {k: _value(v) for k, v in row.items()} | {"_line": str(n)}


def _value(v: Any) -> Any:
    """A field as a string (None is empty); lists stay lists (a chat's messages)."""
    if isinstance(v, list):
        return v
    return "" if v is None else str(v)


def _read_csv(path: str, data: DataSpec) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            header = list(reader.fieldnames or [])
            check_columns(path, header, data)
            for row in reader:
                yield {k: v or "" for k, v in row.items() if k is not None} | {"_line": str(reader.line_num)}
        except csv.Error as e:
            where = f"{path}:{reader.line_num + 1}"  # csv counts the line it failed on only after
            raise DataError(f"{where}: not valid CSV ({e}); fix or remove that line") from e


def check_columns(path: str, header: list[str], data: DataSpec) -> None:
    """Tabular data needs the prompt and completion columns, the messages column, or the text column."""
    pairs = [data.prompt_field, data.completion_field]
    if all(c in header for c in pairs) or data.text_field in header or data.messages_field in header:
        return
    missing = [c for c in pairs if c not in header]
    raise DataError(
        f"{path}: missing column(s) {', '.join(missing)} (columns: {', '.join(header) or 'none'}); "
        "name yours with data.prompt_field / data.completion_field (or data.text_field, "
        "data.messages_field) in the spec"
    )


def _read_text_folder(path: str, field: str) -> Iterator[Row]:
    root = Path(path)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"{path}: the folder holds no files; put one document per file in it")
    for f in files:
        yield {field: f.read_text(encoding="utf-8-sig"), "_line": str(f.relative_to(root))}


def _read_dataset(data: DataSpec, path: str, split: str) -> Iterator[Row]:
    """Rows of a ``save_to_disk`` folder or a hub dataset (one split), numbered from 1."""
    table = _load_dataset(data.format, path, split)
    check_columns(f"{path} [{split}]", list(table.column_names), data)
    for n, row in enumerate(table, 1):
        yield {k: _value(v) for k, v in row.items()} | {"_line": f"record {n}"}


def _load_dataset(fmt: str, path: str, split: str):
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if fmt == "hub" and (endpoint := _unreachable_hub()):
        raise DataError(
            f"cannot load Hugging Face dataset {path!r}: the hub ({endpoint}) is unreachable from here; "
            "save the dataset with save_to_disk where it is reachable and use format: datasets "
            "(or set HF_HUB_OFFLINE=1 to read a copy in the local Hugging Face cache)"
        )
    try:
        if fmt == "datasets":
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path, split=split)
    except Exception as e:  # noqa: BLE001 - datasets/hub raise many kinds; all mean "cannot load"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if fmt == "hub":
            raise DataError(
                f"cannot load Hugging Face dataset {path!r} ({first}); the hub may be unreachable from "
                "here: save it with save_to_disk where it is reachable and use format: datasets"
            ) from e
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({first})") from e
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{path}: no split {split!r} (splits: {', '.join(loaded)}); set data.split "
                "(or data.validation_split)"
            )
        loaded = loaded[split]
    return loaded


def _unreachable_hub() -> str | None:
    """The hub's address when its name does not resolve (fails at once, instead of the minute of
    retries ``load_dataset`` spends offline); None when it resolves or HF_HUB_OFFLINE is set."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return constants.ENDPOINT
    return None


# ---------------------------------------------------------------- chat


def _chat_row(row: Row, data: DataSpec, source: str) -> Row:
    """Check a row's messages and turn them into (role, content) pairs, naming a bad row."""
    field = data.messages_field
    if field in row:
        row[field] = _messages(row[field], f"{source}:{row.get('_line', '?')}", field)
    return row


def _messages(value: Any, where: str, field: str) -> Messages:
    if not isinstance(value, list):
        raise DataError(
            f"{where}: {field} must be a list of {{role, content}} objects, got {type(value).__name__}"
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(
                f'{where}: {field}[{i}] must be an object with "role" (a string) and "content", got {m!r:.80}'
            )
        out.append((m["role"].strip(), "" if m["content"] is None else str(m["content"])))
    return tuple(out)


def chat_has_reply(messages: Messages) -> bool:
    """A chat is usable when at least one assistant turn has content."""
    return any(role == ASSISTANT and content.strip() for role, content in messages)


def simple_template(messages: Messages, generation: bool, eos: str) -> str:
    """hpo's chat template, for tokenizers without one::

        <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}{EOS}

    Every turn opens with ``<|role|>`` and a newline; an assistant turn ends with the EOS token,
    any other with a newline. ``generation`` adds the header of the assistant's next turn.
    """
    text = "".join(
        f"<|{role}|>\n{content}{eos if role == ASSISTANT else chr(10)}" for role, content in messages
    )
    return text + (f"<|{ASSISTANT}|>\n" if generation else "")


def chat_segments(messages: Messages, render: Callable[[Messages, bool], str]) -> list[tuple[str, bool]]:
    """Split a rendered chat into (text, carries loss) pieces: each assistant turn's reply (up to
    and including its end-of-turn marker) carries the loss; headers and other turns do not.

    The chat is rendered turn by turn; each rendering must extend the previous one.

    Raises:
        ValueError: a template whose rendering of a longer chat does not start with the shorter one.
    """
    out: list[tuple[str, bool]] = []
    prev = ""
    for i, (role, _) in enumerate(messages):
        if role == ASSISTANT:
            head = render(messages[:i], True) if i else render((), True)
            out.append((_extension(prev, head), False))
            prev = head
        full = render(messages[: i + 1], False)
        out.append((_extension(prev, full), role == ASSISTANT))
        prev = full
    return [(t, loss) for t, loss in out if t]


def _extension(prev: str, now: str) -> str:
    if not now.startswith(prev):
        raise ValueError("the chat template does not render turn by turn")
    return now[len(prev) :]


# ---------------------------------------------------------------- tokenizing examples


def _ids(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text: one batch call of the (fast) tokenizer, no special tokens added."""
    if not texts:
        return []
    return tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def encode_pairs(
    tok, examples: list[tuple[str, str]], eos: int, ignore: int = -100
) -> list[tuple[list[int], list[int]]]:
    """``prompt + "\n"`` (no loss) then ``completion + EOS`` (loss), as (ids, labels)."""
    prompts = _ids(tok, [p + "\n" for p, _ in examples])
    completions = _ids(tok, [c for _, c in examples])
    enc = []
    for p, c in zip(prompts, completions, strict=True):
        c = c + [eos]
        enc.append((p + c, [ignore] * len(p) + c))
    return enc


def encode_texts(
    tok, texts: list[str], eos: int, block: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Each text + EOS as (ids, labels), the loss on every token; a text longer than ``block``
    is cut into block-sized pieces, each its own example. Returns the examples and how many
    texts were cut."""
    enc = []
    cut = 0
    for d in _ids(tok, texts):
        d.append(eos)
        cut += len(d) > block
        enc += [(d[i : i + block], d[i : i + block]) for i in range(0, len(d), block)]
    return enc, cut


def encode_chats(
    tok, chats: list, eos: int, template: str = "auto", ignore: int = -100
) -> list[tuple[list[int], list[int]]]:
    """Each chat rendered (its tokenizer's template, or hpo's simple one) as (ids, labels): the
    loss on assistant replies; EOS ends the example (with loss when the chat ends on a reply).
    Every segment of every chat is tokenized in one batch call."""
    render = _renderer(tok, template)
    segmented = []
    for messages in chats:
        try:
            segmented.append(chat_segments(messages, render))
        except Exception as e:  # noqa: BLE001 - a template may fail in many ways (jinja, ValueError)
            raise DataError(
                f"cannot render a chat with the tokenizer's chat template ({str(e).splitlines()[0]}); "
                "set data.chat_template: simple"
            ) from e
    pieces = iter(_ids(tok, [text for segments in segmented for text, _ in segments]))
    enc = []
    for messages, segments in zip(chats, segmented, strict=True):
        ids: list[int] = []
        labels: list[int] = []
        for _, carries_loss in segments:
            piece = next(pieces)
            ids += piece
            labels += piece if carries_loss else [ignore] * len(piece)
        if not ids or ids[-1] != eos:
            ids.append(eos)
            labels.append(eos if messages[-1][0] == ASSISTANT else ignore)
        enc.append((ids, labels))
    return enc


def _renderer(tok, template: str):
    if template == "auto" and getattr(tok, "chat_template", None):

        def render(messages, generation: bool) -> str:
            chat = [{"role": r, "content": c} for r, c in messages]
            return tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation)

        return render
    eos_text = tok.eos_token
    return lambda messages, generation: simple_template(messages, generation, eos_text)
