"""From raw per-system results to the figures, the seed aggregates, the target ratios and tables."""

from __future__ import annotations

import statistics
from typing import Any

PEERS = ("hf_ray", "tune_optuna", "hf_optuna")
SYSTEMS = ("hpo", *PEERS, "hpo_fp32")  # hpo_fp32: hpo with training.precision fp32 (the peers' arithmetic)


def derive(raw: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """The issue's figures for one system run: overhead per trial, efficiency, and the rest."""
    conc = raw.get("concurrency", concurrency)
    slot_s = raw["wall_s"] * conc
    compute = raw["train_s"] + raw["eval_s"]
    trials = max(1, raw["trials"])
    out = {
        "wall_s": raw["wall_s"],
        "process_wall_s": raw.get("process_wall_s"),
        "import_s": raw.get("import_s"),
        "trials": raw["trials"],
        "pruned": raw["stopped_early"],
        "errors": raw.get("errors", 0),
        "overhead_per_trial_s": round((slot_s - compute) / trials, 2),
        "efficiency": round(compute / slot_s, 3) if slot_s else None,
        "efficiency_steps_only": round(raw["train_s"] / slot_s, 3) if slot_s else None,
        "disk_peak_mb": raw["disk_peak_mb"],
        "best_eval_loss": raw["best_eval_loss"],
        "min_eval_loss_seen": raw.get("min_eval_loss_seen"),
        "train_s": raw["train_s"],
        "eval_s": raw["eval_s"],
        "train_tokens": raw.get("train_tokens"),
        "evaluations": raw.get("evaluations"),
        "concurrency": conc,
        "threads_per_trial": raw.get("threads_per_trial", 1),
        "driver_rss_mb": raw.get("driver_rss_mb"),
        "driver_rss_end_mb": raw.get("driver_rss_end_mb"),
        "tree_rss_peak_mb": raw.get("tree_rss_peak_mb"),
        "load1_mean": raw.get("load1_mean"),
        "machine_cpu_busy_pct_mean": raw.get("machine_cpu_busy_pct_mean"),
        "best_params": raw.get("best_params"),
        "best_eval_loss_note": raw.get("best_eval_loss_note"),
    }
    for key in ("driver_cpu_s", "trial_processes_cpu_s", "ray_services_cpu_s"):
        out[key] = raw.get(key)
    # CPU the trial processes got per second inside steps and evals: ~1 alone on the machine, lower
    # when other work competed (then walls of different systems are not comparable)
    trial_cpu = raw["driver_cpu_s"] if raw.get("trials_in_driver") else raw["trial_processes_cpu_s"]
    share = trial_cpu / (compute * out["threads_per_trial"]) if compute else None
    out["trial_cpu_share"] = round(share, 2) if share is not None else None
    if raw.get("idle_slot_s"):  # hpo: the overhead's start and tail parts, per trial
        for part, slot_s_part in raw["idle_slot_s"].items():
            out[f"overhead_{part}_per_trial_s"] = round(slot_s_part / trials, 2)
    for key in ("trial_tokens_per_s_mean", "hpo_disk_peak_mb", "profile"):
        if key in raw:
            out[key] = raw[key]
    return out


_MEDIAN_KEYS = (
    "wall_s",
    "process_wall_s",
    "trials",
    "pruned",
    "errors",
    "overhead_per_trial_s",
    "overhead_start_per_trial_s",
    "overhead_tail_per_trial_s",
    "efficiency",
    "efficiency_steps_only",
    "disk_peak_mb",
    "min_eval_loss_seen",
    "train_s",
    "eval_s",
    "train_tokens",
    "driver_rss_mb",
    "tree_rss_peak_mb",
    "trial_cpu_share",
)


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One system over seeds: medians of the figures (the machine is noisy), mean and spread of
    ``best_eval_loss`` (issue 5 compares means of the loss)."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out: dict[str, Any] = {}
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in per_seed if r.get(key) is not None]
        if values:
            out[key] = round(statistics.median(values), 3)
    losses = [r["best_eval_loss"] for r in per_seed if r.get("best_eval_loss") is not None]
    out["best_eval_loss"] = round(statistics.fmean(losses), 4) if losses else None
    out["best_eval_loss_mean"] = out["best_eval_loss"]
    out["best_eval_loss_std"] = round(statistics.stdev(losses), 4) if len(losses) > 1 else 0.0
    out["best_eval_loss_min"] = min(losses, default=None)
    out["best_eval_loss_max"] = max(losses, default=None)
    out["seeds"] = len(per_seed)
    out["concurrency"] = per_seed[0]["concurrency"]
    return out


def _ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def _paired_wall_ratio(
    per_seed: dict[str, list[dict[str, Any]]] | None, peer: str, base: str = "hpo"
) -> float | None:
    """The median over seeds of ``base``'s wall / the peer's wall in the same seed (None: one seed)."""
    runs = per_seed or {}
    pairs = [
        (a.get("wall_s"), b.get("wall_s"))
        for a, b in zip(runs.get(base, []), runs.get(peer, []), strict=False)
    ]
    values = [a / b for a, b in pairs if a is not None and b]
    return round(statistics.median(values), 3) if len(values) > 1 else None


