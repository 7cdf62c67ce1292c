"""Does the search's answer hold up? The recommended config scored on data the search never saw.

    python bench/bench_selection.py [--seeds 0 1 2] [--final-seeds 0 42] [--top-k 3]

An **oracle set**: the demo generator with another seed writes 40 new sessions (new speakers,
new sentences, the same task), extracted with the demo store's own encoders; no part of the
search or of finalize ever reads it. For each sweep seed, two arms at equal compute:

- **product**: `search.run` as README runs it (TPE + ASHA, no warm starts, the selection
  statistic, trials scheduled over the 150-epoch final run), then `search.finalize`
  (top-K configs x final seeds); its recommendation is finalize's best row;
- **random**: random search without early stopping, as many trials of `--max-epochs` as the
  product's sweep used epochs, then the same finalize.

Every trial's weights at its last epoch (its Tune checkpoint) are scored on the oracle: the
true quality of each config *as the sweep trained it* (trial protocol, one seed). Regret is the
best oracle macro-F1 among the configs the sweep tried minus the oracle macro-F1 of the
recommended config, both under the trial protocol (like with like). Finalize's own runs (final
protocol: 150 epochs, weights chosen by the statistic, mean over final seeds) are scored on the
oracle too. "today's rule" re-ranks the same product sweep by its old statistic, the maximum
of val macro-F1 over epochs, and takes its #1 (selection only; the committed demo's measured
regret under the full old protocol was 0.069). Search efficiency: epochs TPE + ASHA needs until
its running recommendation (best trial by the statistic so far) is as good on the oracle as
random search's final one; ratio = random's budget / those epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import update_section  # noqa: E402
from search.settings import WARM_START  # noqa: E402

ORACLE_SEED = 1001
ORACLE_SESSIONS = 40


# -- the oracle -----------------------------------------------------------------------------
def oracle_store(demo_store: Path) -> Any:
    """40 fresh demo sessions through the demo store's own encoders (built once, cached)."""
    from data_prep.prepare import prepare_demo_store
    from data_prep.store import FeatureStore

    demo = FeatureStore.open(demo_store)
    enc = demo.manifest["encoders"]
    result = prepare_demo_store(
        sessions=ORACLE_SESSIONS,
        seed=ORACLE_SEED,
        audio_model=enc["audio"]["path"],
        text_model=enc["text"]["path"],
        progress=False,
    )
    oracle = FeatureStore.open(result.path)
    sizes = ("max_frames", "max_tokens", "text_dim", "audio_dim")
    assert all(getattr(oracle, s) == getattr(demo, s) for s in sizes), "oracle sizes differ"
    return oracle


class Oracle:
    """Scores weights on every row of the oracle store (macro-F1, the product's convention)."""

    def __init__(self, store: Any) -> None:
        import numpy as np

        self.store = store
        self.rows = np.arange(len(store.table))
        self.gold = store.table["label_id"].to_numpy(dtype=np.int64)
        self._data: dict[tuple, Any] = {}

    def score(self, config: dict[str, Any], *state_dicts: dict[str, Any]) -> float:
        """Oracle macro-F1 of one head, or of the ensemble of several (mean probabilities, as
        finalize scores fold heads)."""
        import torch

        from models.config import TrainConfig
        from models.data import load_split
        from models.metrics import classification_metrics
        from models.train import model_for

        cfg = TrainConfig.from_dict(config)
        probs = []
        for state in state_dicts:
            model = model_for(cfg, self.store, state)
            frames = cfg.audio_frames or self.store.max_frames
            key = (frozenset(model.uses), frames, frozenset(model.trim))
            if key not in self._data:
                self._data[key] = load_split(
                    self.store,
                    "train",
                    rows=self.rows,
                    uses=model.uses,
                    frames=frames,
                    trim=model.trim,
                    device=torch.device("cpu"),
                )
            data = self._data[key]
            with torch.no_grad():
                logits = [model(b).logits for _, b in data.batches(torch.arange(data.n), 256)]
            probs.append(torch.cat(logits).softmax(dim=-1))
        pred = torch.stack(probs).mean(dim=0).argmax(dim=-1)
        m = classification_metrics(
            pred,
            self.gold,
            "oracle",
            self.store.num_classes,
            self.store.neutral_index,
            self.store.label_names,
        )
        return m["oracle_macro_f1"]


