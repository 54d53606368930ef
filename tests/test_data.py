"""Data preparation: reading, cleaning, splitting, packing (pure, hand-made rows) and one real
prepare() on the tiny model's tokenizer with its cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpo import data, formats
from hpo.errors import DataError
from hpo.spec import DataSpec
from tests.conftest import SUPPORT, write_rows


def _spec(path: Path, **kw) -> DataSpec:
    return DataSpec.model_validate({"path": str(path), **kw}, context={"stored": True})


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- reading


def test_read_jsonl_skips_blank_lines_and_numbers_rows(tmp_path):
    p = _jsonl(
        tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "", {"prompt": 1, "completion": None}]
    )
    rows = data.read_rows(_spec(p), str(p))
    assert rows == [
        {"prompt": "a", "completion": "b", "_line": "1"},
        {"prompt": "1", "completion": "", "_line": "3"},
    ]


def test_read_jsonl_bad_line_is_named(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "{not json", {"prompt": "c"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        data.read_rows(_spec(p), str(p))
    p = _jsonl(tmp_path / "e.jsonl", [{"prompt": "a", "completion": "b"}, "[1, 2]"])
    with pytest.raises(DataError, match=r"e\.jsonl:2: expected a JSON object, got list"):
        data.read_rows(_spec(p), str(p))


def test_read_jsonl_with_a_byte_order_mark(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a", "completion": "b"}).encode() + b"\n")
    assert data.read_rows(_spec(p), str(p))[0]["prompt"] == "a"


def test_read_csv_named_columns_and_lines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('\ufeffq,a,extra\n"hi, there",hello,x\nhow,"multi\nline",y\n')
    rows = data.read_rows(_spec(p, format="csv", prompt_field="q", completion_field="a"), str(p))
    assert [(r["q"], r["a"], r["_line"]) for r in rows] == [
        ("hi, there", "hello", "2"),
        ("how", "multi\nline", "4"),
    ]


def test_read_csv_missing_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("question,answer\nq,a\n")
    with pytest.raises(
        DataError, match=r"missing column\(s\) prompt, completion \(columns: question, answer\)"
    ):
        data.read_rows(_spec(p, format="csv"), str(p))


def test_read_csv_with_only_a_text_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text\nhello\nworld\n")
    d = _spec(p, format="csv")
    rows = data.read_rows(d, str(p))
    assert formats.kind(d, rows) == "text" and [r["text"] for r in rows] == ["hello", "world"]


def test_read_csv_malformed_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("prompt,completion\nq,a\nq2," + "x" * 200_000 + "\n")  # over csv's field limit
    with pytest.raises(DataError, match=r"d\.csv:3: not valid CSV"):
        data.read_rows(_spec(p, format="csv"), str(p))


def test_read_text_lines_and_custom_text_field(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("one\n\ntwo\n")
    rows = data.read_rows(_spec(p, format="text", text_field="body"), str(p))
    assert [r["body"] for r in rows] == ["one\n", "\n", "two\n"]


def test_not_utf8_and_unreadable(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8 text"):
        data.read_rows(_spec(p), str(p))
    with pytest.raises(DataError, match="cannot read"):
        data.read_rows(_spec(p), str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------- cleaning and splitting


def test_clean_counts_on_hand_made_rows():
    rows = [
        {"p": " a ", "c": "b"},
        {"p": "a", "c": " b"},  # duplicate after stripping
        {"p": "a  x", "c": "b"},
        {"p": "a x", "c": "b"},  # duplicate after whitespace normalisation
        {"p": "", "c": "b"},  # empty prompt
        {"p": "q", "c": "   "},  # empty completion
        {"p": "q", "c": "r"},
    ]
    kept, report = data.clean(rows, ["p", "c"], "f.jsonl")
    assert kept == [("a", "b"), ("a  x", "b"), ("q", "r")]
    assert (report.read, report.empty, report.duplicate, report.kept) == (7, 2, 2, 3)


def test_cleaner_replays_the_kept_examples_from_a_second_read():
    rows = [{"t": " a "}, {"t": "b"}, {"t": "a"}, {"t": ""}, {"t": "c "}]
    cleaner = data.Cleaner(["t"], "f.txt")
    kept = list(cleaner.kept(rows))
    assert kept == [("a",), ("b",), ("c",)] and cleaner.finish().duplicate == 1
    assert list(cleaner.replay(iter(rows))) == kept  # no hashing: by the flags of the first read
    for changed in (rows[:4], [*rows, {"t": "d"}]):
        with pytest.raises(DataError, match=r"f\.txt: changed while being prepared"):
            list(cleaner.replay(iter(changed)))


def test_clean_nothing_left():
    with pytest.raises(
        DataError, match=r"f\.txt: no usable rows after cleaning \(read 2: 2 empty, 0 duplicate\)"
    ):
        data.clean([{"t": " "}, {"t": ""}], ["t"], "f.txt")


def test_clean_missing_field_names_line_and_spec_key():
    rows = [{"prompt": "a", "completion": "b", "_line": "1"}, {"prompt": "c", "answer": "d", "_line": "2"}]
    with pytest.raises(
        DataError,
        match=r"f\.jsonl:2: no field 'completion' \(fields: prompt, answer\).*data\.completion_field",
    ):
        data.clean(rows, ["prompt", "completion"], "f.jsonl")


def test_split_is_seeded_disjoint_and_covers_all():
    examples = list(range(100))
    train, val = data.split(examples, 0.1, seed=3)
    assert (train, val) == data.split(examples, 0.1, seed=3)
    assert val != data.split(examples, 0.1, seed=4)[1]
    assert len(val) == 10 and sorted(train + val) == examples and not set(train) & set(val)


def test_split_edges():
    assert data.split([1, 2], 0.01, 0) in (([1], [2]), ([2], [1]))  # at least one of each
    with pytest.raises(DataError, match="need at least 2 examples"):
        data.split([1], 0.1, 0)


# ---------------------------------------------------------------- packing


def test_pack_keeps_examples_whole_and_pads_labels():
    examples = [([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5]), ([6, 7, 8, 9], [-100, -100, 8, 9])]
    p = data.pack(examples, block=5, pad_id=0)
    assert p.ids == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert p.labels == [[-100, 2, 3, -100, 5], [-100, -100, 8, 9, -100]]
    assert p.pos == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]  # each example (and the padding) from 0
    assert (p.truncated, p.dropped) == (0, 0)


def test_pack_never_splits_an_example_and_counts_truncation():
    examples = [([1, 2, 3], [1, 2, 3]), ([4, 5, 6], [4, 5, 6]), (list(range(10, 18)), list(range(10, 18)))]
    p = data.pack(examples, block=4, pad_id=0)
    assert p.ids == [[1, 2, 3, 0], [4, 5, 6, 0], [10, 11, 12, 13]]
    # an example's first token carries no loss: nothing of its own comes before it
    assert p.labels == [[-100, 2, 3, -100], [-100, 5, 6, -100], [-100, 11, 12, 13]]
    assert p.truncated == 1 and p.dropped == 0
    assert all(len(b) == 4 for b in p.ids + p.labels + p.pos)


def test_pack_can_drop_overlong_examples():
    examples = [([1, 2], [1, 2]), (list(range(10, 18)), list(range(10, 18))), ([3], [3])]
    p = data.pack(examples, block=4, pad_id=0, overlong="drop")
    assert p.ids == [[1, 2, 3, 0]] and p.pos == [[0, 1, 0, 0]]
    assert (p.truncated, p.dropped) == (0, 1)


def test_split_long_cuts_documents_into_block_pieces():
    pieces, cut = data.split_long([[1, 2], [3, 4, 5, 6, 7], [8, 9, 10, 11]], block=4)
    assert pieces == [[1, 2], [3, 4, 5, 6], [7], [8, 9, 10, 11]] and cut == 1


# ---------------------------------------------------------------- the dry run at create time


def test_check_reports_cleaning_and_split(tmp_path):
    p = _jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]
        + [{"prompt": "q0", "completion": "a0"}, {"prompt": " ", "completion": "x"}],
    )
    report = data.check(_spec(p, validation_fraction=0.1))
    assert report == {
        "train": {"read": 22, "empty": 1, "duplicate": 1, "kept": 20},
        "kind": "pairs",
        "pairs": True,
        "examples": {"train": 18, "validation": 2},
    }
    assert json.loads(json.dumps(report)) == report  # stored as a study user attribute
    assert data.describe(report) == (
        "data: read 22 rows, dropped 1 empty and 1 duplicate, kept 20 prompt/completion pairs "
        "(18 train / 2 validation)"
    )


def test_check_with_a_validation_file(tmp_path):
    train = write_rows(tmp_path / "t.jsonl", 30)
    val = write_rows(tmp_path / "v.jsonl", 5, start=100)
    report = data.check(_spec(train, validation_path=str(val)))
    assert (
        report["validation"]["read"] == 5 and report["examples"]["validation"] == report["validation"]["kept"]
    )
    assert "validation: read 5" in data.describe(report)


def test_check_text_format(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("alpha\n\nbeta\nalpha\ngamma\n")
    report = data.check(_spec(p, format="text"))
    assert report["train"] == {"read": 5, "empty": 1, "duplicate": 1, "kept": 3} and not report["pairs"]
    assert "kept 3 texts" in data.describe(report)


def test_hpo_data_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, hpo.data; print([m for m in ('torch', 'transformers', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- prepare() on the real tokenizer


def test_prepare_end_to_end_and_cache_reuse(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    src = write_rows(tmp_path / "d.jsonl", 60)
    d = _spec(src, block_size=64, validation_fraction=0.2)
    p = data.prepare(d, tiny_model, seed=0, cache_root=tmp_path / "cache")
    assert Path(p.path).parent == tmp_path / "cache" / "data" and p.block_size == 64
    arrays = p.arrays()
    assert arrays["train_ids"].shape == (p.train_blocks, 64) and arrays["val_ids"].shape == (p.val_blocks, 64)
    n = p.cleaning["examples"]
    assert n["train"] + n["validation"] == p.cleaning["train"]["kept"] and n["validation"] == round(
        0.2 * (n["train"] + n["validation"])
    )
    labels = arrays["train_labels"]
    # the loss is on completions only: every block has ignored (prompt/pad) and counted tokens
    assert ((labels == -100).any(axis=1)).all() and ((labels != -100).any(axis=1)).all()
    assert p.train_tokens == int((labels != -100).sum())
    # truncation (an example longer than a block keeps its first block) is counted per split
    tok = data.load_tokenizer(tiny_model)
    kept, _ = data.clean(data.read_rows(d, str(src)), ["prompt", "completion"], str(src))
    train_ex, val_ex = data.split(kept, 0.2, 0)
    too_long = {
        name: sum(len(ids) > 64 for ids, _ in formats.encode_pairs(tok, ex, tok.eos_token_id))
        for name, ex in (("train", train_ex), ("val", val_ex))
    }
    assert {k: v["truncated"] for k, v in p.cleaning["length"].items()} == too_long
    assert too_long["train"] > 0 and "truncated" in data.describe(p.cleaning)
    # positions restart at every example: each block starts at 0
    assert (arrays["train_pos"][:, 0] == 0).all() and arrays["train_pos"].shape == arrays["train_ids"].shape
    # padding trails and carries no loss
    pad_positions = arrays["train_ids"] == p.pad_id
    assert (labels[pad_positions] == -100).all()

    # same data + tokenizer + settings: the cache is reused, nothing is tokenized again
    stamp = os.path.getmtime(Path(p.path) / "meta.json")
    again = data.prepare(d, tiny_model, seed=0, cache_root=tmp_path / "cache")
    assert again.path == p.path and os.path.getmtime(Path(p.path) / "meta.json") == stamp
    # a different seed (another split) or block size is another fingerprint
    other = data.prepare(
        _spec(src, block_size=32, validation_fraction=0.2), tiny_model, 0, tmp_path / "cache"
    )
    assert other.fingerprint != p.fingerprint and other.block_size == 32
    assert data.fingerprint(d, "tok", 0) != data.fingerprint(d, "tok", 1)
    # a changed file is another fingerprint too
    fp = p.fingerprint
    write_rows(src, 60, start=1)
    assert data.fingerprint(d, data.tokenizer_identity(tiny_model), 0) != fp


def test_prepare_refuses_data_where_every_example_is_too_long(tmp_path, tiny_model):
    src = write_rows(tmp_path / "d.jsonl", 6)
    d = _spec(src, block_size=8, overlong="drop", validation_fraction=0.2)
    with pytest.raises(DataError, match=r"no train example fits a block of 8 tokens \(5 dropped as too"):
        data.prepare(d, tiny_model, 0, tmp_path)


# ---------------------------------------------------------------- streaming == the in-memory original


def _reference_arrays(d: DataSpec, tok, seed: int = 0) -> dict:
    """The six arrays as hpo prepared them before preparation streamed (b57783d): every row,
    example and token id in Python lists. A copy of that code, kept as the yardstick."""
    import random

    import numpy as np

    def clean(rows, keys):
        seen, kept = set(), []
        for row in rows:
            ex = tuple(
                tuple((r, c.strip()) for r, c in row[k]) if isinstance(row[k], tuple) else row[k].strip()
                for k in keys
            )
            if not all(formats.chat_has_reply(x) if isinstance(x, tuple) else x for x in ex):
                continue
            norm = tuple(
                tuple((r, " ".join(c.split())) for r, c in x) if isinstance(x, tuple) else " ".join(x.split())
                for x in ex
            )
            if norm not in seen:
                seen.add(norm)
                kept.append(ex)
        return kept

    def encode(examples):
        eos = tok.eos_token_id
        if kind == "pairs":
            ps = tok([p + "\n" for p, _ in examples], add_special_tokens=False)["input_ids"]
            cs = tok([c for _, c in examples], add_special_tokens=False)["input_ids"]
            return [(p + c + [eos], [-100] * len(p) + c + [eos]) for p, c in zip(ps, cs, strict=True)]
        if kind == "chat":
            render = formats._renderer(tok, d.chat_template)
            out = []
            for (messages,) in examples:
                ids, labels = [], []
                for text, loss in formats.chat_segments(messages, render):
                    piece = tok(text, add_special_tokens=False)["input_ids"]
                    ids, labels = ids + piece, labels + (piece if loss else [-100] * len(piece))
                if not ids or ids[-1] != eos:
                    ids, labels = ids + [eos], labels + [eos if messages[-1][0] == "assistant" else -100]
                out.append((ids, labels))
            return out
        docs = [x + [eos] for x in tok([e[0] for e in examples], add_special_tokens=False)["input_ids"]]
        return [(x[i : i + d.block_size],) * 2 for x in docs for i in range(0, len(x), d.block_size)]

    def pack(examples):
        blocks, cur = [], ([], [], [])
        for ids, labels in examples:
            if len(ids) > d.block_size:
                if d.overlong == "drop":
                    continue
                ids, labels = ids[: d.block_size], labels[: d.block_size]
            if len(cur[0]) + len(ids) > d.block_size:
                blocks.append(cur)
                cur = ([], [], [])
            cur = (cur[0] + ids, cur[1] + [-100, *labels[1:]], cur[2] + list(range(len(ids))))
        blocks += [cur] if cur[0] else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        n = [d.block_size - len(b[0]) for b in blocks]
        return (
            [b[0] + [pad] * k for b, k in zip(blocks, n, strict=True)],
            [b[1] + [-100] * k for b, k in zip(blocks, n, strict=True)],
            [b[2] + list(range(k)) for b, k in zip(blocks, n, strict=True)],
        )

    rows = data.read_rows(d, d.path)
    kind = formats.kind(d, rows)
    keys = formats.keys(d, kind)
    if d.validation_path:
        train, val = clean(rows, keys), clean(data.read_rows(d, d.validation_path), keys)
    else:
        examples = clean(rows, keys)
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_val = min(len(examples) - 1, max(1, round(len(examples) * d.validation_fraction)))
        val = [examples[i] for i in sorted(order[:n_val])]
        train = [examples[i] for i in sorted(order[n_val:])]
    out = {}
    for name, exs in (("train", train), ("val", val)):
        for suffix, blocks in zip(("ids", "labels", "pos"), pack(encode(exs)), strict=True):
            out[f"{name}_{suffix}"] = np.asarray(blocks, dtype=np.int32)
    return out


def _shipped(tmp_path: Path, case: str) -> DataSpec:
    """The shipped data as pairs, chats, text (every completion one line; 32-token blocks, so
    long lines are cut) and pairs with a validation file."""
    root = SUPPORT.parent
    if case == "pairs":
        return _spec(SUPPORT, block_size=256, validation_fraction=0.05)
    if case == "chat":
        return _spec(root / "support-chat.jsonl", format="chat", block_size=128, validation_fraction=0.1)
    if case == "text":
        text = tmp_path / "support.txt"
        text.write_text("".join(json.loads(r)["completion"] + "\n" for r in SUPPORT.read_text().splitlines()))
        return _spec(text, format="text", block_size=32, validation_fraction=0.1)
    lines = SUPPORT.read_text().splitlines(keepends=True)
    (tmp_path / "t.jsonl").write_text("".join(lines[:2500]))
    (tmp_path / "v.jsonl").write_text("".join(lines[2500:]))
    return _spec(
        tmp_path / "t.jsonl", block_size=64, validation_path=str(tmp_path / "v.jsonl"), overlong="drop"
    )


@pytest.mark.parametrize("case", ["pairs", "chat", "text", "validation file"])
def test_streamed_arrays_equal_the_in_memory_original(tmp_path, tiny_model, case):
    """Byte for byte, whatever the tokenizer's batch size: 1 example at a time, 7 (examples of a
    block come from different batches; a block spans the packer's buffers), the default."""
    import numpy as np

    d = _shipped(tmp_path, case)
    want = _reference_arrays(d, data.load_tokenizer(tiny_model))
    for chunk in (1, 7, data.CHUNK_ROWS):
        p = data.prepare(d, tiny_model, 0, tmp_path / f"cache-{chunk}", chunk_rows=chunk)
        got = p.arrays()
        for name, arr in want.items():
            assert got[name].dtype == np.int32 and np.array_equal(got[name], arr), (chunk, name)
        assert (p.train_blocks, p.val_blocks) == (len(want["train_ids"]), len(want["val_ids"]))
        assert p.train_tokens == int((want["train_labels"] != -100).sum())
        assert p.val_tokens == int((want["val_labels"] != -100).sum())


