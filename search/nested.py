"""`search.finalize --sweep NAME` on a set of outer-fold sweeps (search/outer.py).

Each fold's sweep is finalized inside its fold, as any sweep (its top configs retrained, test
of fold k read once, by fold k's finalize). Then the folds are pooled into the set's own
``results/NAME/final.md`` (section "Nested cross-validation") and ``outer.csv``:

- per outer fold: its test sessions, the config its search recommended (the finalize row with
  the best validation statistic: never test) and that config's test macro-F1, seed micro-F1
  and weighted-F1 (mean over the final runs' seeds, chosen epochs);
- pooled over every session, each session's predictions coming from the fold that held it
  out: the same scores, with a 95 % bootstrap interval over all sessions; the mean +/- sd over
  folds; and how often the folds picked the same model family.

The pooled figure is the estimate of what "search, then retrain the best" gives on sessions
nobody tuned on: the search itself sits inside the folds.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.final_settings import FinalizeSettings, build_parser, results_dir_of
from search.final_settings import parse_settings as parse_fold
from search.outer import fold_name, read_set
from search.settings import SWEEP_MANIFEST, UsageError, check_name, parse_cli

SCORES = ("macro_f1", "seed_micro_f1", "weighted_f1")
N_BOOT = 2000
OUTER_CSV = "outer.csv"
FINALIZE_ARGV = "finalize_argv.json"  # the set's finalize flags, for folds a --resume starts


@dataclass
class SetFinalize:
    """A finalize of a set: its folder, its record and one finalize per fold."""

    name: str
    sweep_dir: Path
    record: dict[str, Any]
    folds: list[FinalizeSettings]


@dataclass
class FoldResult:
    """What outer fold k's search recommended and how that config did on fold k's test."""

    k: int
    sweep: str
    test_sessions: list[int]
    label: str
    model: str
    trial_id: str
    config: dict[str, Any]
    key_params: dict[str, Any]  # the values the search chose (its space's parameters)
    seeds: list[int]
    scores: dict[str, list[float]]  # per seed, chosen epochs
    preds: dict[int, list[int]]  # seed -> test predictions, in the fold store's test order
    gold: np.ndarray
    sessions: np.ndarray
    num_classes: int
    neutral_index: int | None


@dataclass
class SetOutcome:
    name: str
    report: Path
    csv: Path
    folds: list[Any] = field(default_factory=list)  # each fold's FinalizeOutcome
    pooled: dict[str, Any] = field(default_factory=dict)
    results: list[FoldResult] = field(default_factory=list)


def names_a_set(argv: list[str], cwd: Path | None = None) -> bool:
    """True when ``--sweep`` names a set of outer-fold sweeps (its sweep.json says so)."""
    try:
        a = parse_cli(build_parser(), argv, "search.finalize")
    except UsageError:
        return False  # the plain parser reports it
    return read_set(results_dir_of(a, cwd) / a.sweep) is not None if _safe(a.sweep) else False


def _safe(name: str) -> bool:
    try:
        check_name("--sweep", name)
    except UsageError:
        return False
    return True


def parse_set(argv: list[str], cwd: Path | None = None) -> SetFinalize:
    """Each fold's finalize settings, validated as a plain finalize's; a fold whose
    finalize exists continues with --resume, a fold without one starts (a set's --resume)."""
    a = parse_cli(build_parser(), argv, "search.finalize")
    sweep_dir = results_dir_of(a, cwd) / a.sweep
    record = read_set(sweep_dir)
    recorded = sweep_dir / FINALIZE_ARGV
    if a.resume and recorded.is_file():  # folds not started yet get the set's own flags
        argv = [*json.loads(recorded.read_text(encoding="utf-8")), "--resume"]
    folds = []
    for k in range(record["folds"]):
        name = fold_name(a.sweep, k)
        fold_argv = _with_sweep(argv, name)
        started = (sweep_dir.parent / name / "final" / "state.json").is_file()
        if started and not a.resume:
            raise UsageError(
                f"sweep {a.sweep!r} already has a finalize (fold {name}); add --resume to "
                "continue it, or move results/<fold>/final away to start over"
            )
        if not started:
            fold_argv = [x for x in fold_argv if x != "--resume"]
        try:
            folds.append(parse_fold(fold_argv, cwd=cwd))
        except UsageError as exc:
            raise UsageError(f"outer fold {k} ({name}): {exc}") from exc
    if not a.resume:  # valid for every fold: what a later --resume gives unstarted folds
        recorded.write_text(json.dumps(argv), encoding="utf-8")
    return SetFinalize(a.sweep, sweep_dir, record, folds)


def _with_sweep(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, x in enumerate(argv):
        if skip:
            skip = False
            continue
        if x == "--sweep":
            out += ["--sweep", name]
            skip = i + 1 < len(argv)
        elif x.startswith("--sweep="):
            out.append(f"--sweep={name}")
        else:
            out.append(x)
    return out


def finalize_set(s: SetFinalize, *, quiet: bool = False) -> SetOutcome:
    """Finalize every fold, then write the nested estimate (final.md, outer.csv)."""
    from search.finalize import finalize

    say = (lambda *_: None) if quiet else (lambda *a: print(*a, flush=True))
    outcomes = []
    for k, fold in enumerate(s.folds):
        say(f"outer fold {k + 1}/{len(s.folds)}: finalize {fold.sweep}")
        outcomes.append(finalize(fold, quiet=quiet))
    results = [fold_result(k, fold, s.record) for k, fold in enumerate(s.folds)]
    results = [r for r in results if r is not None]
    pooled = pool(results)
    report, table = write_nested(s, results, pooled)
    return SetOutcome(s.name, report, table, outcomes, pooled, results)


def fold_result(k: int, fold: FinalizeSettings, record: dict[str, Any]) -> FoldResult | None:
    """Fold ``k``'s recommended config (best validation row of its finalize) and its test
    predictions, read back from the fold's finalize records. None if no row was scored."""
    from search.final_plan import open_store
    from search.final_records import finished_units
    from search.final_report import best_row, build_rows

    state = json.loads(fold.state_path.read_text(encoding="utf-8"))
    rows = build_rows(state["candidates"], list(finished_units(fold).values()))
    best = best_row(rows)
    if best is None:
        return None
    store = open_store(Path(state["store_path"]), state["store_key"])  # as its finalize did
    idx = store.indices("test")
    config = next(c["config"] for c in state["candidates"] if c["key"] == best.key)
    sweep = json.loads((fold.sweep_dir / SWEEP_MANIFEST).read_text(encoding="utf-8"))
    searched = [k for k in sweep.get("space", {}).get("params", config) if k != "model"]
    preds = {
        int(u["seed"]): list(u["test_pred"][str(e)])
        for u, e in zip(best.units, best.chosen_epochs, strict=True)
    }
    return FoldResult(
        k=k,
        sweep=fold.sweep,
        test_sessions=[int(x) for x in record["test_sessions"][k]],
        label=best.label,
        model=best.model,
        trial_id=best.trial_id,
        config=config,
        key_params={k: config[k] for k in searched if k in config},
        seeds=list(best.seeds),
        scores={m: list(best.chosen.get(m, [])) for m in SCORES},
        preds=preds,
        gold=store.labels("test"),
        sessions=store.table["session"].to_numpy()[idx],
        num_classes=store.num_classes,
        neutral_index=store.neutral_index,
    )


def pool(results: list[FoldResult]) -> dict[str, Any]:
    """Pooled scores over every held-out session (seeds every fold has; per seed the folds'
    predictions concatenated), with a 95 % session-bootstrap interval; mean and sd over folds;
    how often the folds agreed on the model family."""
    from models.metrics import bootstrap_scores, classification_metrics, percentile_interval

    if not results:
        return {}
    seeds = sorted(set.intersection(*(set(r.preds) for r in results)))
    if not seeds:  # a failed final run left no seed that every fold has
        return {}
    gold = np.concatenate([r.gold for r in results])
    sessions = np.concatenate([r.sessions for r in results])
    preds = [np.concatenate([np.asarray(r.preds[s]) for r in results]) for s in seeds]
    n_cls, neutral = results[0].num_classes, results[0].neutral_index
    scores = tuple(m for m in SCORES if neutral is not None or m != "seed_micro_f1")
    point = {}
    for m in scores:
        per_seed = [
            classification_metrics(p, gold, "test", n_cls, neutral_index=neutral)[f"test_{m}"]
            for p in preds
        ]
        point[m] = float(np.mean(per_seed)) if per_seed else math.nan
    reps = bootstrap_scores(
        preds, gold, n_cls, groups=sessions, n_boot=N_BOOT, neutral_index=neutral
    )
    ci = {m: percentile_interval(reps[m][np.isfinite(reps[m])]) for m in scores}
    per_fold = {m: [_mean(r.scores[m]) for r in results] for m in scores}
    models = Counter(r.model for r in results)
    family, n_same = models.most_common(1)[0]
    return {
        "scores": scores,
        "seeds": seeds,
        "sessions": len(set(sessions.tolist())),
        "rows": len(gold),
        "point": point,
        "ci": ci,
        "fold_mean": {m: float(np.mean(v)) for m, v in per_fold.items()},
        "fold_sd": {
            m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in per_fold.items()
        },
        "family": family,
        "same_family": n_same,
        "folds": len(results),
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _params_text(config: dict[str, Any]) -> str:
    from search.cli import config_text

    return config_text(config) or "—"


def write_nested(
    s: SetFinalize, results: list[FoldResult], pooled: dict[str, Any]
) -> tuple[Path, Path]:
    """The set's final.md (nested CV section) and outer.csv; the same numbers in both."""
    s.sweep_dir.mkdir(parents=True, exist_ok=True)
    scores = pooled.get("scores", SCORES)
    table = s.sweep_dir / OUTER_CSV
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["fold", "sweep", "test_sessions", "trial_id", "model", "config", "seeds"]
            + [f"test_{m}" for m in scores]
            + [f"test_{m}_{b}" for m in scores for b in ("lo", "hi")]
        )
        for r in results:
            w.writerow(
                [r.k, r.sweep, " ".join(map(str, r.test_sessions)), r.trial_id, r.model]
                + [json.dumps(r.config, sort_keys=True), " ".join(map(str, r.seeds))]
                + [f"{_mean(r.scores[m]):.6f}" for m in scores]
                + [""] * (2 * len(scores))
            )
        if pooled:
            ci = pooled["ci"]
            w.writerow(
                [
                    "pooled",
                    s.name,
                    "all",
                    "",
                    pooled["family"],
                    "",
                    " ".join(map(str, pooled["seeds"])),
                ]
                + [f"{pooled['point'][m]:.6f}" for m in scores]
                + [f"{ci[m][i]:.6f}" for m in scores for i in (0, 1)]
            )
    md = s.sweep_dir / "final.md"
    md.write_text("\n".join(_markdown(s, results, pooled)) + "\n", encoding="utf-8")
    return md, table


def _pct(x: float) -> str:
    return f"{100 * x:.1f}" if math.isfinite(x) else "—"


def _markdown(s: SetFinalize, results: list[FoldResult], pooled: dict[str, Any]) -> list[str]:
    lines = [
        f"# Final runs of {s.name}: nested cross-validation over {s.record['folds']} outer folds",
        "",
        "Each outer fold's sessions were that fold's sealed test split: a complete sweep ran on "
        "the other sessions (train and val), its finalize retrained its top configs and scored "
        "them once on the fold's test sessions. The config each fold recommends is its "
        "finalize's best row by validation. Every session is tested exactly once.",
        "",
        "## Nested cross-validation",
        "",
        "| outer fold | test sessions | recommended (trial, model) | key params | test macro-F1 | "
        "seed micro-F1 | weighted-F1 |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.k} ([{r.sweep}](../{r.sweep}/final.md)) | {', '.join(map(str, r.test_sessions))}"
            f" | {r.trial_id} {r.model} | {_params_text(r.key_params)} | "
            + " | ".join(_pct(_mean(r.scores[m])) for m in SCORES)
            + " |"
        )
    if not pooled:
        return [*lines, "", "No fold produced a scored final run."]
    p, ci = pooled["point"], pooled["ci"]
    lines += [
        "",
        f"**Pooled over all {pooled['sessions']} sessions** ({pooled['rows']} utterances; each "
        f"session's predictions from the fold that held it out; mean over seeds "
        f"{', '.join(map(str, pooled['seeds']))}; 95 % bootstrap interval over sessions):",
        "",
        "| score | pooled | 95 % interval | mean ± sd over folds |",
        "|---|---:|---|---:|",
    ]
    for m in pooled["scores"]:
        lo, hi = ci.get(m, (math.nan, math.nan))
        mean, sd = pooled["fold_mean"].get(m, math.nan), pooled["fold_sd"].get(m, math.nan)
        lines.append(
            f"| test {m.replace('_', '-')} | {_pct(p[m])} | [{_pct(lo)}, {_pct(hi)}] | "
            f"{_pct(mean)} ± {_pct(sd)} |"
        )
    lines += [
        "",
        f"Model family: {pooled['same_family']} of {pooled['folds']} folds picked "
        f"{pooled['family']}.",
        "",
        "This is the headline estimate of case-tune's recommendation on unseen sessions; a "
        "single split's test figure measures one config on a few sessions.",
    ]
    return lines


def summary(outcome: SetOutcome) -> str:
    from search.finalize import summary as fold_summary

    lines = []
    for fold in outcome.folds:
        lines += [fold_summary(fold), ""]
    p = outcome.pooled
    if p:
        lo, hi = p["ci"]["macro_f1"]
        lines.append(
            f"Nested CV {outcome.name}: pooled test macro-F1 {_pct(p['point']['macro_f1'])} "
            f"[{_pct(lo)}, {_pct(hi)}] over {p['sessions']} sessions; folds "
            f"{_pct(p['fold_mean']['macro_f1'])} ± {_pct(p['fold_sd']['macro_f1'])}; "
            f"{p['same_family']}/{p['folds']} folds picked {p['family']}."
        )
    lines.append(f"Report:    {outcome.report} and {outcome.csv}")
    return "\n".join(lines)
