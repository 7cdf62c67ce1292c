"""What `search.finalize` writes for people to read: the seed-style table, CSVs and figures.

Everything here is computed from the finished units' JSON records (one per (config, seed)) and
the store's test labels (`write_report` does it all), so a resumed finalize rebuilds the same
files from the same records. Files, under results/<sweep>/:

    final.md                 the table in the seed's format (mean ± std over seeds, x100),
                             the all-neutral baseline (all-<majority class> for a store with
                             no neutral class), the published numbers when comparable,
                             per-class F1 of the best row, and how every number was chosen
    final.csv                one row per config: means and stds of every test metric, for the
                             epoch chosen by validation and for the seed's fixed epoch 120
    final_runs.csv           one row per (config, seed): the same metrics, unaggregated
    final_macro_f1.png       macro-F1 per config, mean with spread over seeds
    final_confusion.png      confusion matrix of the best row (summed over seeds)

The "best row" is the config with the highest mean *validation* macro-F1 at its chosen epochs:
test numbers never pick anything, not even which row gets the confusion matrix.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.faithful import NOT_REPRODUCIBLE
from search.final_plan import FIXED_EPOCH
from search.redact import redact_uri
from search.results import save_figure

if TYPE_CHECKING:
    from search.final_plan import Candidate
    from search.final_settings import FinalizeSettings

# The four numbers of every row; the first three are the seed's table columns.
METRICS = ("macro_f1", "seed_micro_f1", "weighted_f1", "micro_f1")
HEADINGS = {
    "macro_f1": "Macro-F1",
    "seed_micro_f1": "Seed Micro-F1 (non-neutral rows)",
    "weighted_f1": "Weighted-F1",
    "micro_f1": "Micro-F1 (= accuracy)",
}
SEED_MICRO_DEFINITION = (
    '*Seed Micro-F1 (non-neutral rows)*: the seed\'s "Micro-F1" — micro-F1 over the test rows '
    "whose gold label is not neutral, i.e. accuracy on the emotional utterances; it is not the "
    "usual micro-F1, which is the last column (accuracy over all rows)."
)

# The seed README's table (KEMDy20 test sessions, epoch 120, mean of seeds 0/42/2023):
# Macro / "Micro" (non-neutral rows) / Weighted, x100. Unimodal rows come from its notebook.
PUBLISHED: dict[str, tuple[str, float, float, float, str]] = {
    "case-compressing": ("CASE (compressing)", 32.82, 43.77, 87.89, "README"),
    "case-attention": ("CASE (attention)", 27.91, 39.15, 86.60, "README"),
    "concat": ("Concat", 30.16, 40.54, 87.94, "README"),
    "mmm": ("MMM", 30.01, 40.07, 86.94, "README"),
    "case-concat-compressing": ("CASE-concat (compressing)", 31.62, 45.34, 88.40, "README"),
    "case-concat-attention": ("CASE-concat (attention)", 26.49, 34.53, 86.51, "README"),
    "text-only": ("text_only", 14.45, 0.55, 80.13, "notebook"),
    "speech-only": ("speech_only", 17.86, 14.40, 83.63, "notebook"),
}
SEED_ENCODERS = ("klue/bert-base", "kresnik/wav2vec2-large-xlsr-korean")
NO_NEUTRAL_NOTE = (
    "The store names no neutral class, so the seed's micro-F1 over non-neutral rows is not "
    "computed; the baseline predicts the training split's most frequent class."
)
DEMO_NOTE = "demo corpus: not comparable with the published KEMDy20 numbers"


# -- which corpus ---------------------------------------------------------------------------
def corpus_kind(manifest: Mapping[str, Any]) -> str:
    """ "demo", "kemdy20" (the seed's corpus and encoders), or "other" (anything else).

    The store manifest names the corpus and the encoders; the demo corpus is written as
    ``demo-*`` and encoded by the locally built ``demo-*`` encoders (in its KEMDy20 layout or
    listed in a manifest). A manifest corpus is never KEMDy20 (it may be anything), and
    KEMDy20 with other encoders is not the seed's setting either.
    """
    corpus = manifest.get("corpus") or {}
    corpus = corpus if isinstance(corpus, Mapping) else {}
    encoders = manifest.get("encoders") or {}
    names = tuple(str((encoders.get(m) or {}).get("name", "")) for m in ("text", "audio"))
    if corpus.get("kind") == "demo" or (
        corpus.get("kind") in (None, "kemdy20", "manifest")
        and (
            str(corpus.get("name", "")).startswith("demo-")
            or any(n.startswith("demo-") for n in names)
        )
    ):
        return "demo"
    if corpus.get("kind") == "manifest":
        return "other"
    return "kemdy20" if names == SEED_ENCODERS else "other"


# -- aggregation ----------------------------------------------------------------------------
@dataclass
class Row:
    """One config of the table: its per-seed test metrics at the chosen and the fixed epoch."""

    key: str
    label: str
    model: str
    rank: int | None
    trial_id: str
    seeds: list[int] = field(default_factory=list)
    chosen_epochs: list[int] = field(default_factory=list)
    fixed_epochs: list[int] = field(default_factory=list)
    chosen: dict[str, list[float]] = field(default_factory=dict)  # test_* metric -> per seed
    fixed: dict[str, list[float]] = field(default_factory=dict)
    val_chosen: list[float] = field(default_factory=list)  # val statistic at the chosen epoch
    units: list[dict[str, Any]] = field(default_factory=list)
    # proto ("chosen" | "fixed") -> metric -> 95 % interval over test sessions (bootstrap)
    ci: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # proto -> metric -> bootstrap replicates of the mean over seeds (paired across rows)
    replicates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def val_score(self) -> float:
        vals = [v for v in self.val_chosen if math.isfinite(v)]
        return float(np.mean(vals)) if vals else -math.inf


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single seed)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def fmt_pm(values: Sequence[float]) -> str:
    """``mean ± std`` in percent with two decimals, as in the seed's table."""
    m, s = mean_std(values)
    if not math.isfinite(m):
        return "—"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if math.isfinite(s) else f"{100 * m:.2f}"


def fmt_cell(values: Sequence[float], ci: tuple[float, float] | None) -> str:
    """``mean ± std [low, high]``: spread over seeds, then the 95 % test-session interval."""
    text = fmt_pm(values)
    if text == "—" or ci is None or not all(math.isfinite(v) for v in ci):
        return text
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def build_rows(
    candidates: Sequence[Mapping[str, Any]], units: Sequence[Mapping[str, Any]]
) -> list[Row]:
    """Rows in candidate order; each collects the finished units of its config, by seed."""
    rows = []
    for c in candidates:
        row = Row(
            key=c["key"],
            label=c["label"],
            model=c["model"],
            rank=c.get("rank"),
            trial_id=c.get("trial_id", ""),
        )
        mine = sorted((u for u in units if u["candidate"] == c["key"]), key=lambda u: u["seed"])
        for u in mine:
            row.units.append(dict(u))
            row.seeds.append(int(u["seed"]))
            ce, fe = int(u["chosen_epoch"]), int(u["fixed_epoch"])
            row.chosen_epochs.append(ce)
            row.fixed_epochs.append(fe)
            t_ch = u["test_at_checkpoint"][str(ce)]
            t_fx = u["test_at_checkpoint"][str(fe)]
            for m in (*METRICS, *[k[5:] for k in t_ch if k.startswith("test_f1_")]):
                row.chosen.setdefault(m, []).append(float(t_ch.get(f"test_{m}", math.nan)))
                row.fixed.setdefault(m, []).append(float(t_fx.get(f"test_{m}", math.nan)))
            # the selection statistic at the chosen epoch (raw val macro-F1 for older records)
            by_epoch = u.get("selection_at_checkpoint") or u["val_at_checkpoint"]
            row.val_chosen.append(float(by_epoch[str(ce)]))
        rows.append(row)
    return rows


N_BOOT = 2000


def metrics_for(neutral_index: int | None) -> tuple[str, ...]:
    """The columns of a store's tables: METRICS, less the seed's micro-F1 when the store has
    no neutral class (then it is never computed, see models.metrics)."""
    return tuple(m for m in METRICS if neutral_index is not None or m != "seed_micro_f1")


def attach_intervals(
    rows: Sequence[Row],
    gold: Sequence[int],
    sessions: Sequence[Any],
    num_classes: int,
    neutral_index: int | None = 0,
) -> None:
    """Give every row, for both protocols, a 95 % interval per metric from a bootstrap over
    test *sessions* (the test split's own sampling noise, which seeds do not show). Every row
    uses the same resamples, so differences between rows are paired."""
    from models.metrics import bootstrap_scores, percentile_interval

    for r in rows:
        if not r.seeds:
            continue
        for proto, epochs in (("chosen", r.chosen_epochs), ("fixed", r.fixed_epochs)):
            preds = [u["test_pred"][str(e)] for u, e in zip(r.units, epochs, strict=True)]
            reps = bootstrap_scores(
                preds,
                gold,
                num_classes,
                groups=sessions,
                n_boot=N_BOOT,
                neutral_index=neutral_index,
            )
            r.replicates[proto] = reps
            r.ci[proto] = {
                m: percentile_interval(reps[m][np.isfinite(reps[m])])
                for m in metrics_for(neutral_index)
            }


def runner_up(rows: Sequence[Row], best: Row | None) -> Row | None:
    """The row with the next-highest validation statistic after ``best``."""
    others = [r for r in rows if r is not best and r.seeds and math.isfinite(r.val_score)]
    return max(others, key=lambda r: r.val_score) if best is not None and others else None


def difference_text(best: Row, other: Row) -> str:
    """Whether the best row's test macro-F1 is distinguishable from ``other``'s: a paired
    bootstrap over test sessions of the difference of their seed means."""
    a, b = best.replicates.get("chosen"), other.replicates.get("chosen")
    if a is None or b is None:
        return ""
    diff = a["macro_f1"] - b["macro_f1"]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    observed = float(np.mean(best.chosen["macro_f1"]) - np.mean(other.chosen["macro_f1"]))
    span = f"{100 * observed:+.2f} (95 % interval {100 * lo:+.2f} to {100 * hi:+.2f})"
    if lo <= 0 <= hi:
        return (
            f"**The best row is not distinguishable from the next ({other.label}) on this test "
            f"split**: test macro-F1 difference {span}, paired bootstrap over test sessions. "
            "Either is a sound choice; the test split is too small to tell them apart."
        )
    return (
        f"Against the next row by validation ({other.label}): test macro-F1 difference {span}, "
        "paired bootstrap over test sessions; the interval excludes zero."
    )


def best_row(rows: Sequence[Row]) -> Row | None:
    """The row with the highest mean validation macro-F1 at its chosen epochs (never test)."""
    scored = [r for r in rows if r.seeds and math.isfinite(r.val_score)]
    return max(scored, key=lambda r: r.val_score) if scored else None


def _epochs_text(epochs: Sequence[int]) -> str:
    return ", ".join(str(e) for e in epochs) if epochs else "—"


# -- files ----------------------------------------------------------------------------------
def write_csvs(
    rows: Sequence[Row], out_dir: Path, metrics: Sequence[str] = METRICS
) -> tuple[Path, Path]:
    """final.csv (one row per config) and final_runs.csv (one per config and seed)."""
    per_config, per_run = out_dir / "final.csv", out_dir / "final_runs.csv"
    _write_config_csv(rows, per_config, metrics)
    _write_runs_csv(rows, per_run, metrics)
    return per_config, per_run


def _write_config_csv(rows: Sequence[Row], path: Path, metrics: Sequence[str]) -> None:
    cols = [
        "label",
        "model",
        "sweep_rank",
        "trial_id",
        "seeds",
        "chosen_epochs",
        "fixed_epochs",
        "val_macro_f1_mean",
    ]
    for proto in ("chosen", "fixed120"):
        for m in metrics:
            cols += [
                f"{proto}_test_{m}_mean",
                f"{proto}_test_{m}_std",
                f"{proto}_test_{m}_ci95_low",
                f"{proto}_test_{m}_ci95_high",
            ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            rec: dict[str, Any] = {
                "label": r.label,
                "model": r.model,
                "sweep_rank": r.rank,
                "trial_id": r.trial_id,
                "seeds": " ".join(map(str, r.seeds)),
                "chosen_epochs": " ".join(map(str, r.chosen_epochs)),
                "fixed_epochs": " ".join(map(str, r.fixed_epochs)),
                "val_macro_f1_mean": mean_std(r.val_chosen)[0],
            }
            for proto, src, key in (("chosen", r.chosen, "chosen"), ("fixed120", r.fixed, "fixed")):
                for m in metrics:
                    mean, std = mean_std(src.get(m, []))
                    rec[f"{proto}_test_{m}_mean"], rec[f"{proto}_test_{m}_std"] = mean, std
                    lo, hi = r.ci.get(key, {}).get(m, (math.nan, math.nan))
                    rec[f"{proto}_test_{m}_ci95_low"], rec[f"{proto}_test_{m}_ci95_high"] = lo, hi
            w.writerow(rec)


def _write_runs_csv(rows: Sequence[Row], path: Path, metrics: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        rcols = [
            "label",
            "model",
            "seed",
            "unit_id",
            "mlflow_run_id",
            "chosen_epoch",
            "val_macro_f1_at_chosen",
            "fixed_epoch",
        ]
        rcols += [f"chosen_test_{m}" for m in metrics] + [f"fixed120_test_{m}" for m in metrics]
        w = csv.DictWriter(fh, fieldnames=rcols)
        w.writeheader()
        for r in rows:
            for i, u in enumerate(r.units):
                rec = {
                    "label": r.label,
                    "model": r.model,
                    "seed": r.seeds[i],
                    "unit_id": u["unit_id"],
                    "mlflow_run_id": u.get("mlflow_run_id", ""),
                    "chosen_epoch": r.chosen_epochs[i],
                    "val_macro_f1_at_chosen": r.val_chosen[i],
                    "fixed_epoch": r.fixed_epochs[i],
                }
                for m in metrics:
                    rec[f"chosen_test_{m}"] = r.chosen[m][i]
                    rec[f"fixed120_test_{m}"] = r.fixed[m][i]
                w.writerow(rec)


def plot_macro_f1(
    rows: Sequence[Row], baseline_macro: float, path: Path, baseline_label: str = "all-neutral"
) -> Path:
    """Bars = mean test macro-F1 at the validation-chosen epoch; dots = single seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.seeds]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(shown) + 2), 3.8))
    for i, r in enumerate(shown):
        vals = [100 * v for v in r.chosen["macro_f1"]]
        m, s = mean_std(vals)
        ax.bar(i, m, yerr=s if math.isfinite(s) else None, color="tab:blue", alpha=0.75, capsize=4)
        ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        ax.text(i + 0.08, m, f"{m:.1f}", ha="left", va="bottom", fontsize=8)
    if math.isfinite(baseline_macro):
        ax.axhline(100 * baseline_macro, color="tab:red", ls="--", lw=1, label=baseline_label)
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(shown)), [r.label for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test macro-F1 (x100)")
    ax.set_title(
        "Test macro-F1 per config at the epoch chosen by validation\n"
        "bar = mean over seeds, whisker = std, dots = single seeds",
        fontsize=9,
    )
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="row fraction")
    return save_figure(fig, path)


def _table(
    rows: Sequence[Row],
    proto: str,
    baseline: Mapping[str, float],
    published: bool,
    metrics: Sequence[str] = METRICS,
    baseline_label: str = "all-neutral",
) -> list[str]:
    epoch_head = "Epochs (chosen by val macro-F1)" if proto == "chosen" else "Epoch used"
    head = ["Model", "Sweep rank", *(HEADINGS[m] for m in metrics), epoch_head, "Seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        src = r.chosen if proto == "chosen" else r.fixed
        epochs = r.chosen_epochs if proto == "chosen" else r.fixed_epochs
        ci = r.ci.get(proto, {})
        cells = [
            r.label,
            str(r.rank) if r.rank else "—",
            *(fmt_cell(src.get(m, []), ci.get(m)) for m in metrics),
            _epochs_text(epochs),
            " ".join(map(str, r.seeds)) or "none finished",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    base = [f"{100 * baseline.get(f'test_{m}', math.nan):.2f}" for m in metrics]
    base = [b if b != "nan" else "—" for b in base]
    lines.append(
        f"| *{baseline_label} baseline (same test split)* | — | {' | '.join(base)} | — | — |"
    )
    if published:
        for model in dict.fromkeys([r.model for r in rows] + list(PUBLISHED)):
            if model not in PUBLISHED:
                continue
            name, macro, micro, weighted, source = PUBLISHED[model]
            lines.append(
                f"| *{name} — published on KEMDy20 (seed {source})* | — | {macro:.2f} | "
                f"{micro:.2f} | {weighted:.2f} | — | 120 (picked on test) | 0 42 2023 |"
            )
    return lines


def _folds_text(folds: int) -> str:
    if folds < 2:
        return ""
    return (
        f" With {folds} session folds: each run is {folds} heads, each trained on all "
        "non-test sessions but one fold's and validated on that fold; the epoch is chosen "
        "by the fold mean, and test scores the heads' ensemble (mean class probabilities)."
    )


def write_markdown(
    path: Path,
    rows: Sequence[Row],
    *,
    baseline: Mapping[str, float],
    kind: str,
    header: Mapping[str, Any],
    label_names: Sequence[str],
    best: Row | None,
    failed: Sequence[str] = (),
    figures: Mapping[str, str] | None = None,
    comparison: str = "",
    metrics: Sequence[str] = METRICS,
    baseline_label: str = "all-neutral",
) -> Path:
    """The seed-style Markdown report. ``header`` holds command, store_key, date, sweep and
    tracking details; ``kind`` is :func:`corpus_kind` of the store."""
    figures = figures or {}
    lines = [
        *_header_lines(header, kind),
        *_score_lines(rows, header, baseline, kind, metrics, baseline_label),
    ]
    if best is not None:
        lines += _best_lines(best, comparison, label_names, figures)
    if figures.get("macro"):
        lines += [f"![test macro-F1 per config]({figures['macro']})", ""]
    if failed:
        lines += ["## Units that failed", "", *(f"- {f}" for f in failed), ""]
    lines += [
        "Files: `final.csv` (per config), `final_runs.csv` (per config and seed), "
        "`final/units/*.json` (the raw records this page is built from).",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _header_lines(h: Mapping[str, Any], kind: str) -> list[str]:
    """How the numbers were made (command, store, protocol, MLflow), and whether the corpus
    allows comparing them with the published ones."""
    lines = [
        f"# Final results — sweep `{h['sweep']}`",
        "",
        f"- Command: `{h['command']}`",
        *(f"- Resumed with: `{c}`" for c in h.get("resumed_commands", [])),
        f"- Data store key: `{h['store_key']}` ({kind} corpus)",
        f"- Date: {h['date']}",
        f"- Protocol: each config trained for {h['epochs']} epochs on the training sessions, "
        f"once per seed ({' '.join(map(str, h['seeds']))}), with the learning-rate schedule "
        "its sweep trial had (the trial was the first epochs of this run); validation scored "
        f"every epoch and the weights kept where the selection statistic ({h.get('statistic', 'val macro-F1')} "
        "of val macro-F1) peaks, and at the fixed epoch; test scored once for each, after "
        "training." + _folds_text(h.get("folds") or 0),
        "- What `faithful` configs cannot reproduce of the seed (cached features):",
        *(f"  - {item}" for item in NOT_REPRODUCIBLE),
        f"- MLflow: parent run `{h.get('parent_run_id', '')}` in `{h.get('tracking_uri', '')}`",
        "",
    ]
    if kind == "demo":
        lines += [f"**{DEMO_NOTE}.** The published rows are therefore not shown.", ""]
    elif kind == "other":
        lines += [
            "**Not the seed's setting** (another corpus than KEMDy20, or other encoders than "
            f"{' / '.join(SEED_ENCODERS)}): the published numbers are not shown.",
            "",
        ]
    return lines


def _score_lines(
    rows: Sequence[Row],
    h: Mapping[str, Any],
    baseline: Mapping[str, float],
    kind: str,
    metrics: Sequence[str],
    baseline_label: str,
) -> list[str]:
    """The two tables: at the epoch chosen by validation, and at the seed's fixed epoch."""
    lines = [
        "## Test scores at the epoch chosen by validation",
        "",
        "Mean ± sample standard deviation over seeds, x100, then in brackets a 95 % interval "
        "from a bootstrap over the test sessions (resampling whole sessions: the test split's "
        "own sampling noise, which the seeds do not show; "
        f"{h.get('test_sessions', '?')} test sessions here: with few sessions the interval is "
        "wide and skewed low, since a resample can leave a class out and macro-F1 then scores "
        "it 0). For each seed the reported epoch is where the selection statistic of "
        "validation macro-F1 peaks (ties: earliest); test never chose anything.",
        "",
        *_table(
            rows,
            "chosen",
            baseline,
            published=kind == "kemdy20",
            metrics=metrics,
            baseline_label=baseline_label,
        ),
        "",
        SEED_MICRO_DEFINITION if "seed_micro_f1" in metrics else NO_NEUTRAL_NOTE,
        "",
        f"## The seed's protocol: fixed epoch {h.get('fixed_target', 120)} (for comparison)",
        "",
        f"The weights at epoch {h.get('fixed_target', 120)} (or the last epoch when training "
        "is shorter), as the seed reported — an epoch the seed picked while looking at test "
        "scores. The epoch actually used is in the table.",
        "",
        *_table(
            rows, "fixed", baseline, published=False, metrics=metrics, baseline_label=baseline_label
        ),
        "",
    ]
    if kind == "kemdy20":
        lines += [
            "Published rows: the seed README's table (KEMDy20, epoch 120, seeds 0/42/2023); "
            "unimodal rows from the seed's notebook. Published rows have no ordinary "
            "micro-F1.",
            "",
        ]
    return lines


def _best_lines(
    best: Row, comparison: str, label_names: Sequence[str], figures: Mapping[str, str]
) -> list[str]:
    """The best row by validation: why it is best, its per-class F1, its confusion matrix."""
    lines = [
        f"## Best row: {best.label}",
        "",
        f"Chosen by the mean over seeds of the validation statistic at the chosen epochs "
        f"({best.val_score:.4f}), never by test. {comparison}",
        "",
        "Per-class test F1 (x100, mean ± std over seeds):",
        "",
        "| " + " | ".join(label_names) + " |",
        "|" + "---|" * len(label_names),
        "| " + " | ".join(fmt_pm(best.chosen.get(f"f1_{n}", [])) for n in label_names) + " |",
        "",
    ]
    if figures.get("confusion"):
        lines += [
            f"Confusion matrix (test, summed over seeds): ![]({figures['confusion']})",
            "",
        ]
    return lines


# -- the report of a finalize ---------------------------------------------------------------
def write_report(
    settings: FinalizeSettings,
    store: Any,
    candidates: Sequence[Candidate],
    done: Mapping[str, Mapping[str, Any]],
    state: Mapping[str, Any],
    failed: Sequence[str],
) -> tuple[list[Path], dict[str, Any] | None]:
    """final.md, final.csv, final_runs.csv and the figures, from the finished units; returns
    the files (final.md first) and the best row's summary (None without a scored row)."""
    from models.metrics import all_neutral_metrics, baseline_name

    out = settings.sweep_dir
    gold, names = store.labels("test"), store.label_names
    # A store without a neutral class: the constant baseline is its training majority class.
    const, neutral = store.baseline_class(), store.neutral_index
    baseline = all_neutral_metrics(gold, "test", store.num_classes, neutral, names, predict=const)
    base_label = baseline_name(names, const)
    metrics = metrics_for(neutral)
    rows = build_rows([asdict(c) for c in candidates], list(done.values()))
    sessions = store.table["session"].to_numpy()[store.indices("test")]
    attach_intervals(rows, gold, sessions, store.num_classes, neutral)
    best = best_row(rows)
    other = runner_up(rows, best)
    comparison = difference_text(best, other) if best is not None and other else ""
    files = list(write_csvs(rows, out, metrics))
    figures = _write_figures(rows, best, store, baseline["test_macro_f1"], base_label, out)
    md = write_markdown(
        out / "final.md",
        rows,
        baseline=baseline,
        kind=corpus_kind(store.manifest),
        header=_header(settings, state, store.key, sessions),
        label_names=names,
        best=best,
        failed=failed,
        figures={k: p.name for k, p in figures.items()},
        comparison=comparison,
        metrics=metrics,
        baseline_label=base_label,
    )
    return [md, *files, *figures.values()], _best_summary(best, metrics, comparison)


def _write_figures(
    rows: Sequence[Row],
    best: Row | None,
    store: Any,
    baseline_macro_f1: float,
    baseline_label: str,
    out: Path,
) -> dict[str, Path]:
    """The macro-F1 plot (when any row has a seed) and the best row's confusion matrix."""
    figures: dict[str, Path] = {}
    if any(r.seeds for r in rows):
        path = out / "final_macro_f1.png"
        figures["macro"] = plot_macro_f1(rows, baseline_macro_f1, path, baseline_label)
    if best is not None:
        from models.metrics import confusion_matrix

        n, gold = store.num_classes, store.labels("test")
        cm = np.zeros((n, n), dtype=np.int64)
        for u in best.units:
            cm += confusion_matrix(u["test_pred"][str(u["chosen_epoch"])], gold, n)
        title = f"{best.label}: test, chosen epochs, summed over {len(best.units)} seed(s)"
        path = out / "final_confusion.png"
        figures["confusion"] = plot_confusion(cm, store.label_names, title, path)
    return figures


def _header(
    settings: FinalizeSettings, state: Mapping[str, Any], store_key: str, sessions: np.ndarray
) -> dict[str, Any]:
    """What final.md says of how it was made: commands, store, date, protocol, MLflow run."""
    from models.selection import STATISTIC

    return {
        "sweep": settings.sweep,
        "command": state["settings"].get("command") or settings.command,
        "resumed_commands": state.get("resumed_commands", []),
        "store_key": store_key,
        "date": _dt.date.today().isoformat(),
        "epochs": settings.epochs,
        "statistic": STATISTIC,
        "seeds": settings.seeds,
        "parent_run_id": state["parent_run_id"],
        "tracking_uri": redact_uri(settings.tracking_uri),
        "fixed_target": FIXED_EPOCH,
        "test_sessions": len(set(sessions.tolist())),
        "folds": settings.folds,
    }


def _best_summary(
    best: Row | None, metrics: Sequence[str], comparison: str
) -> dict[str, Any] | None:
    """The best row's numbers for the console summary and the parent run's metrics."""
    if best is None:
        return None
    return {
        "label": best.label,
        "seeds": best.seeds,
        "chosen_epochs": best.chosen_epochs,
        "metrics": {f"test_{m}": mean_std(best.chosen[m])[0] for m in metrics},
        "ci": best.ci.get("chosen", {}).get("macro_f1"),
        "comparison": comparison.replace("**", ""),
    }