def test_prepare_reports_progress_through_a_callback_or_the_context(tmp_path, tiny_model):
    src = write_rows(tmp_path / "d.jsonl", 300)
    d = _spec(src, block_size=64)
    seen: list[tuple] = []
    data.prepare(d, tiny_model, 0, tmp_path / "c1", progress=lambda *a: seen.append(a), chunk_rows=100)
    reading = [s for s in seen if s[0] == "reading"]
    tokenizing = [s for s in seen if s[0] == "tokenizing"]
    assert (
        reading
        and reading[-1] == ("reading", 300, None)
        and seen.index(reading[-1]) < seen.index(tokenizing[0])
    )
    assert [s[1] for s in tokenizing] == sorted(s[1] for s in tokenizing) and len(tokenizing) >= 3
    kept = data.check(d)["train"]["kept"]
    assert kept < 300 and tokenizing[-1] == ("tokenizing", kept, kept)  # examples, after cleaning
    context: list[tuple] = []
    with data.progress_to(lambda *a: context.append(a)):
        data.check(d)
    assert context[-1] == ("reading", 300, None)
    told = len(context)
    data.check(d)  # outside the context: nobody is told
    assert len(context) == told


_MEMORY_CHILD = """
import json, os, re, sys
from pathlib import Path
from hpo import data
from hpo.spec import DataSpec
src, small, model, cache = sys.argv[1:5]
spec = lambda path: DataSpec.model_validate({"path": path, "block_size": 256}, context={"stored": True})
data.prepare(spec(small), model, 0, Path(cache) / "warm")  # imports and lazy imports: not growth
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
before = status("VmRSS")
p = data.prepare(spec(src), model, 0, Path(cache))
# VmHWM, not getrusage's ru_maxrss: that one keeps the forking parent's RSS across exec
print(json.dumps({"growth": status("VmHWM") - before, "blocks": p.train_blocks + p.val_blocks}))
"""


