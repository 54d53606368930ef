"""Packing never changes an example's loss: a packed block (positions restarting per example, so
transformers masks attention block-diagonally) gives each example exactly the loss it has alone."""

from __future__ import annotations

import pytest
import torch

from hpo import data, formats, trial, trialstep

PAIRS = [
    ("Where is my order F1?", "It ships tomorrow."),
    ("Can I pay with Apple Pay?", "Yes, every major wallet works."),
    ("Do you ship to Miami?", "We ship to every US city; shipping is free over $50."),
    ("Hi", "Hello! How can I help?"),
]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model):
    model = trial.load_model(tiny_model, 0.0)
    model.eval()
    return model, data.load_tokenizer(tiny_model)


def _alone(model, ids: list[int], labels: list[int]) -> tuple[float, int, int]:
    """(summed loss, correct next tokens, counted tokens) of one example run by itself."""
    x, y = torch.tensor([ids]), torch.tensor([labels])
    with torch.no_grad():
        loss = float(trialstep.loss_sum(model, x, y))
    m = trial.evaluate_metrics(model, x, y)
    n = int((y[:, 1:] != -100).sum())
    return loss, round(m["token_accuracy"] * n), n


def _packed_totals(model, packed: data.Packed) -> tuple[float, int, int]:
    ids, labels, pos = (torch.tensor(getattr(packed, k)) for k in ("ids", "labels", "pos"))
    with torch.no_grad():
        loss = float(trialstep.loss_sum(model, ids, labels, pos))
    m = trial.evaluate_metrics(model, ids, labels, pos)
    n = int((labels[:, 1:] != -100).sum())
    return loss, round(m["token_accuracy"] * n), n


def test_packed_loss_equals_the_per_example_losses(model_and_tok):
    model, tok = model_and_tok
    enc = formats.encode_pairs(tok, PAIRS, tok.eos_token_id)
    packed = data.pack(enc, block=128, pad_id=tok.eos_token_id)
    assert len(packed.ids) == 1  # all four share one block, followed by padding
    assert packed.pos[0][: len(enc[0][0]) + 2] == [*range(len(enc[0][0])), 0, 1]
    alone = [_alone(model, ids, labels) for ids, labels in enc]
    loss, correct, n = _packed_totals(model, packed)
    assert n == sum(a[2] for a in alone)
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-5, abs=1e-4)
    assert correct == sum(a[1] for a in alone)


def test_without_positions_the_neighbours_would_leak_in(model_and_tok):
    """The control: the same block with plain positions (no restart) gives another loss, so the
    test above measures the masking, not an accident."""
    model, tok = model_and_tok
    enc = formats.encode_pairs(tok, PAIRS, tok.eos_token_id)
    packed = data.pack(enc, block=128, pad_id=tok.eos_token_id)
    ids, labels = torch.tensor(packed.ids), torch.tensor(packed.labels)
    with torch.no_grad():
        plain = float(trialstep.loss_sum(model, ids, labels))
    alone = sum(_alone(model, i, la)[0] for i, la in enc)
    assert abs(plain - alone) > 1e-2


def test_chat_and_text_blocks_pack_the_same_way(model_and_tok):
    model, tok = model_and_tok
    chats = [
        (("user", "Where is my order?"), ("assistant", "On its way.")),
        (("system", "Be brief."), ("user", "Refund?"), ("assistant", "Within 5 days.")),
    ]
    enc = formats.encode_chats(tok, chats, tok.eos_token_id, "simple")
    docs = tok(["A short text.", "Another one, a bit longer."], add_special_tokens=False)["input_ids"]
    enc += [(d + [tok.eos_token_id], d + [tok.eos_token_id]) for d in docs]
    packed = data.pack(enc, block=96, pad_id=tok.eos_token_id)
    alone = [_alone(model, ids, labels) for ids, labels in enc]
    loss, _, n = _packed_totals(model, packed)
    assert n == sum(a[2] for a in alone)
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-5, abs=1e-4)


# ---------------------------------------------------------------- streaming: buffers and the .npy writer

EXAMPLES = [
    ([1, 2, 3], [-100, 2, 3]),
    ([4, 5], [-100, 5]),
    (list(range(10, 19)), list(range(10, 19))),  # longer than a block of 5: truncated
    ([6, 7, 8, 9, 10], [6, 7, 8, 9, 10]),  # exactly a block
    ([11], [11]),
    ([12, 13, 14, 15], [-100, -100, 14, 15]),
]


@pytest.mark.parametrize("flush_blocks", [1, 2, 3, 64])
def test_packer_buffers_give_the_same_blocks_as_packing_in_memory(flush_blocks):
    import numpy as np

    whole = data.pack(EXAMPLES, block=5, pad_id=0)
    slabs: list[tuple] = []
    packer = data.Packer(5, 0, "truncate", lambda *a: slabs.append(tuple(x.copy() for x in a)), flush_blocks)
    for ids, labels in EXAMPLES:
        packer.add(ids, labels)
    packer.close()
    assert all(len(s[0]) <= flush_blocks for s in slabs) and len(slabs) == -(-len(whole.ids) // flush_blocks)
    for k, name in enumerate(("ids", "labels", "pos")):
        assert np.concatenate([s[k] for s in slabs]).tolist() == getattr(whole, name)
    assert (packer.blocks, packer.truncated, whole.truncated) == (len(whole.ids), 1, 1)
    assert packer.loss_tokens == sum(y != -100 for row in whole.labels for y in row)


def test_npy_writer_appends_slabs_and_writes_the_header_last(tmp_path):
    import numpy as np

    from hpo import packing

    rows = np.arange(7 * 3, dtype=np.int32).reshape(7, 3)
    w = packing.NpyWriter(tmp_path / "a.npy", 3)
    for start, stop in ((0, 1), (1, 4), (4, 4), (4, 7)):  # one row, three rows, none, the rest
        w.write(rows[start:stop])
    assert w.close() == 7
    assert np.array_equal(np.load(tmp_path / "a.npy", mmap_mode="r"), rows)
    empty = packing.NpyWriter(tmp_path / "e.npy", 3)
    assert empty.close() == 0 and np.load(tmp_path / "e.npy").shape == (0, 3)
    # the header's room is reserved before the row count is known: its size never changes
    sizes = {len(packing.npy_header(n, width)) for n in (0, 1, 10**6, 10**12, 10**29) for width in (8, 32768)}
    assert sizes == {128}


def test_texts_longer_than_a_block_are_cut_into_pieces(model_and_tok):
    _, tok = model_and_tok
    texts = ["A short text.", "A much longer text that will not fit into one small block of tokens at all."]
    enc, cut = formats.encode_texts(tok, texts, tok.eos_token_id, block=8)
    docs = [d + [tok.eos_token_id] for d in tok(texts, add_special_tokens=False)["input_ids"]]
    pieces, want_cut = data.split_long(docs, 8)
    assert cut == want_cut == 1 and [ids for ids, _ in enc] == pieces and all(a == b for a, b in enc)
