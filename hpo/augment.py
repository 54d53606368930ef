"""Offline augmentation of training examples (pure Python, no tokenizer): ``data.augment``.

Each training example gets ``copies`` augmented copies; a copy applies the operations in the order
``paraphrase`` (by a local model: ``hpo.paraphrase``), ``template``, ``word_dropout``,
``word_swap``, ``insert``, ``typo``, each with its ``p``. What is
augmented is the input: a pair's prompt, a chat's user turns, a text's whole text (the target a
pair or chat is trained to produce is never changed). A copy identical to its original is left
out (so ``p = 0`` gives exactly the clean set).

Determinism: every draw comes from a generator seeded by (augmentation seed, example key, copy,
operation), so a copy does not depend on the order or batching of the examples, on the other
examples, or on the other operations' ``p``; a larger ``p`` changes a superset of the words (each
word's draw is compared with ``p``). ``insert`` draws its words from a seeded sample of the
training examples' words (``Vocabulary``): validation examples never contribute.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from hpo.dataparams import AugmentSpec, fixed

VOCAB_SIZE = 10_000  # words kept for ``insert`` (a reservoir sample of the training words)
KEYBOARD = "abcdefghijklmnopqrstuvwxyz"


def rng(seed: int, key: Any, copy: int, op: str) -> random.Random:
    """The generator of one operation on one copy of one example."""
    digest = hashlib.blake2b(repr((seed, key, copy, op)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


# ---------------------------------------------------------------- the operations, on words


def word_dropout(words: list[str], p: float, r: random.Random) -> list[str]:
    """Each word left out with probability ``p`` (one word is always kept)."""
    kept = [w for w in words if r.random() >= p]
    return kept or words[:1]


def word_swap(words: list[str], p: float, r: random.Random) -> list[str]:
    """Each word swapped with the next with probability ``p`` (a swapped pair is not swapped again)."""
    out = list(words)
    i = 0
    while i < len(out) - 1:
        if r.random() < p:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    return out


def insert(words: list[str], p: float, r: random.Random, vocab: list[str]) -> list[str]:
    """After each word, with probability ``p``, a word drawn from ``vocab``."""
    if not vocab:
        return list(words)
    out = []
    for w in words:
        out.append(w)
        if r.random() < p:
            out.append(vocab[r.randrange(len(vocab))])
    return out


def typo(words: list[str], p: float, r: random.Random) -> list[str]:
    """Each word of 2+ characters gets, with probability ``p``, one typo: two neighbouring
    characters swapped, one deleted, one doubled, or one replaced by a letter."""
    out = []
    for w in words:
        draw = r.random()
        if len(w) < 2 or draw >= p:
            out.append(w)
            continue
        i, kind = r.randrange(len(w) - 1), r.randrange(4)
        if kind == 0:
            w = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        elif kind == 1:
            w = w[:i] + w[i + 1 :]
        elif kind == 2:
            w = w[: i + 1] + w[i:]
        else:
            w = w[:i] + r.choice(KEYBOARD) + w[i + 1 :]
        out.append(w)
    return out


def template(text: str, p: float, r: random.Random, templates: list[str]) -> str:
    """With probability ``p``, ``text`` wrapped in one of ``templates`` (``{prompt}`` is the text)."""
    if r.random() >= p:
        return text
    return templates[r.randrange(len(templates))].replace("{prompt}", text)


# ---------------------------------------------------------------- copies of examples


@dataclass
class Counts:
    """What augmentation produced."""

    originals: int = 0  # training examples augmented
    copies: int = 0  # augmented copies kept
    unchanged: int = 0  # copies identical to their original, left out


class Augmenter:
    """Makes the augmented copies of training examples.

    Args:
        spec: the concrete augmentation settings (no references left).
        kind: ``pairs``, ``chat`` or ``text``.
        vocab: the words ``insert`` draws from (training examples only).
    """

    def __init__(self, spec: AugmentSpec, kind: str, vocab: list[str] | None = None):
        self.spec, self.kind, self.vocab = spec, kind, vocab or []
        self.counts = Counts()
        #: Each input's paraphrase (``paraphrase_inputs`` says which are needed; ``hpo.paraphrase``
        #: makes them): an input missing here is left as it is.
        self.paraphrased: dict[str, str] = {}

    def paraphrase_inputs(self, key: Any, example: tuple) -> list[str]:
        """The inputs of ``example`` that its copies paraphrase (none without ``paraphrase``)."""
        op = self.spec.ops.paraphrase
        if op is None:
            return []
        if self.kind == "chat":
            texts = [((key, i), c) for i, (role, c) in enumerate(example[0]) if role == "user"]
        else:
            texts = [(key, example[0])]
        p, seed = fixed(op.p), self.spec.seed
        return [
            t
            for k, t in texts
            for c in range(fixed(self.spec.copies))
            if rng(seed, k, c, "paraphrase").random() < p
        ]

    def copies(self, key: Any, example: tuple) -> list[tuple]:
        """The augmented copies of ``example`` (identified by ``key``, e.g. its source and index)."""
        self.counts.originals += 1
        out = []
        for c in range(fixed(self.spec.copies)):
            copy = self._copy(key, c, example)
            if copy == example:
                self.counts.unchanged += 1
            else:
                out.append(copy)
        self.counts.copies += len(out)
        return out

    def _copy(self, key: Any, c: int, example: tuple) -> tuple:
        if self.kind == "pairs":
            return (self.text(key, c, example[0]), *example[1:])
        if self.kind == "chat":
            turns = tuple(
                (role, self.text((key, i), c, content) if role == "user" else content)
                for i, (role, content) in enumerate(example[0])
            )
            return (turns,)
        return (self.text(key, c, example[0], wrap=False),)

    def text(self, key: Any, c: int, text: str, wrap: bool = True) -> str:
        """One copy of one input text: every operation, in order (line breaks are kept; the
        spaces of a changed line become single spaces)."""
        ops, seed = self.spec.ops, self.spec.seed
        if ops.paraphrase is not None and rng(seed, key, c, "paraphrase").random() < fixed(ops.paraphrase.p):
            text = self.paraphrased.get(text, text)
        if wrap and ops.template is not None:
            t = ops.template
            text = template(text, fixed(t.p), rng(seed, key, c, "template"), t.templates)
        draws = {name: rng(seed, key, c, name) for name in ("word_dropout", "word_swap", "insert", "typo")}
        lines = [self._line(line, draws) for line in text.split("\n")]
        return "\n".join(lines)

    def _line(self, line: str, draws: dict[str, random.Random]) -> str:
        ops = self.spec.ops
        words = before = line.split()
        if ops.word_dropout is not None:
            words = word_dropout(words, fixed(ops.word_dropout.p), draws["word_dropout"])
        if ops.word_swap is not None:
            words = word_swap(words, fixed(ops.word_swap.p), draws["word_swap"])
        if ops.insert is not None:
            words = insert(words, fixed(ops.insert.p), draws["insert"], self.vocab)
        if ops.typo is not None:
            words = typo(words, fixed(ops.typo.p), draws["typo"])
        return line if words == before else " ".join(words)


class Vocabulary:
    """A seeded reservoir sample of the words of the examples it sees (``VOCAB_SIZE`` at most),
    each remembered with its example's index so validation examples can be left out afterwards."""

    def __init__(self, seed: int, size: int = VOCAB_SIZE):
        self._r = random.Random(seed)
        self.size, self.seen = size, 0
        self.sample: list[tuple[int, str]] = []

    def add(self, index: int, example: tuple, kind: str) -> None:
        for text in inputs(example, kind):
            for w in text.split():
                self.seen += 1
                if len(self.sample) < self.size:
                    self.sample.append((index, w))
                elif (j := self._r.randrange(self.seen)) < self.size:
                    self.sample[j] = (index, w)

    def words(self, validation: Any = None) -> list[str]:
        """The sampled words, without those of examples ``validation`` marks (a bytearray)."""
        return [w for i, w in self.sample if validation is None or not validation[i]]


def inputs(example: tuple, kind: str) -> list[str]:
    """The texts augmentation changes in an example: a pair's prompt, a chat's user turns, a text."""
    if kind == "chat":
        return [content for role, content in example[0] if role == "user"]
    return [example[0]]


def needs_vocab(spec: AugmentSpec | None) -> bool:
    return spec is not None and spec.ops.insert is not None
