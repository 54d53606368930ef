"""Answers a trial's model generates for a fixed, seeded subset of its validation prompts
(``evaluation.generate``), scored against the references by ``hpo.textmetrics``.

The prompts come from the prepared validation blocks themselves, so every data format that has
answers (pairs, chat) works and the prompt is tokenized exactly as in training: each packed
example (positions restart at 0) is split at its last run of loss-carrying tokens, the prompt
being everything before it and the reference that run without its EOS. Examples whose answer was
cut by the block (``data.overlong: truncate``) have no EOS there and are left out. The subset is
drawn with the study's seed, so every trial answers the same prompts.

Generation is transformers' public ``generate``: greedy, batched (prompts of similar length
together, left-padded), with the KV cache, stopping at EOS or ``max_new_tokens``. A
data-parallel trial generates on rank 0 and shares the scores with the other ranks.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from hpo import collective, textmetrics
from hpo.errors import TrialError

log = logging.getLogger(__name__)

#: Characters of each prompt / answer / reference kept with a trial for the report.
SHOWN_CHARS = 300


def split_examples(ids, labels, pos, eos: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids) of every complete example in packed blocks: the reference is
    the example's last run of loss-carrying tokens without its final EOS; examples with no loss
    (a block's padding) or whose last run does not end in EOS (cut by the block) are left out."""
    import numpy as np

    out = []
    for row_ids, row_labels, row_pos in zip(ids, labels, pos, strict=True):
        row_ids, row_labels = np.asarray(row_ids), np.asarray(row_labels)
        starts = [*np.flatnonzero(np.asarray(row_pos) == 0).tolist(), len(row_ids)]
        for a, b in zip(starts, starts[1:], strict=False):
            loss = np.flatnonzero(row_labels[a:b] != -100)
            if not len(loss):
                continue
            end = int(loss[-1]) + 1
            gaps = np.flatnonzero(np.diff(loss) > 1)
            start = int(loss[gaps[-1] + 1]) if len(gaps) else int(loss[0])
            seg = row_ids[a : a + end].tolist()
            if start == 0 or seg[-1] != eos:
                continue
            out.append((seg[:start], seg[start:-1]))
    return out


def pick(n: int, samples: int, seed: int) -> list[int]:
    """The indices (sorted) of ``samples`` of ``n`` examples, the same for a given seed."""
    return sorted(random.Random(seed).sample(range(n), min(samples, n)))