# -- one arm --------------------------------------------------------------------------------
def run_arm(
    store: Path,
    tmp: Path,
    name: str,
    *,
    seed: int,
    searcher: str,
    scheduler: str,
    trials: int,
    warm_start: bool,
    args: argparse.Namespace,
    folds: int = 0,
) -> dict:
    from bench.common import bench_sweep
    from search import finalize as fz

    settings, outcome, t_sweep = bench_sweep(
        store,
        tmp,
        name,
        searcher=searcher,
        scheduler=scheduler,
        seed=seed,
        num_samples=trials,
        max_epochs=args.max_epochs,
        final_epochs=args.final_epochs,
        warm_start=warm_start,
        no_warm_start=not warm_start,
        folds=folds or None,
    )
    fz_argv = [
        "--sweep",
        name,
        "--results-dir",
        str(tmp / "results"),
        "--top-k",
        str(args.top_k),
        "--seeds",
        *map(str, args.final_seeds),
    ]
    t0 = time.perf_counter()
    final = fz.finalize(fz.parse_settings(fz_argv, cwd=tmp), quiet=True)
    arm = {
        "name": name,
        "workdir": str(tmp),
        "tracking_uri": settings.tracking_uri,
        "parent": outcome.parent_run_id,
        "storage": settings.storage_path,
        "out_dir": str(final.out_dir),
        "max_epochs": settings.max_epochs,
        "folds": settings.folds,
        "t_sweep": t_sweep,
        "t_final": time.perf_counter() - t0,
    }
    # What analysis needs, kept beside the runs: `--analyse DIR` redoes it without training.
    (tmp / f"{name}.json").write_text(json.dumps(arm, indent=1), encoding="utf-8")
    return arm


def trial_records(arm: dict) -> list[dict]:
    """Per trial: config, val histories and the path of its last Tune checkpoint."""
    from search import tracking

    client = tracking.client_for(arm["tracking_uri"])
    exp_id = tracking.experiment_id(client, arm["tracking_uri"])
    out = []
    for run in tracking.trial_runs(client, exp_id, arm["parent"]):
        tid = run.data.tags[tracking.TRIAL_ID]
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_macro_f1")}
        # Tune's folder is the sweep's name plus a suffix that keeps it the sweep's own
        ckpts = sorted(Path(arm["storage"]).glob(f"{arm['name']}*/*{tid}*/checkpoint_*/trial.pt"))
        finished = [
            (m.timestamp, m.step)
            for m in client.get_metric_history(run.info.run_id, "val_macro_f1")
        ]
        out.append(
            {
                "trial_id": tid,
                "config": json.loads(run.data.tags[tracking.CONFIG]),
                "val": [hist[e] for e in sorted(hist)],
                "checkpoint": ckpts[-1] if ckpts else None,
                "ended": max((t for t, _ in finished), default=0),
            }
        )
    return out


def score_trials(records: list[dict], oracle: Oracle) -> None:
    import torch

    for r in records:
        r["oracle"] = math.nan
        if r["checkpoint"] is None:
            continue
        state = torch.load(r["checkpoint"], map_location="cpu", weights_only=True)
        heads = state["trainers"]
        r["oracle"] = statistics.mean(oracle.score(r["config"], h["model"]) for h in heads)


def final_units(arm: dict, oracle: Oracle) -> list[dict]:
    """Finalize's units with the oracle score of their chosen weights (final protocol; the
    fold heads' ensemble when finalize ran with folds)."""
    import torch

    from search.finalize import chosen_checkpoints

    units = []
    for p in sorted(Path(arm["out_dir"]).glob("units/*.json")):
        u = json.loads(p.read_text())
        ckpts = [
            torch.load(path, map_location="cpu", weights_only=True)
            for path in chosen_checkpoints(u)
        ]
        u["oracle"] = oracle.score(ckpts[0]["config"], *(c["state_dict"] for c in ckpts))
        units.append(u)
    return units


