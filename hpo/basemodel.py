"""Base models: resolve a spec's ``model`` to something ``from_pretrained`` loads, and build the
offline tiny GPT-2 (``hpo:tiny-gpt2``).

The tiny model is a GPT-2 of 1.35M parameters (4 layers, 4 heads, width 128, 256 positions)
with its own byte-level BPE tokenizer (4,096 tokens), pretrained for a fixed number of steps on
the English text Python ships (``pydoc_data.topics``). It is deterministic from its seed, built
once (about a minute on 2 cores) into ``$HPO_CACHE_DIR/models/`` (default ``~/.cache/hpo``),
saved with ``save_pretrained`` and always used through ``from_pretrained``. The other named models
(``hpo.models.NAMED``) are fetched or built by ``hpo.modelbuild``.
"""

from __future__ import annotations

import fcntl
import logging
import math
import time
from pathlib import Path

from hpo import models
from hpo.modelbuild import quiet_transformers  # here for the callers that load a base model
from hpo.models import cache_dir
from hpo.spec import TINY_MODEL

log = logging.getLogger(__name__)

RECIPE = "v1"  # bump here and in models.NAMED's folder when anything below changes the built model
EOS, PAD = "<|endoftext|>", "<|pad|>"
# defaults in one block (nanoGPT style)
VOCAB = 4096  # byte-level BPE vocabulary
N_LAYER, N_HEAD, N_EMBD, N_POSITIONS = 4, 4, 128, 256
BLOCK = 128  # pretraining block length
BATCH = 16  # pretraining blocks per step
STEPS = 300  # pretraining steps: ~60-90 s on 2 cores
PEAK_LR, WARMUP = 1e-3, 30


__all__ = ["cache_dir", "get_named", "quiet_transformers", "resolve", "tiny_gpt2"]


def resolve(model: str, seed: int = 0) -> str:
    """What ``from_pretrained`` should load for a spec's ``model``: a folder or a Hub id.

    A named model (``hpo:NAME``) is built or fetched on first use; a Hub id that the Hub cannot
    serve now but the local Hugging Face cache holds becomes that cached folder (so no trial waits
    on the Hub); one found nowhere fails at once.

    Raises:
        UsageError: one line naming the model and the fix (see ``hpo.models.locate``).
    """
    if model.startswith(models.PREFIX):
        return str(get_named(model, seed=seed))
    found = models.locate(model)
    return found.path or model


def get_named(model: str, dtype: str | None = None, seed: int = 0) -> Path:
    """The folder of a named model (``hpo:NAME`` or NAME), getting it first if it is not cached.

    Raises:
        UsageError: an unknown name or a dtype it does not come in.
    """
    name, _, dtype = models.lookup(model, dtype)
    if name == TINY_MODEL.removeprefix(models.PREFIX):
        return tiny_gpt2(seed)
    from hpo import modelbuild

    return modelbuild.fetch(name, dtype)


def tiny_gpt2(seed: int = 0) -> Path:
    """The directory of the tiny pretrained GPT-2, building it first if it is not cached."""
    out = models.named_path(TINY_MODEL.removeprefix(models.PREFIX), seed=seed)
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits for the first build
        if not (out / "config.json").is_file():
            _build(out, seed)
    return out


def _texts() -> list[str]:
    import pydoc_data.topics as topics

    return [topics.topics[k] for k in sorted(topics.topics)]


def _tokenizer(texts: list[str]):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=VOCAB, min_frequency=2, special_tokens=[EOS, PAD], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=N_POSITIONS,
    )


def _blocks(tok, texts: list[str]):
    import torch

    flat: list[int] = []
    for ids in tok(texts)["input_ids"]:
        flat.extend(ids)
        flat.append(tok.eos_token_id)
    n = len(flat) // BLOCK
    return torch.tensor(flat[: n * BLOCK]).view(n, BLOCK)


def _build(out: Path, seed: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    quiet_transformers()
    t0 = time.time()
    log.info("building %s (once; about a minute) into %s", TINY_MODEL, out)
    torch.manual_seed(seed)
    texts = _texts()
    tok = _tokenizer(texts)
    blocks = _blocks(tok, texts)
    g = torch.Generator().manual_seed(seed)
    blocks = blocks[torch.randperm(len(blocks), generator=g)]
    n_val = max(8, len(blocks) // 20)
    val, train = blocks[:n_val], blocks[n_val:]
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=N_POSITIONS,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.1,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
    )
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, weight_decay=0.01)
    model.train()
    for step in range(STEPS):
        # 1. linear warmup, then cosine decay to 10% of the peak
        warm = min(1.0, (step + 1) / WARMUP)
        cos = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / STEPS))
        for group in opt.param_groups:
            group["lr"] = PEAK_LR * warm * cos
        # 2. one step on a seeded random batch of blocks
        xb = train[torch.randint(0, len(train), (BATCH,), generator=g)]
        loss = model(input_ids=xb, labels=xb).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        val_loss = float(model(input_ids=val, labels=val).loss)
    _save(
        out,
        model,
        tok,
        {
            "recipe": RECIPE,
            "seed": seed,
            "steps": STEPS,
            "params": sum(p.numel() for p in model.parameters()),
            "val_loss": round(val_loss, 4),
            "build_s": round(time.time() - t0, 1),
        },
    )


def _save(out: Path, model, tok, info: dict) -> None:
    """Write into a temporary sibling, then rename: a crash never leaves a half-built model."""
    from hpo.modelbuild import save_atomically

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    save_atomically(out, write, info)
    log.info("built %s: %s", TINY_MODEL, info)