class Generator:
    """One trial's generation: its prompts, references, tokenizer and metrics, set up once."""

    def __init__(self, config: dict[str, Any], val, eval_batch: int):
        """``config["generate"]`` is the spec's ``evaluation.generate``; ``val`` the validation
        (ids, labels, positions).

        Raises:
            TrialError: no complete validation example, or the custom metric cannot load.
        """
        from hpo.data import load_tokenizer

        g = config["generate"]
        self.settings = g
        self.tok = load_tokenizer(config["model_path"])
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos
        examples = split_examples(val[0], val[1], val[2], self.eos)
        if not examples:
            raise TrialError(
                "evaluation.generate: no validation example has a whole answer within data.block_size; "
                "raise data.block_size"
            )
        seed = int(config.get("generate_seed", 0))  # the study's: every trial answers the same prompts
        chosen = [examples[i] for i in pick(len(examples), int(g["samples"]), seed)]
        self.prompts = [p for p, _ in chosen]
        self.prompt_texts = [self.tok.decode(p, skip_special_tokens=True) for p in self.prompts]
        self.references = [self.tok.decode(r, skip_special_tokens=True) for _, r in chosen]
        self.batch = int(g.get("batch_size") or eval_batch)
        self.custom = None
        if g.get("metric"):
            path, func = textmetrics.split_ref(g["metric"]["python"])
            self.custom = (g["metric"]["name"], textmetrics.load_custom(path, func), g["metric"]["python"])
        self.names = [*textmetrics.GENERATED, *([self.custom[0]] if self.custom else [])]  # the metrics
        self.seconds = 0.0
        self.tokens = 0  # tokens generated, all generations together
        self.kept: dict[str, Any] = {}  # the answers kept: the best evaluation's, else the latest
        self.kept_is_best = False

    def run(self, model, device, autocast, dist=collective.SINGLE) -> tuple[dict[str, float], str]:
        """Generate, score and time one evaluation's answers.

        Returns:
            The metrics, and the first ``show`` samples as JSON (prompt, prediction, reference).
        """
        t0 = time.perf_counter()
        names = self.names
        metrics, shown = {n: 0.0 for n in names}, "[]"
        if dist.is_main:
            answers = self._generate(model, device, autocast)
            predictions = [self.tok.decode(a, skip_special_tokens=True) for a in answers]
            metrics = textmetrics.score(
                self.prompt_texts, predictions, self.references, self.settings["normalize"], self.custom
            )
            shown = self._shown(predictions)
        if dist.world > 1:  # rank 0's scores on every rank (the others added zeros)
            metrics = dict(zip(names, dist.all_reduce_sums(*(metrics[n] for n in names)), strict=True))
        self.seconds += time.perf_counter() - t0
        return metrics, shown

    def report(self, metrics: dict[str, float], shown: str | None, improved: bool, epoch: float) -> dict:
        """What a trial's report says of generation: its seconds and tokens so far, and the answers
        kept with their metrics (the best evaluation's when it generated, else the latest).

        Args:
            metrics: the evaluation's metrics (generated ones included when it generated).
            shown: the answers it generated (``run``'s JSON), or None when it did not generate.
            improved: whether it is the trial's best evaluation so far by the objective.
            epoch: where it happened.
        """
        if shown is not None and (improved or not self.kept_is_best):
            self.kept = {
                "generated_samples": shown,
                "generated_metrics": json.dumps({k: metrics[k] for k in self.names}),
                "generated_epoch": round(epoch, 6),
            }
            self.kept_is_best = improved
        elif improved:
            self.kept_is_best = False  # the best moved to an evaluation that did not generate
        return {"generate_s": self.seconds, "generated_tokens": self.tokens, **self.kept}

    def _shown(self, predictions: list[str]) -> str:
        n = int(self.settings.get("show", 3))
        rows = zip(self.prompt_texts[:n], predictions[:n], self.references[:n], strict=True)
        return json.dumps(
            [
                {"prompt": q[-SHOWN_CHARS:], "prediction": p[:SHOWN_CHARS], "reference": r[:SHOWN_CHARS]}
                for q, p, r in rows
            ]
        )

    def _generate(self, model, device, autocast) -> list[list[int]]:
        """Greedy answers (token ids, EOS and what follows cut) to every prompt, in order."""
        import torch
        from transformers import GenerationConfig

        new = int(self.settings["max_new_tokens"])
        prompts = _fit(self.prompts, _context(model), new)
        config = GenerationConfig(
            max_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
            use_cache=True,
        )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding per batch
        answers: list[list[int]] = [[] for _ in prompts]
        model.eval()
        for b in range(0, len(order), self.batch):
            part = order[b : b + self.batch]
            width = max(len(prompts[i]) for i in part)
            ids = torch.full((len(part), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, i in enumerate(part):  # left padding: every answer starts at column ``width``
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            with torch.inference_mode(), autocast():
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )
            for row, i in enumerate(part):
                answer = out[row, width:].tolist()
                answers[i] = answer[: answer.index(self.eos)] if self.eos in answer else answer
                self.tokens += len(answers[i])
        return answers


def _context(model) -> int | None:
    """The longest sequence the model takes (absolute position embeddings), if it says."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _fit(prompts: list[list[int]], context: int | None, new: int) -> list[list[int]]:
    """Each prompt's last tokens, so that it and ``new`` generated tokens fit ``context``.

    Raises:
        TrialError: ``new`` alone fills the context.
    """
    if context is None:
        return prompts
    keep = context - new
    if keep < 1:
        raise TrialError(
            f"evaluation.generate.max_new_tokens ({new}) leaves no room for a prompt in the model's "
            f"context of {context} tokens; lower it"
        )
    return [p[-keep:] for p in prompts]
