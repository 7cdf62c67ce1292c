"""What a sweep writes for people to read, under results/<sweep>/, built from its MLflow record.

MLflow is the sweep's record of every trial (params, per-epoch metrics, status), so the files
here are derived from it and agree with it by construction; the Optuna study (persisted in
sqlite) supplies the optimisation-history and parameter-importance figures.

    leaderboard.md      top trials by best val macro-F1
    trials.csv          every trial: parameters, best val metrics, epochs run, status
    best_configs.yaml   top-K full TrainConfig dicts (+ trial/run ids, best epoch, metrics),
                        the best config per model family, and where the sweep's data lives
    optimization_history.png, param_importances.png, best_by_model.png
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from models import selection
from search import tracking
from search.trainable import STAT_METRIC, TIE_METRIC, tie_broken

VAL_METRICS = ("val_macro_f1", "val_weighted_f1", "val_micro_f1", "val_seed_micro_f1", "val_loss")
CONFIG_TAG = tracking.CONFIG
TOP_K = 10
RANKED = ("completed", "stopped_early")  # statuses that rank; failed and killed do not
log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    trial_id: str
    run_id: str
    model: str
    status: str  # completed | stopped_early | failed | killed
    config: dict[str, Any]
    epochs_run: int = 0
    best_epoch: int | None = None
    best: dict[str, float] = field(default_factory=dict)  # val metrics at the best epoch
    error: str = ""
    tie: float = math.nan  # val macro-AUROC at the last epoch: the search's tie-break
    number: int | None = None  # the trial's number in the sweep's Optuna study (its ledger)

    @property
    def ranks(self) -> bool:
        """Only trials that ended well rank: a failed trial's finite score up to its failure
        would otherwise make it the recommendation, and finalize would retrain it into the
        same failure."""
        return self.status in RANKED

    @property
    def score(self) -> float:
        """What the search compared: the selection statistic + the AUROC tie-break
        (search.trainable.tie_broken), -inf when there is none."""
        v = self.best.get("val_macro_f1", float("nan"))
        if not math.isfinite(v):
            return -math.inf
        return tie_broken({STAT_METRIC: v, TIE_METRIC: self.tie}, STAT_METRIC)


def _config_of(run: Any) -> dict[str, Any]:
    raw = run.data.tags.get(CONFIG_TAG)
    if raw:
        return json.loads(raw)
    return dict(run.data.params)  # strings; only if the tag is missing


def _history(client: Any, run_id: str, key: str) -> list[float]:
    """A metric's per-epoch values in epoch order (NaN for an epoch that has none)."""
    values = {m.step: m.value for m in client.get_metric_history(run_id, key)}
    return [values.get(e, math.nan) for e in range(1, max(values, default=0) + 1)]


def score_trial(client: Any, run_id: str, rec: TrialRecord) -> None:
    """Fill ``rec`` with the selection statistic (models.selection) of each val metric at the
    trial's last epoch, the bootstrap SE of val macro-F1 there, and the old, optimistic
    maximum over epochs (shown for comparison only)."""
    history = _history(client, run_id, "val_macro_f1")
    if not history:
        return
    rec.epochs_run = len(history)
    rec.best_epoch = rec.epochs_run  # the statistic is taken at the last epoch
    for key in VAL_METRICS:
        values = _history(client, run_id, key)
        if values:  # val_seed_micro_f1 is not logged for a store without a neutral class
            rec.best[key] = selection.trial_score(values)
    auroc = _history(client, run_id, TIE_METRIC)
    if auroc and len(auroc) == rec.epochs_run:
        rec.tie = auroc[-1]
    se = _history(client, run_id, "val_macro_f1_se")
    if se and math.isfinite(se[-1]):
        rec.best["val_macro_f1_se"] = se[-1]
    finite = [v for v in history if math.isfinite(v)]
    if finite:
        rec.best["val_macro_f1_max"] = max(finite)


def collect_trials(client: Any, exp_id: str, parent_run_id: str) -> list[TrialRecord]:
    """Every trial of the sweep, from MLflow: those that rank best first, by the search's own
    score (`TrialRecord.score`), then failed and killed ones."""
    records = []
    for run in tracking.trial_runs(client, exp_id, parent_run_id):
        tags = run.data.tags
        status = tags.get(tracking.STATUS) or {
            "FINISHED": "completed",
            "FAILED": "failed",
            "KILLED": "killed",
        }.get(run.info.status, run.info.status.lower())
        rec = TrialRecord(
            trial_id=tags.get(tracking.TRIAL_ID, ""),
            run_id=run.info.run_id,
            model=tags.get(tracking.MODEL, ""),
            status=status,
            config=_config_of(run),
            error=tags.get(tracking.ERROR, ""),
            number=int(tags[tracking.NUMBER]) if tags.get(tracking.NUMBER) else None,
        )
        score_trial(client, run.info.run_id, rec)
        records.append(rec)
    # Ties by config, not by Tune's random trial id, so a rerun of the sweep lists its trials
    # (and picks its best) in the same order.
    records.sort(key=rank_key)
    return records