def test_twenty_thousand_rows_prepare_in_bounded_memory(tmp_path, tiny_model):
    """20,000 pairs (9,526 blocks of 256) prepare with the process growing < 64 MB over its size
    with the tokenizer loaded (VmHWM); measured: 6-20 MB. The bound: one tokenizer batch of 1,024 pairs
    as Python lists (~8 MB), the packer's buffer (3 MiB), the duplicate hashes (60 B a row:
    1.2 MB), the split (5 B a row) and the allocator's slack. Holding every row, example and
    token id in lists, as hpo did before it streamed, grew 192 MB on these rows (1.9 GB for
    200,000: docs/data.md)."""
    import subprocess
    import sys

    lines = SUPPORT.read_text().splitlines()
    src = tmp_path / "d.jsonl"
    with open(src, "w") as f:
        for i in range(20_000):
            row = json.loads(lines[i % len(lines)])
            f.write(
                json.dumps({"prompt": f"{row['prompt']} (ticket {i})", "completion": row["completion"]})
                + "\n"
            )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_CHILD,
            str(src),
            str(write_rows(tmp_path / "small.jsonl", 50)),
            tiny_model,
        ]
        + [str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["blocks"] > 5000 and out["growth"] < 64 * 2**20, out


def test_the_cli_draws_data_progress_on_a_terminal_only():
    """``hpo run``'s live view shows a bar while data is prepared and drops it once done;
    ``hpo study create``'s bar is drawn on a terminal and is None (quiet) elsewhere."""
    import io

    from rich.console import Console

    from hpo import progress

    live = progress.LiveProgress(target=4, t0=0.0, console=Console(file=io.StringIO()))
    live.data_progress("tokenizing", 1024, 200_000)
    view = Console(file=io.StringIO(), width=160)
    view.print(live)
    live.data_progress("tokenizing", 200_000, 200_000)
    done = Console(file=io.StringIO(), width=160)
    done.print(live)
    assert (
        "preparing data: tokenizing" in view.file.getvalue()
        and "1,024/200,000 examples" in view.file.getvalue()
    )
    assert "preparing data" not in done.file.getvalue() and "0/4 finished" in done.file.getvalue()
    with progress.data_progress(Console(file=io.StringIO())) as quiet:
        assert quiet is None
    out = io.StringIO()
    with progress.data_progress(Console(file=out, force_terminal=True, width=120)) as bar:
        assert bar is not None
        bar("reading", 5000, None)
    assert "preparing data: reading" in out.getvalue() and "5,000 rows" in out.getvalue()
