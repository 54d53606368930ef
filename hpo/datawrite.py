"""Data preparation, pass 2: read every source's rows again, route each kept example to
training (as many times as a mixture wants it, with its augmented copies) or validation, tokenize
``chunk_rows`` examples per batch call and pack them into the six ``.npy`` files. A mixture's
validation is packed source by source, so each source's blocks are one range
(``Prepared.val_sources``) and every source's loss can be evaluated apart."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpo import augment, formats
from hpo.dataparams import fixed
from hpo.dataplan import Part, Progress
from hpo.errors import DataError
from hpo.packing import IGNORE, NpyWriter, Packer
from hpo.specdata import DataSpec


class _Out:
    """The packers of one preparation: training originals, their augmented copies (packed apart
    into the same training files: the trial shuffles blocks, so an example and its copies need
    not share blocks) and validation."""

    def __init__(self, folder: Path, block: int, pad: int, overlong: str):
        self.writers = {
            n: [NpyWriter(folder / f"{n}_{a}.npy", block) for a in ("ids", "labels", "pos")]
            for n in ("train", "val")
        }
        self.packers = {n: Packer(block, pad, overlong, _sink(self.writers[n])) for n in self.writers}
        self.copies = Packer(block, pad, overlong, _sink(self.writers["train"]))
        self.cut = {"train": 0, "val": 0}
        self.paraphraser: Any = None

    def add(self, name: str, encoded: list) -> None:
        packer = self.copies if name == "copies" else self.packers[name]
        for ids, labels in encoded:
            packer.add(ids, labels)

    def close(self) -> None:
        self.copies.close()
        for name, packer in self.packers.items():
            packer.close()
            for w in self.writers[name]:
                w.close()


def write(
    tok, data: DataSpec, parts: list[Part], folder: Path, report: Progress, chunk_rows: int, cache_root: Path
) -> dict:
    """Tokenize and pack every kept example of every part into the six ``.npy`` files in
    ``folder``; returns the ``Prepared`` fields but its path and fingerprint (``cache_root``: where
    paraphrases are cached)."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if eos is None:
        raise DataError("the model's tokenizer has no EOS token; hpo needs one to end examples")
    out = _Out(folder, fixed(data.block_size), pad, fixed(data.overlong))
    if data.augment is not None and data.augment.ops.paraphrase is not None:
        from hpo.paraphrase import Paraphraser

        out.paraphraser = Paraphraser(data.augment.ops.paraphrase, cache_root)
    total = sum(p.plan.examples for p in parts)
    done, ranges = 0, {}
    for k, part in enumerate(parts):
        first = out.packers["val"].blocks
        done = _write_part(tok, data, part, k, out, eos, report, (done, total), chunk_rows)
        if data.sources is not None:  # each source's validation blocks: one range
            out.packers["val"].close()
            ranges[part.name] = [first, out.packers["val"].blocks]
    out.close()
    cleaning = _cleaning(data, parts, out)
    if out.paraphraser is not None:
        cleaning["augment"]["paraphrased_now"] = out.paraphraser.generated  # the rest: from the cache
        out.paraphraser.close()
    meta = _meta(data, cleaning, out.packers, out.cut, pad, out.copies)
    return {**meta, "val_sources": ranges}


def _write_part(
    tok,
    data: DataSpec,
    part: Part,
    k: int,
    out: _Out,
    eos: int,
    report: Progress,
    progress: tuple[int, int],
    chunk_rows: int,
) -> int:
    """Pass 2 over one part (source ``k``); returns the examples tokenized so far (``progress``:
    those before it, and in all)."""
    plan = part.plan
    done, total = progress
    maker = augment.Augmenter(data.augment, plan.kind, plan.vocab) if data.augment else None
    encode = _encoder(tok, part.spec, plan.kind, eos)
    for s, ((path, split, dest), cleaner) in enumerate(zip(plan.sources, plan.cleaners, strict=True)):
        start = 0  # the index of the chunk's first kept example
        for chunk in _chunks(cleaner.replay(formats.iter_rows(part.spec, path, split)), chunk_rows):
            routed = _route(chunk, start, s, k, dest, part, maker, out)
            start += len(chunk)
            for name, examples in routed.items():
                if examples:
                    encoded, n_cut = encode(examples)
                    out.cut[name] = out.cut.get(name, 0) + n_cut
                    out.add(name, encoded)
            done += len(chunk)
            report("tokenizing", done, total)
    if maker is not None:
        c = maker.counts
        part.plan.cleaning["augment"] = {**plan.cleaning.get("augment", {}), **asdict(c)}
    return done


