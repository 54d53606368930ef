"""The realistic workload's figures (``scripts/bench --workload smollm2``): per system, the issue's
targets as ratios from the same run, and the tables printed at the end. Pure functions of the raw
per-system results (no torch, no Ray), so they are cheap to test and to rerun on a saved JSON."""

from __future__ import annotations

import statistics
from typing import Any

from bench_peers.report import cell, met, ratios_table

__all__ = ["medians", "ratios", "ratios_table", "reference", "system", "table"]

SYSTEMS = ("hpo", "hf_ray", "tune_optuna")
PEERS = ("hf_ray", "tune_optuna")


def _median(values: list[float] | None, digits: int = 1) -> float | None:
    values = [v for v in values or [] if v is not None]
    return round(statistics.median(values), digits) if values else None


def _share(part: float | None, whole: float) -> float | None:
    return round(part / whole, 4) if part is not None and whole else None


def system(raw: dict[str, Any]) -> dict[str, Any]:
    """One search system's figures: wall, best loss, trial tokens/s (median), peak RSS per trial,
    checkpoint-write and evaluation seconds with their share of trial time, disk high-water."""
    trial_time = sum(raw.get("trial_s") or [])
    out = {
        "wall_s": raw["wall_s"],
        "process_wall_s": raw.get("process_wall_s"),
        "best_eval_loss": raw.get("best_eval_loss"),
        "best_params": raw.get("best_params"),
        "trials": raw["trials"],
        "pruned": raw.get("stopped_early"),
        "errors": raw.get("errors", 0),
        "trial_tokens_per_s_median": _median(raw.get("trial_tokens_per_s")),
        "trial_tokens_per_s": raw.get("trial_tokens_per_s"),
        "trial_batch": raw.get("trial_batch"),
        "trial_full_budget": raw.get("trial_full_budget"),
        "trial_rss_peak_mb": raw.get("trial_rss_peak_mb"),
        "trial_rss_peak_median_mb": raw.get("trial_rss_peak_median_mb"),
        "trial_rss_peaks_mb": raw.get("trial_rss_peaks_mb"),
        "trial_s_total": round(trial_time, 1),
        "checkpoint_write_s": raw.get("save_s"),
        "checkpoint_write_share": _share(raw.get("save_s"), trial_time),
        "eval_s": raw.get("eval_s"),
        "eval_share": _share(raw.get("eval_s"), trial_time),
        "train_s": raw.get("train_s"),
        "disk_peak_mb": raw.get("disk_peak_mb"),
        "tree_rss_peak_mb": raw.get("tree_rss_peak_mb"),
        "driver_rss_mb": raw.get("driver_rss_mb"),
        "load1_mean": raw.get("load1_mean"),
        "load1_max": raw.get("load1_max"),
        "machine_cpu_busy_pct_mean": raw.get("machine_cpu_busy_pct_mean"),
        "best_eval_loss_note": raw.get("best_eval_loss_note"),
    }
    for key in ("checkpoint_mb", "precisions", "saves", "trial_save_s", "evaluations"):
        if key in raw:
            out[key] = raw[key]
    if raw.get("checkpoint_mb"):
        out["disk_peak_checkpoints"] = round(raw["disk_peak_mb"] / raw["checkpoint_mb"], 2)
    return out


def reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The plain HF Trainer runs (one fixed configuration, side by side as the trials run)."""
    return {
        "runs": len(runs),
        "tokens_per_s_median": _median([r["tokens_per_s"] for r in runs]),
        "tokens_per_s": [r["tokens_per_s"] for r in runs],
        "rss_peak_mb": max(r["tree_rss_peak_mb"] for r in runs),
        "rss_peaks_mb": [r["tree_rss_peak_mb"] for r in runs],
        "eval_loss": [r.get("eval_loss") for r in runs],
        "steps_s": [r.get("steps_s") for r in runs],
        "precision": runs[0].get("precision"),
        "config": runs[0].get("config"),
        "load1_mean": _median([r.get("load1_mean") for r in runs]),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(systems: dict[str, dict[str, Any]], ref: dict[str, Any] | None, keep_top_k: int, conc: int):
    """Issue 17's targets, each as value / target / met, from this run's figures."""
    hpo = systems.get("hpo", {})
    rows: dict[str, tuple[float | None, str]] = {}
    if ref:
        rates = hpo.get("trial_tokens_per_s") or []
        # per trial: tokens/s, batch, trained its whole budget (a JSON from before that field: unknown)
        trials = list(
            zip(
                rates,
                hpo.get("trial_batch") or [],
                hpo.get("trial_full_budget") or [None] * len(rates),
                strict=False,
            )
        )
        same_batch = [r for r, b, _ in trials if b == ref["config"]["batch_size"]]
        # the reference's batch and its whole budget: the plain runs' configuration
        whole = [r for r, b, full in trials if b == ref["config"]["batch_size"] and full]
        rows["trial tokens/s hpo / plain Trainer (median trial; same precision)"] = (
            _ratio(hpo.get("trial_tokens_per_s_median"), ref["tokens_per_s_median"]),
            ">= 1.1",
        )
        rows["  the same, hpo trials of the reference's batch size only"] = (
            _ratio(_median(same_batch), ref["tokens_per_s_median"]),
            "",
        )
        rows["  the same, hpo trials of the reference's batch that trained their whole budget"] = (
            _ratio(_median(whole), ref["tokens_per_s_median"]),
            "",
        )
        rows["peak RSS per trial hpo / plain Trainer (largest of each)"] = (
            _ratio(hpo.get("trial_rss_peak_mb"), ref["rss_peak_mb"]),
            "<= 1.1",
        )
    rows["checkpoint writes / trial time, hpo"] = (hpo.get("checkpoint_write_share"), "<= 0.03")
    rows["disk high-water hpo, in checkpoints"] = (
        hpo.get("disk_peak_checkpoints"),
        f"<= {keep_top_k + conc}",
    )
    walls = [systems[p]["wall_s"] for p in PEERS if p in systems]
    if walls:
        rows["wall hpo / the faster peer"] = (_ratio(hpo.get("wall_s"), min(walls)), "<= 0.7")
    for peer in PEERS:
        if peer in systems:
            rows[f"  wall hpo / {peer}"] = (_ratio(hpo.get("wall_s"), systems[peer]["wall_s"]), "")
            a, b = hpo.get("best_eval_loss"), systems[peer].get("best_eval_loss")
            rows[f"  best eval loss hpo - {peer}"] = (round(a - b, 4) if None not in (a, b) else None, "")
    return {k: {"value": v, "target": t, "met": met(v, t)} for k, (v, t) in rows.items()}


def medians(runs: list[dict[str, Any]], paths: list[str]) -> dict[str, Any]:
    """Several whole runs' figures as their medians: each ratio (met or not by its median) and each
    system's wall, best eval loss and median trial tokens/s, with every run's value beside it."""

    def both(values: list) -> dict[str, Any]:
        return {"median": _median(values, 4), "runs": values}

    ratios: dict[str, dict[str, Any]] = {}
    for name, first in runs[0]["ratios"].items():
        row = both([r["ratios"].get(name, {}).get("value") for r in runs])
        ratios[name] = {
            "value": row["median"],
            "target": first["target"],
            "met": met(row["median"], first["target"]),
            "runs": row["runs"],
        }
    figures = {
        system: {
            key: both([r["systems"].get(system, {}).get(key) for r in runs])
            for key in ("wall_s", "best_eval_loss", "trial_tokens_per_s_median", "trial_rss_peak_mb")
        }
        for system in runs[0]["systems"]
    }
    figures["plain"] = {
        "trial_tokens_per_s_median": both(
            [r["reference"]["tokens_per_s_median"] for r in runs if r.get("reference")]
        )
    }
    meta = [{k: r["meta"].get(k) for k in ("started", "finished", "loadavg_before", "commit")} for r in runs]
    return {"workload": "smollm2", "runs": paths, "ratios": ratios, "systems": figures, "meta": meta}


_COLUMNS = (
    ("wall_s", "wall s", "{:.0f}"),
    ("trials", "trials", "{:.0f}"),
    ("pruned", "stopped early", "{:.0f}"),
    ("best_eval_loss", "best eval loss", "{:.4f}"),
    ("trial_tokens_per_s_median", "tok/s per trial", "{:.0f}"),
    ("trial_rss_peak_mb", "peak RSS/trial MB", "{:,.0f}"),
    ("checkpoint_write_s", "ckpt write s", "{:.1f}"),
    ("checkpoint_write_share", "ckpt share", "{:.1%}"),
    ("eval_share", "eval share", "{:.1%}"),
    ("disk_peak_mb", "disk high-water MB", "{:,.0f}"),
)


def table(systems: dict[str, dict[str, Any]], ref: dict[str, Any] | None) -> str:
    """Markdown: one row per system, and the plain Trainer reference's row where it applies."""
    lines = ["| system | " + " | ".join(c[1] for c in _COLUMNS) + " |", "|" + " --- |" * (len(_COLUMNS) + 1)]
    for name in SYSTEMS:
        if name in systems:
            cells = [cell(systems[name].get(k), f) for k, _, f in _COLUMNS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if ref:
        row = {
            "trial_tokens_per_s_median": ref["tokens_per_s_median"],
            "trial_rss_peak_mb": ref["rss_peak_mb"],
        }
        cells = [cell(row.get(k), f) for k, _, f in _COLUMNS]
        lines.append(f"| plain Trainer x{ref['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
