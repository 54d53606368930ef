"""Paraphrase by a local model (``data.augment.ops.paraphrase``): greedy, batched, cached.

The model is a user-named ``save_pretrained`` folder: a causal LM (the prompt, with ``{text}``
replaced, is continued; the first line of the continuation is the paraphrase) or a seq2seq model
(its output is). Decoding is greedy, so a text's paraphrase depends only on the model, the
prompt and ``max_new_tokens``: paraphrases are kept in a SQLite file per model and settings
under the cache (``<cache>/paraphrase/<key>.sqlite``, keyed by the text's hash), so every
prepared set that needs a text's paraphrase (another ``p``, ``copies`` or block size, another
trial) reuses it and the model runs only for texts it has not seen. The model loads on the first
text missing from the cache. An empty paraphrase leaves the text as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from hpo.errors import DataError

log = logging.getLogger(__name__)


def model_identity(folder: str) -> str:
    """A hash that changes when the model folder's config or any file's name or size does."""
    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
    config = root / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    return h.hexdigest()[:16]


class Paraphraser:
    """Paraphrases texts with a local model, through a persistent cache.

    Args:
        op: the ``ParaphraseOp`` settings (model folder, prompt, max_new_tokens, batch).
        cache_root: hpo's cache folder (paraphrases go to ``cache_root/paraphrase``).
    """

    def __init__(self, op: Any, cache_root: Path):
        self.op = op
        settings = json.dumps([model_identity(op.model), op.prompt, op.max_new_tokens])
        key = hashlib.sha256(settings.encode()).hexdigest()[:20]
        folder = cache_root / "paraphrase"
        folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(folder / f"{key}.sqlite", timeout=600)
        self._db.execute("CREATE TABLE IF NOT EXISTS p (h TEXT PRIMARY KEY, out TEXT NOT NULL)")
        self._model: Any = None
        self._tok: Any = None
        self.generated = 0  # texts the model paraphrased in this process (the rest came from the cache)

    def __call__(self, texts: list[str]) -> dict[str, str]:
        """Each distinct text's paraphrase."""
        unique = list(dict.fromkeys(texts))
        hashes = {t: hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in unique}
        found = dict(self._lookup(list(hashes.values())))
        missing = [t for t in unique if hashes[t] not in found]
        for i in range(0, len(missing), self.op.batch):
            batch = missing[i : i + self.op.batch]
            outs = self._generate(batch)
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO p VALUES (?, ?)",
                    [(hashes[t], o) for t, o in zip(batch, outs, strict=True)],
                )
            found.update({hashes[t]: o for t, o in zip(batch, outs, strict=True)})
            self.generated += len(batch)
        return {t: found[hashes[t]] or t for t in unique}

    def _lookup(self, hashes: list[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            out += self._db.execute(f"SELECT h, out FROM p WHERE h IN ({marks})", part).fetchall()  # noqa: S608
        return out

    def _load(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from hpo.basemodel import quiet_transformers

        quiet_transformers()
        try:
            config = AutoConfig.from_pretrained(self.op.model)
            kind = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            self._model = kind.from_pretrained(self.op.model).eval()
            self._tok = AutoTokenizer.from_pretrained(self.op.model, padding_side="left")
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot load"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(
                f"data.augment.ops.paraphrase.model: cannot load {self.op.model} ({first})"
            ) from e
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        model, tok = self._model, self._tok
        prompts = [self.op.prompt.replace("{text}", t) for t in texts]
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=self.op.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
        if not model.config.is_encoder_decoder:
            out = out[:, enc["input_ids"].shape[1] :]  # the continuation only
        decoded = tok.batch_decode(out, skip_special_tokens=True)
        return [(d.strip().splitlines() or [""])[0].strip() for d in decoded]

    def close(self) -> None:
        self._db.close()