def _arm_file(arm: dict, what: str) -> Path:
    """``<workdir>/<arm>-<what>.json``: results kept beside the arm's own record."""
    workdir = Path(arm.get("workdir") or Path(arm["out_dir"]).parents[2])
    return workdir / f"{arm['name']}-{what}.json"


def extra_final_runs(arm: dict, oracle: Oracle, args: argparse.Namespace, store: Path) -> None:
    """The final protocol for the configs finalize did not train but the oracle says are best
    as trials: the top ``--extra`` by trial-protocol oracle score, each trained as finalize
    trains (``--final-epochs``, every final seed, weights chosen by the statistic) and scored
    on the oracle. Kept in ``<arm>-extra.json`` beside the arm (``--analyse`` reads it)."""
    import io

    import ray
    import torch

    from models.config import TrainConfig
    from search.finalize import run_unit

    records = trial_records(arm)
    score_trials(records, oracle)
    done = {u["trial_id"] for u in final_units(arm, oracle)}
    ranked = sorted(
        (r for r in records if math.isfinite(r["oracle"])),
        key=lambda r: (-r["oracle"], r["trial_id"]),
    )
    todo = [r for r in ranked[: args.extra] if r["trial_id"] not in done]
    task = ray.remote(run_unit).options(num_cpus=1, max_retries=0)
    refs = {}
    for r in todo:
        for seed in args.final_seeds:
            cfg = TrainConfig.from_dict({**r["config"], "epochs": args.final_epochs, "seed": seed})
            unit = {
                "unit_id": f"extra-{r['trial_id']}-s{seed}",
                "trial_id": r["trial_id"],
                "seed": seed,
                "config": cfg.to_dict(),
            }
            refs[(r["trial_id"], seed)] = task.remote(unit, str(store), threads=1)
    out: dict[str, dict[str, float]] = {}
    failed: list[str] = []
    for (tid, seed), ref in refs.items():
        try:
            rec = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # e.g. a config that diverges after epoch 20
            out.setdefault(tid, {})[str(seed)] = math.nan
            failed.append(f"{tid} seed {seed}: {str(exc).strip().splitlines()[-1]}")
            continue
        blob = rec["_checkpoints"][str(rec["chosen_epoch"])]
        ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        out.setdefault(tid, {})[str(seed)] = oracle.score(ckpt["config"], ckpt["state_dict"])
    _arm_file(arm, "extra").write_text(json.dumps(out, indent=1), encoding="utf-8")
    if failed:  # a config that cannot be trained for the final run has no final-protocol score
        _arm_file(arm, "extra-failed").write_text(json.dumps(failed, indent=1), encoding="utf-8")


def _failed_extras(arm: dict) -> int:
    path = _arm_file(arm, "extra-failed")
    return len(json.loads(path.read_text())) if path.is_file() else 0


def extra_scores(arm: dict) -> dict[str, list[float]]:
    path = _arm_file(arm, "extra")
    if not path.is_file():
        return {}
    scores = {t: list(v.values()) for t, v in json.loads(path.read_text()).items()}
    return {t: v for t, v in scores.items() if all(math.isfinite(x) for x in v)}


# -- what each rule recommends ----------------------------------------------------------------
def sweep_order(arm: dict) -> list[str]:
    """Finalize's candidates (trial ids) in the sweep's rank order, from its state file."""
    state = json.loads((Path(arm["out_dir"]) / "state.json").read_text())
    ranked = sorted(state["candidates"], key=lambda c: c.get("rank") or 0)
    return [str(c["trial_id"]) for c in ranked]


def rank_by(records: list[dict], stat: str) -> list[dict]:
    from models.selection import trial_score

    def value(r: dict) -> float:
        v = trial_score(r["val"]) if stat == "trailing" else max(r["val"], default=math.nan)
        return v if math.isfinite(v) else -math.inf

    return sorted(records, key=lambda r: (-value(r), r["trial_id"]))


