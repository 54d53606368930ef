"""Scores of generated answers against their references (``evaluation.generate``): the
normalisation the spec names, ``exact_match``, ``rouge_l`` (the ``rouge-score`` package),
``chrf`` (``sacrebleu``), and a user's own metric from a Python file beside the spec.

Pure Python on strings: no torch, nothing downloaded. ``rouge_score`` and ``sacrebleu`` are
imported where used (only trial processes score). The trial side (``hpo.generation``) produces
the texts; this module only judges them.

Scales: ``exact_match`` and ``rouge_l`` (the mean ROUGE-L F-measure, ``rouge-score``'s own
tokenizer: lowercase ASCII letters and digits) are in [0, 1]; ``chrf`` is sacrebleu's corpus chrF,
in [0, 100] as sacrebleu reports it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpo.errors import TrialError

#: Generation metrics hpo computes, and the direction each is optimized in.
GENERATED = {"exact_match": "maximize", "rouge_l": "maximize", "chrf": "maximize"}
#: The normalisation steps ``evaluation.generate.normalize`` may name, applied in this order.
NORMALIZE = ("strip", "lowercase", "whitespace")
_SPACES = re.compile(r"\s+")


def normalize(text: str, steps: Sequence[str]) -> str:
    """``text`` after the named steps: ``strip`` (ends), ``lowercase``, ``whitespace`` (every run
    of whitespace becomes one space, and the ends are stripped).

    >>> normalize("  The  Cat\\n sat ", ["lowercase", "whitespace"])
    'the cat sat'
    """
    if "strip" in steps:
        text = text.strip()
    if "lowercase" in steps:
        text = text.lower()
    if "whitespace" in steps:
        text = _SPACES.sub(" ", text).strip()
    return text


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The share of predictions equal to their reference (compare normalised texts)."""
    if not predictions:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(predictions)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The mean ROUGE-L F-measure of each prediction against its reference (``rouge-score``)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / max(1, len(scores))


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character n-gram F-score, 0-100) of the predictions."""
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


_BUILTIN: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "chrf": chrf,
}


def score(
    prompts: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    steps: Sequence[str],
    custom: tuple[str, Callable[..., Any], str] | None = None,
) -> dict[str, float]:
    """Every generation metric of one evaluation.

    Args:
        prompts, predictions, references: the samples, in the same order.
        steps: the normalisation applied before the built-in metrics.
        custom: (its name, the function, its ``file.py:function`` for messages), or None; it gets
            the texts as generated (no normalisation).

    Raises:
        TrialError: the custom metric raised, or returned something that is not a finite number.
    """
    preds = [normalize(p, steps) for p in predictions]
    refs = [normalize(r, steps) for r in references]
    out = {name: float(fn(preds, refs)) for name, fn in _BUILTIN.items()}
    if custom is not None:
        name, fn, where = custom
        out[name] = call_custom(fn, where, prompts, predictions, references)
    return out


# ---------------------------------------------------------------- a user's own metric


def split_ref(ref: str) -> tuple[str, str]:
    """``"metrics.py:score"`` -> (``"metrics.py"``, ``"score"``).

    Raises:
        ValueError: not of the form ``file.py:function``.
    """
    path, sep, func = ref.rpartition(":")
    if not sep or not path.endswith(".py") or not func.isidentifier():
        raise ValueError(f"write it as file.py:function (got {ref!r})")
    return path, func


def check_custom(path: str, func: str) -> str | None:
    """Why ``path`` cannot give the metric function ``func``, or None. Read, not run: the file is
    parsed (a syntax error is named) and must define ``func`` at its top level."""
    p = Path(path)
    if not p.is_file():
        return f"file not found: {path} (paths are relative to the spec file's folder)"
    try:
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=path)
    except SyntaxError as e:
        return f"{path}: not valid Python (line {e.lineno}: {e.msg})"
    except (OSError, UnicodeDecodeError) as e:
        return f"{path}: cannot read it ({e})"
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            return None
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == func for t in node.targets
        ):
            return None
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == func for a in node.names):
            return None
    return f"{path} defines no function {func}(predictions, references); add it or fix the name"


def load_custom(path: str, func: str) -> Callable[..., Any]:
    """Import ``path`` (its folder first on ``sys.path``, so it can import its neighbours) and
    return its function ``func``.

    Raises:
        TrialError: the file fails to import, or has no callable ``func``.
    """
    where = f"{Path(path).name}:{func}"
    spec = importlib.util.spec_from_file_location(f"hpo_user_metric_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise TrialError(f"custom metric {where}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(Path(path).parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything
        raise TrialError(f"custom metric {where}: importing {path} raised {type(e).__name__}: {e}") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise TrialError(f"custom metric {where}: {path} defines no function {func}")
    return fn


def takes_rows(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes one argument (rows of prompt/prediction/reference) rather than two
    (predictions, references)."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) == 1


def call_custom(
    fn: Callable[..., Any],
    where: str,
    prompts: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
) -> float:
    """The user's metric on the samples: ``fn(rows)`` with rows of ``{"prompt", "prediction",
    "reference"}`` when it takes one argument, else ``fn(predictions, references)``.

    Raises:
        TrialError: it raised (its message is kept), or did not return a finite number.
    """
    try:
        if takes_rows(fn):
            rows = [
                {"prompt": q, "prediction": p, "reference": r}
                for q, p, r in zip(prompts, predictions, references, strict=True)
            ]
            value = fn(rows)
        else:
            value = fn(list(predictions), list(references))
    except Exception as e:  # noqa: BLE001 - the user's function may raise anything
        raise TrialError(f"custom metric {where} raised {type(e).__name__}: {e}") from e
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TrialError(f"custom metric {where} returned {value!r:.80}; it must return a finite float")
    return float(value)