def rank_key(r: TrialRecord) -> tuple[Any, ...]:
    """The one order of trials: ranked ones by score, exact ties by config (not by Tune's
    random trial id, so a rerun of the sweep lists its trials and picks its best in the same
    order), failed and killed ones last; then the ledger's number."""
    config = json.dumps(r.config, sort_keys=True, default=str)
    number = -1 if r.number is None else r.number
    return (not r.ranks, -r.score, config, number, r.trial_id)


def ranked(records: list[TrialRecord]) -> list[TrialRecord]:
    """The trials a recommendation may come from, best first: ended well, with a score."""
    return [r for r in records if r.ranks and math.isfinite(r.score)]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


KEY_PARAMS = (
    "hidden",
    "dropout",
    "lr",
    "weight_decay",
    "batch_size",
    "schedule",
    "loss",
    "class_weights",
    "contrastive",
    "faithful",
)


def write_trials_csv(records: list[TrialRecord], path: Path) -> None:
    param_keys: list[str] = []
    for r in records:
        for k in r.config:
            if k not in param_keys:
                param_keys.append(k)
    rows = []
    for r in records:
        row = {
            "trial_id": r.trial_id,
            "trial_number": r.number,
            "mlflow_run_id": r.run_id,
            "model": r.model,
            "status": r.status,
            "epochs_run": r.epochs_run,
            "best_epoch": r.best_epoch,
        }
        # the selection statistic of each val metric, its SE and the old maximum over epochs
        row.update(
            {k: r.best.get(k) for k in (*_logged(records), "val_macro_f1_se", "val_macro_f1_max")}
        )
        row.update({k: r.config.get(k) for k in param_keys if k != "model"})
        row["error"] = r.error
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def _fmt_score(best: dict[str, float]) -> str:
    value, se = best.get("val_macro_f1", math.nan), best.get("val_macro_f1_se", math.nan)
    if not math.isfinite(value):
        return "—"
    return f"{value:.4f} ± {se:.3f}" if math.isfinite(se) else f"{value:.4f}"


def _logged(records: list[TrialRecord]) -> list[str]:
    """VAL_METRICS the sweep logged (no seed micro-F1 when the store has no neutral class)."""
    return [k for k in VAL_METRICS if k == "val_macro_f1" or any(k in r.best for r in records)]


