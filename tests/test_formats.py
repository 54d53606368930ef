"""Each data format end to end through data preparation on small fixtures: chat (simple and
tokenizer templates, loss on assistant replies only), text folders, save_to_disk folders, a hub
id offline, malformed rows named by line, and length handling (truncate / drop / split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo import data, formats
from hpo.errors import DataError
from hpo.spec import DataSpec
from tests.conftest import SUPPORT


def _spec(path: Path | str, **kw) -> DataSpec:
    return DataSpec.model_validate({"path": str(path), **kw}, context={"stored": True})


def _support(n: int) -> list[dict]:
    return [json.loads(line) for line in SUPPORT.read_text(encoding="utf-8").splitlines()[:n]]


def _chat_file(path: Path, n: int = 120) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are the support desk."},
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        }
        for r in _support(n)
    ]
    rows += [rows[0], {"messages": [{"role": "user", "content": "only a question"}]}]  # duplicate, no reply
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- chat


def test_chat_rows_clean_and_report(tmp_path):
    d = _spec(_chat_file(tmp_path / "chat.jsonl"), format="chat")
    report = data.check(d)
    assert report["kind"] == "chat" and not report["pairs"]
    t = report["train"]
    assert (t["read"], t["empty"]) == (122, 1) and t["duplicate"] >= 1  # the support data has some too
    assert t["kept"] == 121 - t["duplicate"] and f"kept {t['kept']} chats" in data.describe(report)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (
            '{"messages": "hi"}',
            r"chat\.jsonl:2: messages must be a list of \{role, content\} objects, got str",
        ),
        ('{"messages": [{"role": "user"}]}', r"chat\.jsonl:2: messages\[0\] must be an object with \"role\""),
        ('{"messages": [{"content": "x", "role": 3}]}', r"chat\.jsonl:2: messages\[0\]"),
        ('{"turns": []}', r"chat\.jsonl:2: no field 'messages' \(fields: turns\).*data\.messages_field"),
        ("{oops", r"chat\.jsonl:2: not valid JSON"),
    ],
)
def test_malformed_chat_rows_are_named_by_line(tmp_path, line, needle):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(DataError, match=needle):
        data.check(_spec(p, format="chat"))


def test_simple_template_and_segments():
    chat = (("system", "Be brief."), ("user", "Refund?"), ("assistant", "Within 5 days."))
    text = formats.simple_template(chat, False, "<eos>")
    assert text == "<|system|>\nBe brief.\n<|user|>\nRefund?\n<|assistant|>\nWithin 5 days.<eos>"
    segments = formats.chat_segments(chat, lambda m, g: formats.simple_template(m, g, "<eos>"))
    assert "".join(t for t, _ in segments) == text
    assert [t for t, loss in segments if loss] == ["Within 5 days.<eos>"]


def _decoded_loss_text(tok, ids, labels) -> str:
    return tok.decode([i for i, y in zip(ids, labels, strict=True) if y != data.IGNORE])


def test_chat_loss_is_on_assistant_replies_only_with_the_simple_template(tiny_model):
    tok = data.load_tokenizer(tiny_model)
    chat = (("user", "Hi"), ("assistant", "Hello there."), ("user", "Refund?"), ("assistant", "In 5 days."))
    [(ids, labels)] = formats.encode_chats(tok, [chat], tok.eos_token_id)
    assert tok.chat_template is None  # the tiny model has none: hpo's simple template is used
    assert _decoded_loss_text(tok, ids, labels) == f"Hello there.{tok.eos_token}In 5 days.{tok.eos_token}"
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 2  # EOS ends it, once


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_uses_the_tokenizers_own_template_when_it_has_one(tiny_model):
    tok = data.load_tokenizer(tiny_model)
    tok.chat_template = CHATML
    chat = (("user", "Hi"), ("assistant", "Hello there."))
    [(ids, labels)] = formats.encode_chats(tok, [chat], tok.eos_token_id)
    assert tok.decode(ids).startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # the reply and its end-of-turn marker carry the loss, then EOS ends the example
    assert _decoded_loss_text(tok, ids, labels) == f"Hello there.<|im_end|>\n{tok.eos_token}"
    [(simple_ids, _)] = formats.encode_chats(tok, [chat], tok.eos_token_id, template="simple")
    assert "<|assistant|>" in tok.decode(simple_ids)  # chat_template: simple overrides it


def test_chat_prepares_end_to_end(tmp_path, tiny_model):
    d = _spec(_chat_file(tmp_path / "chat.jsonl"), format="chat", block_size=128, validation_fraction=0.1)
    p = data.prepare(d, tiny_model, 0, tmp_path / "cache")
    arrays = p.arrays()
    assert p.cleaning["kind"] == "chat" and p.train_blocks > 0 and p.val_blocks > 0
    assert ((arrays["train_labels"] != -100).sum(axis=1) > 0).all()


# ---------------------------------------------------------------- text, datasets, hub


def test_text_folder_is_one_document_per_file(tmp_path, tiny_model):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    texts = [r["completion"] for r in _support(40)]
    for i, t in enumerate(texts):
        (folder / ("sub" if i % 2 else "") / f"doc{i:02d}.txt").write_text(t + "\n\nsecond paragraph")
    (folder / ".hidden").write_text("not a document")
    d = _spec(folder, format="text", block_size=32, validation_fraction=0.1)
    rows = formats.read_rows(d, str(folder))
    assert len(rows) == 40 and rows[0]["_line"] == "doc00.txt" and "second paragraph" in rows[0]["text"]
    p = data.prepare(d, tiny_model, 0, tmp_path / "cache")
    assert p.cleaning["kind"] == "text" and p.cleaning["length"]["train"]["split"] > 0  # long ones cut
    assert data.fingerprint(d, "tok", 0) != data.fingerprint(_spec(folder / "sub", format="text"), "tok", 0)


def test_empty_text_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder holds no files"):
        data.check(_spec(tmp_path / "empty", format="text"))


def test_datasets_folder_with_splits(tmp_path, tiny_model):
    import datasets

    rows = _support(60)
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:50]), "validation": datasets.Dataset.from_list(rows[50:])}
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    d = _spec(tmp_path / "ds", format="datasets", validation_split="validation", block_size=64)
    report = data.check(d)
    assert report["train"]["kept"] == 50 and report["validation"]["kept"] == 10 and report["pairs"]
    p = data.prepare(d, tiny_model, 0, tmp_path / "cache")
    assert p.train_blocks > 0 and p.cleaning["examples"] == {"train": 50, "validation": 10}
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, validation\)"):
        data.check(_spec(tmp_path / "ds", format="datasets", split="test"))
    # a single Dataset of chats, with a bad record named
    chats = [{"messages": [{"role": "user", "content": "q"}]}, {"messages": [{"role": None, "content": "x"}]}]
    datasets.Dataset.from_list(chats).save_to_disk(str(tmp_path / "chats"))
    with pytest.raises(DataError, match=r"chats:record 2: messages\[0\] must be an object with \"role\""):
        data.check(_spec(tmp_path / "chats", format="datasets"))


def test_not_a_datasets_folder(tmp_path):
    (tmp_path / "nope").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        data.check(_spec(tmp_path / "nope", format="datasets"))


def test_hub_dataset_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(formats, "_unreachable_hub", lambda: "https://hub.example")
    with pytest.raises(DataError) as e:
        data.check(_spec("org/some-set", format="hub"))
    message = str(e.value)
    assert "\n" not in message and "cannot load Hugging Face dataset 'org/some-set'" in message
    assert "unreachable" in message and "format: datasets" in message


# ---------------------------------------------------------------- length handling


def test_overlong_truncate_or_drop_is_counted(tmp_path, tiny_model):
    p = tmp_path / "d.jsonl"
    rows = _support(40) + [{"prompt": "Tell me everything.", "completion": "Here it is. " * 60}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = data.prepare(_spec(p, block_size=128, validation_fraction=0.1), tiny_model, 0, tmp_path / "c1")
    dropped = data.prepare(
        _spec(p, block_size=128, validation_fraction=0.1, overlong="drop"), tiny_model, 0, tmp_path / "c2"
    )
    n_trunc = sum(v["truncated"] for v in kept.cleaning["length"].values())
    n_drop = sum(v["dropped"] for v in dropped.cleaning["length"].values())
    assert n_trunc == n_drop >= 1 and sum(v["truncated"] for v in dropped.cleaning["length"].values()) == 0
    assert f"longer than a block: {n_drop} dropped" in data.describe(dropped.cleaning)
    assert dropped.train_tokens < kept.train_tokens


# ---------------------------------------------------------------- streaming


def test_rows_are_read_as_they_are_consumed(tmp_path):
    """iter_rows holds one row at a time: the rows before a bad line come out before its error."""
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{oops\n')
    rows = formats.iter_rows(_spec(p), str(p))
    assert [next(rows)["prompt"], next(rows)["prompt"]] == ["a", "c"]
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        next(rows)
    chat = _chat_file(tmp_path / "chat.jsonl", 3)
    first = next(formats.iter_rows(_spec(chat, format="chat"), str(chat)))
    assert first["messages"][0] == ("system", "You are the support desk.")  # messages checked row by row


def test_chats_of_a_batch_encode_as_each_alone(tiny_model):
    """encode_chats tokenizes every segment of a batch of chats in one call: the same ids as
    one chat at a time."""
    tok = data.load_tokenizer(tiny_model)
    tok.chat_template = CHATML
    chats = [
        (("system", "Be brief."),) * (i % 2)  # every other chat opens with a system turn
        + (("user", r["prompt"]), ("assistant", r["completion"]), ("user", "Thanks!"))
        for i, r in enumerate(_support(12))
    ]
    for template in ("auto", "simple"):
        together = formats.encode_chats(tok, chats, tok.eos_token_id, template)
        alone = [formats.encode_chats(tok, [c], tok.eos_token_id, template)[0] for c in chats]
        assert together == alone and all(ids[-1] == tok.eos_token_id for ids, _ in together)