def finalize_pick(
    units: list[dict], candidates: list[str] | None = None, seeds: list[int] | None = None
) -> tuple[str, float]:
    """(trial id, mean oracle of its final runs) of the config finalize names best (by the mean
    over seeds of the val statistic at the chosen epochs), among ``candidates`` and ``seeds``."""
    by_trial: dict[str, list[dict]] = {}
    for u in units:
        if (candidates is None or u["trial_id"] in candidates) and (
            seeds is None or u["seed"] in seeds
        ):
            by_trial.setdefault(u["trial_id"], []).append(u)

    def val(us: list[dict]) -> float:
        return statistics.mean(u["selection_at_checkpoint"][str(u["chosen_epoch"])] for u in us)

    best = max(by_trial, key=lambda t: val(by_trial[t]))
    return best, statistics.mean(u["oracle"] for u in by_trial[best])


def epochs_to_reach(records: list[dict], target: float) -> int | None:
    """Epochs spent (trials in the order they ended) until the best trial so far by the
    statistic scores ``target`` on the oracle."""
    from models.selection import trial_score

    done, spent = [], 0
    for r in sorted(records, key=lambda r: r["ended"]):
        spent += r["cost"]
        done.append(r)
        best = max(done, key=lambda x: trial_score(x["val"]) if x["val"] else -math.inf)
        if best["oracle"] >= target - 1e-12:
            return spent
    return None


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else math.nan


def analyse(
    seed: int, product: dict, random: dict | None, folds: dict | None, oracle: Oracle
) -> dict:
    """Oracle figures of one sweep seed; ``random`` may be missing (a seed whose random arm
    did not run): its columns are then left empty and it counts in no random comparison."""
    from models.selection import trial_score

    out: dict[str, Any] = {"seed": seed, "random": None, "folds": None}
    for name, arm in (("product", product), ("random", random), ("folds", folds)):
        if arm is None:
            continue
        recs = trial_records(arm)
        score_trials(recs, oracle)
        heads = max(1, arm.get("folds") or 0)  # a fold trial trains one head per fold
        for r in recs:
            r["cost"] = len(r["val"]) * heads
        units = final_units(arm, oracle)
        by_id = {r["trial_id"]: r for r in recs}
        best = max(r["oracle"] for r in recs if math.isfinite(r["oracle"]))
        pick, pick_final = finalize_pick(units)
        final_by_trial: dict[str, list[float]] = {}
        for u in units:
            final_by_trial.setdefault(u["trial_id"], []).append(u["oracle"])
        best_finalized = max(statistics.mean(v) for v in final_by_trial.values())
        extra = extra_scores(arm)
        best_final = max([best_finalized, *(statistics.mean(v) for v in extra.values())])
        out[name] = {
            "trials": len(recs),
            "epochs": sum(r["cost"] for r in recs),
            "final_epochs": sum(len(u["history"]) for u in units),
            "best_oracle": best,
            "pick": pick,
            "pick_oracle": by_id[pick]["oracle"],
            "pick_final_oracle": pick_final,
            "trial_regret": best - by_id[pick]["oracle"],
            "finalized_regret": best_finalized - pick_final,
            "best_final_oracle": best_final,
            "extra_configs": len(extra),
            # extra runs attempted (a diverging config scores nothing): the regret is defined
            "regret": best_final - pick_final if _arm_file(arm, "extra").is_file() else math.nan,
            "extra_failed": _failed_extras(arm),
            "sweep_top1_oracle": rank_by(recs, "trailing")[0]["oracle"],
            "t_sweep": arm["t_sweep"],
            "t_final": arm["t_final"],
            "records": recs,
            "units": units,
        }
        if name == "product":
            top_max = rank_by(recs, "max")[0]
            out[name]["old_rule_regret"] = best - top_max["oracle"]  # trial protocol
            full = [r for r in recs if len(r["val"]) == max(len(x["val"]) for x in recs)]
            oracle_v = [r["oracle"] for r in full]
            out[name]["rho_trailing"] = spearman([trial_score(r["val"]) for r in full], oracle_v)
            out[name]["rho_max"] = spearman([max(r["val"]) for r in full], oracle_v)
            top3 = rank_by(recs, "trailing")[:3]
            out[name]["optimism_trailing"] = statistics.mean(
                trial_score(r["val"]) - r["oracle"] for r in top3
            )
            top3m = rank_by(recs, "max")[:3]
            out[name]["optimism_max"] = statistics.mean(max(r["val"]) - r["oracle"] for r in top3m)
            # finalize variants on the same units: fewer candidates or seeds
            cands = sweep_order(arm)
            seeds = sorted({u["seed"] for u in units})
            variants = {}
            for k in range(1, len(cands) + 1):
                for n in range(1, len(seeds) + 1):
                    t, f = finalize_pick(units, cands[:k], seeds[:n])
                    variants[f"top{k}x{n}"] = (best_final - f, f)
            out[name]["variants"] = variants
    out["efficiency"], out["reach"] = math.nan, None
    if out["random"] is not None:
        reach = epochs_to_reach(out["product"]["records"], out["random"]["pick_oracle"])
        out["efficiency"] = out["random"]["epochs"] / reach if reach else 0.0
        out["reach"] = reach
    return out