def _route(
    chunk: list, start: int, s: int, k: int, dest: str | None, part: Part, maker, out: _Out
) -> dict[str, list]:
    """Where each example of a chunk goes: validation, or training as many times as the mixture
    wants it (once without one), each time with its augmented copies (the chunk's paraphrases
    made first, in batches)."""
    plan = part.plan
    routed: dict[str, list] = {"train": [], "val": [], "copies": []}
    keyed = []  # (key, example) of each time a training example goes in
    for i, example in enumerate(chunk, start):
        name = dest or ("val" if plan.val is not None and plan.val[i] else "train")
        if name == "val":
            routed["val"].append(example)
            continue
        times = part.repeats[i] if part.repeats is not None and s == 0 else 1
        key = (s, i) if k == 0 else (k, s, i)
        keyed += [((*key, r) if r else key, example) for r in range(times)]
    routed["train"] = [example for _, example in keyed]
    if maker is None:
        return routed
    if out.paraphraser is not None:  # validation is never augmented: only training inputs
        maker.paraphrased = out.paraphraser(
            [t for key, ex in keyed for t in maker.paraphrase_inputs(key, ex)]
        )
    for key, example in keyed:
        routed["copies"] += maker.copies(key, example)
    return routed


def _cleaning(data: DataSpec, parts: list[Part], out: _Out) -> dict[str, Any]:
    from hpo.dataplan import combined

    if data.sources is None:
        cleaning = parts[0].plan.cleaning
    else:
        cleaning = combined([(p.name, p.plan.cleaning) for p in parts])
    if data.augment is not None:
        c = out.copies
        counts = {"blocks": c.blocks, "truncated": c.truncated, "dropped": c.dropped}
        sums = {
            k: sum(p.plan.cleaning["augment"][k] for p in parts) for k in ("originals", "copies", "unchanged")
        }
        cleaning["augment"] = {**cleaning.get("augment", {}), **sums, **counts}
    return cleaning


def _sink(writers: list[NpyWriter]) -> Callable[[Any, Any, Any], None]:
    def write(ids: Any, labels: Any, pos: Any) -> None:
        for w, a in zip(writers, (ids, labels, pos), strict=True):
            w.write(a)

    return write


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _encoder(tok, data: DataSpec, kind: str, eos: int) -> Callable[[list], tuple[list, int]]:
    """Examples -> ((ids, labels) examples, how many texts were cut into pieces)."""
    if kind == "pairs":
        return lambda examples: (formats.encode_pairs(tok, examples, eos, IGNORE), 0)
    if kind == "chat":
        return lambda examples: (
            formats.encode_chats(tok, [e[0] for e in examples], eos, data.chat_template, IGNORE),
            0,
        )
    return lambda examples: formats.encode_texts(tok, [e[0] for e in examples], eos, fixed(data.block_size))


def _meta(
    data: DataSpec, cleaning: dict, packers: dict[str, Packer], cut: dict[str, int], pad: int, copies: Packer
) -> dict:
    length = cleaning.setdefault("length", {})
    for name, p in packers.items():
        length[name] = {"truncated": p.truncated, "dropped": p.dropped, "split": cut[name]}
    for name, p in packers.items():
        if not p.blocks:
            raise DataError(
                f"{data.path or 'data.sources'}: no {name} example fits a block of {data.block_size} tokens "
                f"({p.dropped} dropped as too long); raise data.block_size or set "
                "data.overlong: truncate"
            )
    return {
        "train_blocks": packers["train"].blocks + copies.blocks,
        "val_blocks": packers["val"].blocks,
        "train_tokens": packers["train"].loss_tokens + copies.loss_tokens,
        "val_tokens": packers["val"].loss_tokens,
        "block_size": data.block_size,
        "pad_id": int(pad),
        "cleaning": cleaning,
    }
