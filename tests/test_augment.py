"""Offline augmentation (hpo/augment.py) and its place in data preparation: each operation is
deterministic from its seed, validation is never augmented, and each distinct setting of the
searched data parameters is prepared once (hpo.data.for_trial)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from hpo import augment, data, dataplan
from hpo import spec as spec_mod
from hpo.dataparams import AugmentSpec
from tests.conftest import small_spec

TEXTS = [
    "Hey there, can I pay with Apple Pay for the Ember desk lamp?",
    "Good morning, what will shipping cost to Miami? My order comes to $92.49. Thanks!",
    "Hi team, when will the Cove ceramic mug be available again?",
]
VOCAB = ["alpha", "beta", "gamma"]


def _apply(op: str, words: list[str], p: float, r) -> list[str]:
    if op == "insert":
        return augment.insert(words, p, r, VOCAB)
    return {"word_dropout": augment.word_dropout, "word_swap": augment.word_swap, "typo": augment.typo}[op](
        words, p, r
    )


@pytest.mark.parametrize("op", ["word_dropout", "word_swap", "typo", "insert"])
def test_each_word_operation_is_deterministic_from_its_seed(op):
    for text in TEXTS:
        words = text.split()
        a = _apply(op, words, 0.4, augment.rng(7, ("k", 1), 0, op))
        b = _apply(op, words, 0.4, augment.rng(7, ("k", 1), 0, op))
        assert a == b
        assert _apply(op, words, 0.0, augment.rng(7, ("k", 1), 0, op)) == words  # p = 0: unchanged
    outs = {tuple(_apply(op, TEXTS[1].split(), 0.4, augment.rng(seed, 0, 0, op))) for seed in range(8)}
    assert len(outs) > 1  # another seed, another copy


def test_template_is_deterministic_and_wraps_the_prompt_once():
    templates = ["Q: {prompt}", "{prompt}\nA:"]
    outs = [augment.template(TEXTS[0], 1.0, augment.rng(s, 0, 0, "template"), templates) for s in range(6)]
    assert outs == [
        augment.template(TEXTS[0], 1.0, augment.rng(s, 0, 0, "template"), templates) for s in range(6)
    ]
    assert {o.replace(TEXTS[0], "{prompt}") for o in outs} <= set(templates)
    assert augment.template(TEXTS[0], 0.0, augment.rng(0, 0, 0, "template"), templates) == TEXTS[0]


def test_a_larger_p_drops_a_superset_of_words():
    words = TEXTS[1].split()
    low = augment.word_dropout(words, 0.2, augment.rng(3, 0, 0, "x"))
    high = augment.word_dropout(words, 0.5, augment.rng(3, 0, 0, "x"))
    assert set(high) <= set(low) and len(high) <= len(low)


def _spec(**ops) -> AugmentSpec:
    return AugmentSpec.model_validate({"copies": 2, "seed": 5, "ops": ops})


def test_copies_change_the_prompt_only_and_do_not_depend_on_order_or_other_examples():
    spec = _spec(word_dropout={"p": 0.3}, typo={"p": 0.3}, template={"p": 0.5})
    pairs = [(t, f"answer {i}") for i, t in enumerate(TEXTS)]
    forward = [augment.Augmenter(spec, "pairs").copies((0, i), e) for i, e in enumerate(pairs)]
    maker = augment.Augmenter(spec, "pairs")
    backward = [maker.copies((0, i), pairs[i]) for i in reversed(range(len(pairs)))][::-1]
    assert forward == backward
    for (_, completion), copies in zip(pairs, forward, strict=True):
        assert copies and all(c[1] == completion for c in copies)  # the target is never changed
    chat = ((("system", "be brief"), ("user", TEXTS[0]), ("assistant", "Yes.")),)
    (copy,) = augment.Augmenter(_spec(word_swap={"p": 1.0}), "chat").copies(0, chat)[:1]
    assert copy[0][0] == chat[0][0] and copy[0][2] == chat[0][2] and copy[0][1] != chat[0][1]


def test_p_zero_gives_no_copies_at_all():
    maker = augment.Augmenter(_spec(word_dropout={"p": 0.0}, typo={"p": 0.0}), "pairs")
    assert maker.copies(0, (TEXTS[0], "x")) == []
    assert maker.counts.unchanged == 2 and maker.counts.copies == 0


# ---------------------------------------------------------------- in data preparation


def _data(tmp_path: Path, rows: int = 120, space: dict | None = None, **augment_spec) -> spec_mod.DataSpec:
    extra = {"augment": augment_spec} if augment_spec else {}
    overrides = {"space": space} if space else {}
    path = small_spec(tmp_path, rows=rows, data={"validation_fraction": 0.2, **extra}, **overrides)
    return spec_mod.load(path).data


P = {"type": "float", "low": 0.0, "high": 0.5}
COPIES = {"type": "int", "low": 0, "high": 2}


OPS = {"word_dropout": {"p": 0.3}, "word_swap": {"p": 0.3}, "typo": {"p": 0.3}, "insert": {"p": 0.3}}


def test_validation_is_never_augmented_and_training_is_deterministic(tmp_path, tiny_model):
    clean = data.prepare(_data(tmp_path), tiny_model, 0, tmp_path / "c1")
    aug_spec = _data(tmp_path, copies=2, seed=3, ops={**OPS, "template": {"p": 0.5}})
    aug = data.prepare(aug_spec, tiny_model, 0, tmp_path / "c1")
    again = data.prepare(aug_spec, tiny_model, 0, tmp_path / "c2")  # another cache: made anew
    a, c, g = aug.arrays(), clean.arrays(), again.arrays()
    for name in ("val_ids", "val_labels", "val_pos"):
        assert np.array_equal(a[name], c[name]), name  # validation: byte for byte the clean one
    for name in ("train_ids", "train_labels", "train_pos"):
        assert np.array_equal(a[name], g[name]), name  # same seed, same augmented set
    report = aug.cleaning["augment"]
    assert report["copies"] + report["unchanged"] == 2 * report["originals"]
    assert aug.train_blocks == clean.train_blocks + report["blocks"] > clean.train_blocks
    other = data.prepare(_data(tmp_path, copies=2, seed=4, ops=OPS), tiny_model, 0, tmp_path / "c1")
    assert other.fingerprint != aug.fingerprint
    assert not np.array_equal(
        other.arrays()["train_ids"][clean.train_blocks :], a["train_ids"][clean.train_blocks :]
    )


def test_insert_draws_only_training_words(tmp_path):
    rows = [{"prompt": f"question w{i}x", "completion": f"answer {i}"} for i in range(60)]
    (tmp_path / "u.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = spec_mod.load(
        small_spec(tmp_path, data={"path": "u.jsonl", "augment": {"ops": {"insert": {"p": 1.0}}}})
    ).data
    plan = dataplan.plan(d, 0, lambda *a: None, with_split=True)
    assert plan.val is not None
    val_words = {f"w{i}x" for i in range(60) if plan.val[i]}
    train_words = {f"w{i}x" for i in range(60) if not plan.val[i]}
    assert val_words and not val_words & set(plan.vocab) and train_words <= set(plan.vocab)


def test_check_shows_samples_of_training_examples_beside_a_copy(tmp_path):
    d = _data(tmp_path, space={"augment_p": P}, copies=1, ops={"word_dropout": {"p": {"param": "augment_p"}}})
    report = data.check(d, 0, shown={"augment_p": 0.5})
    samples = report["augment"]["samples"]
    assert len(samples) == 3 and all(a != b for a, b in samples)
    lines = data.describe_augment(report, {"augment_p": 0.5})
    assert "validation is never augmented" in lines[0] and "augment_p=0.5" in lines[1]


def test_the_cache_holds_one_prepared_set_per_distinct_setting(tmp_path, tiny_model):
    space = {"augment_p": P, "copies": COPIES}
    d = _data(tmp_path, space=space, copies={"param": "copies"}, ops={"typo": {"p": {"param": "augment_p"}}})
    base = {
        "data": d.model_dump(),
        "data_seed": 0,
        "cache_root": str(tmp_path / "cache"),
        "model_path": tiny_model,
    }
    settings = [(0.1, 1), (0.2, 1), (0.1, 1), (0.1, 2), (0.2, 1)]
    prints = []
    threads = [  # two trials asking for the same setting at once: one prepares, the other waits
        threading.Thread(
            target=lambda: prints.append(data.for_trial({**base, "params": {"augment_p": 0.3, "copies": 1}}))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.fingerprint for p in prints}) == 1
    for p, copies in settings:
        prints.append(data.for_trial({**base, "params": {"augment_p": p, "copies": copies}}))
    folders = sorted(f.name for f in (tmp_path / "cache" / "data").iterdir() if not f.name.startswith("."))
    assert len(folders) == 4 and sorted({p.fingerprint for p in prints}) == folders


def test_block_size_and_overlong_searched_prepare_one_set_per_value(tmp_path, tiny_model):
    space = {
        "block": {"type": "categorical", "choices": [80, 128]},
        "ov": {"type": "categorical", "choices": ["truncate", "drop"]},
    }
    path = small_spec(
        tmp_path, rows=80, data={"block_size": {"param": "block"}, "overlong": {"param": "ov"}}, space=space
    )
    spec = spec_mod.load(path)
    assert spec.max_block_size == 128
    base = {
        "data": spec.data.model_dump(),
        "data_seed": 0,
        "cache_root": str(tmp_path / "cache"),
        "model_path": tiny_model,
    }
    sets = {
        (b, ov): data.for_trial({**base, "params": {"block": b, "ov": ov}})
        for b in (80, 128)
        for ov in ("truncate", "drop")
    }
    assert {k: (p.block_size, p.cleaning["length"]["train"]["dropped"] > 0) for k, p in sets.items()} == {
        (80, "truncate"): (80, False),
        (80, "drop"): (80, True),
        (128, "truncate"): (128, False),
        (128, "drop"): (128, False),
    }
    assert len({p.fingerprint for p in sets.values()}) == 4
    assert data.for_trial({**base, "params": {"block": 80, "ov": "drop"}}).path == sets[(80, "drop")].path


def test_paraphrases_apply_first_and_only_where_drawn(tmp_path, tiny_model):
    """Without a model run: the copies use the paraphrases they are given (``hpo.paraphrase``
    makes them), a cached text never reaches the model."""
    import hashlib

    from hpo.paraphrase import Paraphraser

    spec = _spec(paraphrase={"model": tiny_model, "p": 0.5}, word_swap={"p": 0.0})
    maker = augment.Augmenter(spec, "pairs")
    pairs = [(t, "answer") for t in TEXTS]
    wanted = [maker.paraphrase_inputs((0, i), e) for i, e in enumerate(pairs)]
    assert 0 < sum(map(len, wanted)) < 2 * len(TEXTS)  # p = 0.5 of 2 copies each
    maker.paraphrased = {t: t.upper() for t in TEXTS}
    for (i, e), want in zip(enumerate(pairs), wanted, strict=True):
        copies = maker.copies((0, i), e)
        assert [c[0] for c in copies] == [e[0].upper()] * len(want)  # unchanged copies left out
    cached = Paraphraser(spec.ops.paraphrase, tmp_path)
    h = hashlib.blake2b(TEXTS[0].encode(), digest_size=16).hexdigest()
    with cached._db:
        cached._db.execute("INSERT INTO p VALUES (?, ?)", (h, "said another way"))
    assert cached([TEXTS[0]]) == {TEXTS[0]: "said another way"} and cached.generated == 0


@pytest.mark.slow
def test_paraphrase_by_a_local_model_is_greedy_cached_and_training_only(tmp_path, tiny_model):
    from hpo.paraphrase import Paraphraser

    ops = {"paraphrase": {"model": tiny_model, "p": 1.0, "max_new_tokens": 4, "batch": 8}}
    d = _data(tmp_path, rows=20, copies=1, seed=2, ops=ops)
    clean = data.prepare(_data(tmp_path, rows=20), tiny_model, 0, tmp_path / "cache")
    first = data.prepare(d, tiny_model, 0, tmp_path / "cache")
    report = first.cleaning["augment"]
    assert report["paraphrased_now"] == report["originals"] > 0  # every training prompt, once
    assert report["copies"] > 0
    for name in ("val_ids", "val_labels", "val_pos"):
        assert np.array_equal(first.arrays()[name], clean.arrays()[name]), name
    # another setting (2 copies): another prepared set, but every paraphrase comes from the cache
    d2 = _data(tmp_path, rows=20, copies=2, seed=2, ops=ops)
    second = data.prepare(d2, tiny_model, 0, tmp_path / "cache")
    assert second.fingerprint != first.fingerprint and second.cleaning["augment"]["paraphrased_now"] == 0
    # greedy: the same text, the same paraphrase, whether from the model or the cache
    fresh = Paraphraser(d.augment.ops.paraphrase, tmp_path / "cache")
    texts = ["where is my order?", "can I pay with Apple Pay?"]
    made = fresh(texts)
    assert fresh(texts) == made and fresh.generated == 2
    fresh._db.execute("DELETE FROM p")  # forget: the model again
    assert fresh(texts) == made and fresh.generated == 4