def ratios(
    systems: dict[str, dict[str, Any]],
    micro: dict[str, Any] | None,
    per_seed: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every target of issue 5 that this run measures: value, target, met. With several seeds the
    wall ratio is the median of the per-seed ratios (each seed's systems ran back to back)."""
    hpo = systems.get("hpo", {})
    rows: dict[str, tuple[float | None, str]] = {}
    for peer in PEERS:
        if peer not in systems:
            continue
        p = systems[peer]
        wall = _paired_wall_ratio(per_seed, peer) or _ratio(hpo.get("wall_s"), p["wall_s"])
        rows[f"wall hpo/{peer}"] = (wall, _WALL_TARGETS.get(peer, ""))
        rows[f"process wall hpo/{peer}"] = (_ratio(hpo.get("process_wall_s"), p.get("process_wall_s")), "")
        rows[f"disk hpo/{peer}"] = (
            _ratio(hpo.get("disk_peak_mb"), p["disk_peak_mb"], 4),
            "<= 0.05" if peer == "hf_ray" else "",
        )
        rows[f"overhead/trial hpo/{peer}"] = (
            _ratio(hpo.get("overhead_per_trial_s"), p["overhead_per_trial_s"]),
            "",
        )
        if hpo.get("best_eval_loss") is not None and p.get("best_eval_loss") is not None:
            diff = round(hpo["best_eval_loss"] - p["best_eval_loss"], 4)
            rows[f"best_eval_loss hpo-{peer}"] = (diff, "<= 0" if peer == "tune_optuna" else "")
    rows["overhead_per_trial_s hpo"] = (hpo.get("overhead_per_trial_s"), "<= 1.0")
    rows["efficiency hpo"] = (hpo.get("efficiency"), ">= 0.85")
    rows.update(_variant_rows(systems, per_seed))
    if micro:
        rows["throughput hpo/plain Trainer, same precision"] = (micro.get("throughput_ratio"), ">= 0.95")
        rows["throughput hpo/plain Trainer, both fp32"] = (micro.get("throughput_ratio_fp32"), "")
        rows["throughput hpo default/plain Trainer default"] = (
            micro.get("throughput_ratio_vs_plain_default"),
            "",
        )
        rows["hpo --help s"] = (micro.get("help_median_s"), "<= 0.5")
        rows["hpo study show s, 2,000 trials"] = (micro.get("study_show_median_s"), "<= 2")
    return {k: {"value": v, "target": t, "met": met(v, t)} for k, (v, t) in rows.items()}


def _variant_rows(
    systems: dict[str, dict[str, Any]], per_seed: dict[str, list[dict[str, Any]]] | None
) -> dict[str, tuple[float | None, str]]:
    """hpo in fp32 against the peers and against hpo's default: what the precision alone buys."""
    fp32 = systems.get("hpo_fp32")
    if not fp32:
        return {}
    rows: dict[str, tuple[float | None, str]] = {}
    for other in ("hf_ray", "tune_optuna", "hpo"):
        if other not in systems:
            continue
        o = systems[other]
        wall = _paired_wall_ratio(per_seed, other, base="hpo_fp32") or _ratio(fp32["wall_s"], o["wall_s"])
        rows[f"wall hpo_fp32/{other}"] = (wall, "")
        losses = (fp32.get("best_eval_loss"), o.get("best_eval_loss"))
        if other != "hpo" and None not in losses:
            rows[f"best_eval_loss hpo_fp32-{other}"] = (round(losses[0] - losses[1], 4), "")
    rows["overhead_per_trial_s hpo_fp32"] = (fp32.get("overhead_per_trial_s"), "")
    return rows


_WALL_TARGETS = {"hf_ray": "<= 0.6", "tune_optuna": "<= 0.5"}


def met(value: float | None, target: str) -> bool | None:
    if value is None or not target:
        return None
    op, _, bound = target.partition(" ")
    return value <= float(bound) if op == "<=" else value >= float(bound)


_COLUMNS = (
    ("wall_s", "wall s", "{:.1f}"),
    ("trials", "trials", "{:.0f}"),
    ("pruned", "pruned", "{:.0f}"),
    ("overhead_per_trial_s", "overhead/trial s", "{:.2f}"),
    ("efficiency", "efficiency", "{:.3f}"),
    ("disk_peak_mb", "disk peak MB", "{:,.1f}"),
    ("best_eval_loss", "best eval loss", "{:.4f}"),
    ("driver_rss_mb", "driver RSS MB", "{:.0f}"),
)


def cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def systems_table(systems: dict[str, dict[str, Any]]) -> str:
    """A markdown table of every system's figures (best eval loss with its spread over seeds)."""
    head = "| system | " + " | ".join(c[1] for c in _COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(_COLUMNS) + 1)]
    for name in SYSTEMS:
        if name not in systems:
            continue
        s = systems[name]
        cells = []
        for key, _, fmt in _COLUMNS:
            text = cell(s.get(key), fmt)
            if key == "best_eval_loss" and s.get("best_eval_loss_std") is not None:
                text += f" ± {s['best_eval_loss_std']:.4f}"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contention(systems: dict[str, dict[str, Any]], floor: float = 0.85) -> str | None:
    """A warning when some system's trials got much less than a core each (a shared machine)."""
    shares = {k: v.get("trial_cpu_share") for k, v in systems.items() if v.get("trial_cpu_share")}
    low = {k: v for k, v in shares.items() if v < floor}
    if not low:
        return None
    listed = ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
    return f"warning: other work shared the CPU (trial CPU share per compute second: {listed}); rerun alone"


def ratios_table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| figure | value | target | met |", "| --- | --- | --- | --- |"]
    for name, r in rows.items():
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        value = "-" if r["value"] is None else f"{r['value']:g}"
        lines.append(f"| {name} | {value} | {r['target']} | {met} |")
    return "\n".join(lines)