# -- report ---------------------------------------------------------------------------------
def _mean(xs: list[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
    return f"{statistics.mean(xs):.3f}" + (f" ± {sd:.3f}" if math.isfinite(sd) else "")


def _f(x: float) -> str:
    return f"{x:.3f}" if math.isfinite(x) else "—"


def _arm_cells(q: dict | None) -> str:
    if q is None:
        return "not run | — | — | — | —"
    return (
        f"{q['trials']} / {q['epochs']} | {_f(q['best_final_oracle'])} | "
        f"{_f(q['pick_final_oracle'])} | {_f(q['regret'])} | {_f(q['trial_regret'])}"
    )


def report(results: list[dict], args: argparse.Namespace, oracle_rows: int) -> str:
    rows = []
    for r in results:
        p, q, k = r["product"], r["random"], r["folds"]
        rows.append(
            f"| {r['seed']} | {_arm_cells(p)} | {_f(p['old_rule_regret'])} | {_arm_cells(q)} | "
            f"{r['reach'] or '—'} | {_f(r['efficiency'])}x | "
            + (f"{k['trials']} / {k['epochs']} | {_f(k['pick_final_oracle'])}" if k else "— | —")
            + " |"
        )
    with_random = [r for r in results if r["random"]]
    with_folds = [r for r in results if r["folds"]]

    def col(arm: str, key: str, rs: list[dict] = results) -> str:
        return _mean([r[arm][key] for r in rs if r[arm]])

    ahead = [
        r["product"]["pick_final_oracle"] - r["random"]["pick_final_oracle"] for r in with_random
    ]
    ahead_trial = [r["product"]["pick_oracle"] - r["random"]["pick_oracle"] for r in with_random]
    folds_ahead = [
        r["folds"]["pick_final_oracle"] - r["product"]["pick_final_oracle"] for r in with_folds
    ]
    eff = [r["efficiency"] for r in with_random] or [math.nan]
    names = list(results[0]["product"]["variants"])
    var_rows = [
        f"| {v} | {_mean([r['product']['variants'][v][0] for r in results])} | "
        f"{_mean([r['product']['variants'][v][1] for r in results])} |"
        for v in names
    ]
    k = args.folds
    return (
        "## Selection: does the recommended config generalise? (`bench/bench_selection.py`)\n\n"
        f"Oracle: {ORACLE_SESSIONS} new demo sessions (generator seed {ORACLE_SEED}, "
        f"{oracle_rows} rows) through the demo store's encoders, never seen by the search. "
        f"**Product**: `search.run --space case` defaults ({args.trials} trials, ASHA, TPE, "
        f"{'warm starts' if args.warm_start else 'no warm starts'}, trials of {args.max_epochs} epochs scheduled over {args.final_epochs}, the "
        "trailing-mean statistic, reproducible mode), then `search.finalize` "
        f"top-{args.top_k} x seeds {' '.join(map(str, args.final_seeds))}. **Random**: random "
        "search, no early stopping, no warm starts, as many epochs as the product's sweep, the "
        "same finalize."
        + (
            f" **Folds**: the product with `--folds {k}` and {args.trials // k} trials (equal "
            f"epochs: a fold trial trains {k} heads), the same finalize."
            if k
            else ""
        )
        + "\n\n"
        "Like with like, under the **final protocol** (a config trained as finalize trains it: "
        f"{args.final_epochs} epochs, weights chosen by the statistic, oracle macro-F1 averaged "
        "over the final seeds): *pick* is finalize's best row; *best among tried* is the best "
        "of the configs finalize trained and of the top "
        f"{args.extra} configs by trial-protocol oracle score, trained the same way by the "
        "bench (configs outside both were never trained for "
        f"{args.final_epochs} epochs: the final-protocol best is searched among those most "
        "likely to hold it). *trial regret* scores each config as its trial trained it (one "
        "seed, weights at its last epoch; fold heads averaged); it penalises finalize for "
        "re-ranking by 150-epoch validation, which is why it is not the headline. Efficiency: "
        "epochs TPE + ASHA needs until its running best (by the statistic) is as good on the "
        "oracle (trial protocol) as random search's pick; ratio = random's epochs / those."
        f"{(' ' + args.note) if args.note else ''}\n\n"
        "| sweep seed | product trials / epochs | best among tried | **pick** | **regret** | "
        "trial regret | today's rule, trial regret | random trials / epochs | random best | "
        "random pick | random regret | random trial regret | TPE+ASHA epochs to random's pick "
        "| efficiency | folds trials / epochs | folds pick |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        f"- **Mean regret of the product (final protocol): {col('product', 'regret')}** "
        f"(target <= 0.02); random search + finalize: {col('random', 'regret', with_random)}. "
        f"Among the configs finalize trained only: {col('product', 'finalized_regret')}.\n"
        f"- **Product's pick minus random's pick on the oracle (final protocol): {_mean(ahead)}** "
        f"(target >= 0); trial protocol: {_mean(ahead_trial)}.\n"
        "- Extra final runs that diverged (non-finite loss after the trial's epochs; no "
        f"final-protocol score): product {sum(r['product']['extra_failed'] for r in results)}, "
        f"random {sum(r['random']['extra_failed'] for r in with_random)}.\n"
        f"- Search efficiency: mean {_f(statistics.mean(eff))}x, per seed "
        + ", ".join(f"{_f(e)}x" for e in eff)
        + " (target >= 2x).\n"
        f"- `--folds {k}` at equal epochs minus the product (final protocol, pick vs pick): "
        f"{_mean(folds_ahead)}.\n"
        f"- Trial regret (trial protocol both sides): product {col('product', 'trial_regret')}, "
        f"today's rule (max over epochs, #1) {col('product', 'old_rule_regret')}, random "
        f"{col('random', 'trial_regret', with_random)}.\n"
        f"- Validation optimism of the top 3 (val statistic minus oracle, trial protocol): "
        f"trailing mean {col('product', 'optimism_trailing')}, max over epochs "
        f"{col('product', 'optimism_max')}.\n"
        f"- Rank correlation of val with oracle among trials that ran every epoch: trailing "
        f"mean {col('product', 'rho_trailing')}, max over epochs {col('product', 'rho_max')}.\n"
        f"- Compute per arm (epochs, sweep + finalize): product {col('product', 'epochs')} + "
        f"{col('product', 'final_epochs')}, random {col('random', 'epochs', with_random)} + "
        f"{col('random', 'final_epochs', with_random)}. Wall time (s, sweep + finalize): "
        f"product {col('product', 't_sweep')} + {col('product', 't_final')}, random "
        f"{col('random', 't_sweep', with_random)} + {col('random', 't_final', with_random)}, "
        f"folds {col('folds', 't_sweep', with_folds)} + {col('folds', 't_final', with_folds)} "
        "(other jobs shared the cores).\n\n"
        "Finalize variants on the same units (regret and oracle of the pick, final protocol), "
        "mean ± sd over sweep seeds:\n\n"
        "| candidates x seeds | regret | pick's oracle |\n|---|---|---|\n"
        + "\n".join(var_rows)
        + "\n"
    )


def _kept(folders: list[str], name: str) -> Path | None:
    """The arm record ``name`` in the first of ``folders`` that holds it (None: not run)."""
    for folder in folders:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def one_seed(store: Path, tmp: Path, seed: int, args: argparse.Namespace, oracle: Oracle) -> dict:
    product = run_arm(
        store,
        tmp,
        f"product-{seed}",
        seed=seed,
        searcher="tpe",
        scheduler="asha",
        trials=args.trials,
        warm_start=args.warm_start,
        args=args,
    )
    epochs = sum(len(r["val"]) for r in trial_records(product))
    n_random = max(1, round(epochs / product["max_epochs"]))
    random = run_arm(
        store,
        tmp,
        f"random-{seed}",
        seed=seed,
        searcher="random",
        scheduler="fifo",
        trials=n_random,
        warm_start=False,
        args=args,
    )
    for kind, arm in (("product", product), ("random", random)):
        if kind in args.extra_arms:  # random's regret is informative, not a target
            extra_final_runs(arm, oracle, args, store)
    folds = None
    if args.folds:
        folds = run_arm(
            store,
            tmp,
            f"folds-{seed}",
            seed=seed,
            searcher="tpe",
            scheduler="asha",
            trials=max(1, args.trials // args.folds),
            warm_start=args.warm_start,
            args=args,
            folds=args.folds,
        )
    r = analyse(seed, product, random, folds, oracle)
    p, q = r["product"], r["random"]
    print(
        f"seed {seed}: regret {_f(p['regret'])} (random {_f(q['regret'])}), pick "
        f"{_f(p['pick_final_oracle'])} vs random {_f(q['pick_final_oracle'])}"
        + (f" vs folds {_f(r['folds']['pick_final_oracle'])}" if folds else "")
        + f", efficiency {_f(r['efficiency'])}x",
        flush=True,
    )
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--final-seeds", type=int, nargs="+", default=[0, 42])
    p.add_argument("--top-k", type=int, default=2, help="as search.finalize's default")
    p.add_argument(
        "--extra",
        type=int,
        default=3,
        help="configs outside finalize's pick trained under the final protocol",
    )
    p.add_argument(
        "--extra-arms",
        nargs="+",
        default=["product", "random"],
        choices=["product", "random"],
        help="the arms whose regret is measured with --extra runs",
    )
    p.add_argument("--folds", type=int, default=3, help="the folds arm's K (0: no folds arm)")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--max-epochs", type=int, default=20, help="as search.run (smoke runs: less)")
    p.add_argument("--final-epochs", type=int, default=150, help="as search.run --final-epochs")
    p.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=WARM_START,
        help="the product and folds arms with the seed's configs enqueued first "
        "(search.run --warm-start; default: search.run's)",
    )
    p.add_argument("--note", default="", help="a sentence added to the report's header")
    p.add_argument("--workdir", default=None, help="keep the sweeps here (default: a temp dir)")
    p.add_argument(
        "--analyse",
        nargs="+",
        default=None,
        metavar="DIR",
        help="only redo the analysis of the arms kept in these former --workdir folders "
        "(e.g. one per sweep seed, run side by side)",
    )
    args = p.parse_args(argv)
    from search.local_ray import start_local_ray
    from search.run import ray_env_defaults

    ray_env_defaults()
    import ray

    from data_prep.prepare import prepare_demo

    store = Path(prepare_demo())
    oracle = Oracle(oracle_store(store))
    if args.analyse:
        results = []
        for seed in args.seeds:
            arms = [_kept(args.analyse, f"{n}-{seed}.json") for n in ("product", "random", "folds")]
            product, random, folds = (json.loads(a.read_text()) if a else None for a in arms)
            results.append(analyse(seed, product, random, folds, oracle))
    else:
        start_local_ray(num_cpus=os.cpu_count(), logging_level="WARNING")
        with contextlib.ExitStack() as stack:
            tmp = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
            tmp.mkdir(parents=True, exist_ok=True)
            results = []
            for seed in args.seeds:  # the section is rewritten after every seed
                results.append(one_seed(store, tmp, seed, args, oracle))
                update_section("selection", report(results, args, len(oracle.rows)))
        ray.shutdown()
    body = report(results, args, len(oracle.rows))
    print(body)
    update_section("selection", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