def write_leaderboard(records: list[TrialRecord], path: Path, *, sweep: str, top: int = 20) -> None:
    shown = [k for k in VAL_METRICS[1:4] if k in _logged(records)]
    heads = {
        "val_weighted_f1": "val weighted-F1",
        "val_micro_f1": "val micro-F1",
        "val_seed_micro_f1": "val seed micro-F1",
    }
    shown_records = ranked(records)
    lines = [
        f"# Sweep `{sweep}` — leaderboard",
        "",
        f"{len(records)} trials; the {len(shown_records)} that ended well (completed or "
        "stopped early) with a score, sorted by the selection statistic: validation macro-F1 "
        f"({selection.STATISTIC}; the mean over session folds when the sweep used folds), "
        "the number the search ranked by. ± is the bootstrap standard error of one epoch's "
        "val macro-F1, resampling whole val sessions (rows of one session are not "
        "independent); where val has fewer than 3 sessions (the demo has 2) it resamples "
        "rows and is too narrow. Rows closer than about two of them are not "
        "distinguishable on this validation data. *max* is the luckiest single epoch, shown "
        "only to see how much a maximum over noisy epochs flatters. Test data was not read.",
        "",
        "| # | trial | model | key params | val macro-F1 | max | "
        + " | ".join(heads[k] for k in shown)
        + " | epochs run | status |",
        "|" + "---|" * (8 + len(shown)),
    ]
    for i, r in enumerate(shown_records[:top], 1):
        params = ", ".join(f"{k}={_fmt(r.config[k])}" for k in KEY_PARAMS if k in r.config)
        extra = [
            f"{k}={_fmt(r.config[k])}"
            for k in (
                "focal_gamma",
                "warmup_ratio",
                "contrastive_weight",
                "contrastive_temperature",
            )
            if k in r.config
        ]
        if extra:
            params += ", " + ", ".join(extra)
        m = [f"{r.best[k]:.4f}" if k in r.best else "—" for k in shown]
        score = _fmt_score(r.best)
        top = f"{r.best['val_macro_f1_max']:.4f}" if "val_macro_f1_max" in r.best else "—"
        lines.append(
            f"| {i} | {r.trial_id} | {r.model} | {params} | {score} | {top} | {' | '.join(m)} "
            f"| {r.epochs_run} | {r.status} |"
        )
    ended = [r for r in records if not r.ranks]
    if ended:
        lines += ["", f"{len(ended)} trial(s) failed or were killed (never recommended):"]
        lines += [
            f"- {r.trial_id} ({r.model}, {r.status}, {r.epochs_run} epochs): "
            f"{r.error or 'no error recorded'}"
            for r in ended
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _full_config(config: dict[str, Any]) -> dict[str, Any]:
    from models.config import TrainConfig

    return TrainConfig.from_dict(config).to_dict()


def _entry(rank: int, r: TrialRecord) -> dict[str, Any]:
    return {
        "rank": rank,
        "trial_id": r.trial_id,
        "trial_number": r.number,
        "mlflow_run_id": r.run_id,
        "model": r.model,
        "status": r.status,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "val_metrics": {k: float(v) for k, v in r.best.items()},
        "config": _full_config(r.config),
    }


def write_best_configs(
    records: list[TrialRecord], path: Path, *, sweep_info: dict[str, Any], top_k: int = TOP_K
) -> None:
    scored = ranked(records)
    per_model: dict[str, dict[str, Any]] = {}
    for rank, r in enumerate(scored, 1):
        if r.model not in per_model:
            per_model[r.model] = _entry(rank, r)
    doc = {
        **sweep_info,
        "metric": "val_macro_f1",
        "statistic": selection.STATISTIC,
        "mode": "max",
        "num_scored": len(scored),  # finalize --top-k beyond top's length says so
        "top": [_entry(i, r) for i, r in enumerate(scored[:top_k], 1)],
        "best_per_model": per_model,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def save_figure(fig_or_ax: Any, path: Path) -> Path:
    """Write a figure (or an Axes' figure, as Optuna's plots return) as PNG and close it: one
    look for every figure case-tune writes, sweep and finalize alike."""
    import matplotlib.pyplot as plt

    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") else fig_or_ax
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(
    records: list[TrialRecord], out: Path, *, optuna_storage: str | None, study_name: str
) -> list[str]:
    """PNG figures; returns notes about figures that could not be drawn (never raises)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    notes: list[str] = []
    best: dict[str, float] = {}
    for r in ranked(records):
        best[r.model] = max(best.get(r.model, -math.inf), r.best["val_macro_f1"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if best:
        names = sorted(best, key=best.get, reverse=True)
        ax.bar(names, [best[n] for n in names], color="tab:blue")
        for i, n in enumerate(names):
            ax.text(i, best[n], f"{best[n]:.3f}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=25)
    ax.set_ylabel("best val macro-F1")
    ax.set_title("Best validation macro-F1 per model family")
    save_figure(fig, out / "best_by_model.png")

    if not optuna_storage:
        return ["no Optuna storage: optimisation history and importances skipped"]
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        from search.ledger import load_study

        study = load_study(optuna_storage, study_name)
    except Exception as exc:  # noqa: BLE001 - a missing study only costs figures
        return [f"Optuna study {study_name} unreadable: {exc}"]
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        try:
            save_figure(ovm.plot_optimization_history(study), out / "optimization_history.png")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"optimisation history not drawn: {exc}")
        if len(complete) >= 2:
            try:
                save_figure(ovm.plot_param_importances(study), out / "param_importances.png")
            except Exception as exc:  # noqa: BLE001
                notes.append(f"parameter importances not drawn: {exc}")
        else:
            notes.append(
                f"parameter importances need >= 2 completed trials ({len(complete)} completed)"
            )
    return notes


def write_results(
    client: Any,
    exp_id: str,
    parent_run_id: str,
    out_dir: Path,
    *,
    sweep_info: dict[str, Any],
    optuna_storage: str | None,
) -> tuple[list[TrialRecord], list[str]]:
    """Write every results file of a sweep; returns the trial records and figure notes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = collect_trials(client, exp_id, parent_run_id)
    sweep = str(sweep_info.get("sweep", out_dir.name))
    write_trials_csv(records, out_dir / "trials.csv")
    write_leaderboard(records, out_dir / "leaderboard.md", sweep=sweep)
    write_best_configs(records, out_dir / "best_configs.yaml", sweep_info=sweep_info)
    notes = write_figures(records, out_dir, optuna_storage=optuna_storage, study_name=sweep)
    return records, notes
