"""`search.finalize` of a sweep run with `--folds 2`: the final run uses the sweep's folds.

A 1-trial sweep cross-validated over 2 session folds (2 of 4 scheduled epochs), then its
finalize with the defaults (folds taken from the sweep), 1 config x seed 0. Real Ray, MLflow
and training; every assertion reads what the run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from models.selection import best_epoch
from search import finalize as fz
from search import tracking
from search.final_unit import _score_test
from search.settings import UsageError
from tests.search_helpers import case_tune_home, run_tiny_sweep


@pytest.fixture(scope="module")
def fold_final(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("finalize_folds")
    with case_tune_home(tmp / "home"):
        fixed = {"audio_frames": 32, "model": "case-attention"}
        run_tiny_sweep(
            tmp,
            demo_store,
            "cv",
            fixed=fixed,
            num_samples=1,
            max_epochs=2,
            final_epochs=4,
            folds=2,
            warm_start=True,
        )
        argv = [
            "--sweep",
            "cv",
            "--results-dir",
            str(tmp / "results"),
            "--top-k",
            "1",
            "--seeds",
            "0",
        ]
        fin = fz.parse_settings(argv, cwd=tmp)
        outcome = fz.finalize(fin, quiet=True)
    (unit,) = [json.loads(p.read_text()) for p in (tmp / "results/cv/final/units").glob("*.json")]
    return {
        "tmp": tmp,
        "settings": fin,
        "outcome": outcome,
        "unit": unit,
        "client": MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}"),
    }


def test_finalize_takes_the_sweeps_folds(fold_final: dict) -> None:
    unit = fold_final["unit"]
    assert fold_final["settings"].folds == 2
    assert unit["folds"] == 2 and unit["unit_id"].endswith("-s0-e4-f2")
    assert not fold_final["outcome"].failed
    assert unit["train_splits_read"] == ["train", "val"]  # the folds cover train + val only
    h = unit["history"]
    assert len(h) == 4 and {"val_macro_f1_fold0", "val_macro_f1_fold1"} <= set(h[0])
    for row in h:  # the reported value is the fold mean
        assert row["val_macro_f1"] == pytest.approx(
            (row["val_macro_f1_fold0"] + row["val_macro_f1_fold1"]) / 2, abs=1e-12
        )
    expected, _ = best_epoch([row["val_macro_f1"] for row in h])
    assert unit["chosen_epoch"] == expected
    md = (fold_final["tmp"] / "results/cv/final.md").read_text()
    assert "With 2 session folds" in md


def test_fold_final_run_repeats_its_fold_trial(fold_final: dict) -> None:
    """The prefix property holds with folds too: the seed-0 final run's first 2 epochs are
    the fold trial's, per fold, bit for bit on CPU."""
    client, tmp = fold_final["client"], fold_final["tmp"]
    parent = json.loads((tmp / "results/cv/sweep.json").read_text())["parent_run_id"]
    exp = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (trial,) = tracking.trial_runs(client, exp, parent)
    unit = fold_final["unit"]
    for key in ("val_macro_f1", "val_macro_f1_fold0", "val_macro_f1_fold1", "train_loss"):
        logged = {m.step: m.value for m in client.get_metric_history(trial.info.run_id, key)}
        assert logged == {e: unit["history"][e - 1][key] for e in (1, 2)}, key


def test_test_is_scored_by_the_fold_heads_ensemble(fold_final: dict, demo_store: Path) -> None:
    """Each fold head's chosen weights are kept; test predictions are the argmax of their
    mean class probabilities (recomputed here from the saved checkpoints)."""
    from data_prep.store import FeatureStore
    from models.config import TrainConfig
    from models.data import load_split
    from models.metrics import macro_auroc
    from models.train import model_for

    unit = fold_final["unit"]
    chosen = unit["chosen_epoch"]
    paths = fz.chosen_checkpoints(unit)
    assert [Path(p).name for p in paths] == [
        f"epoch_{chosen:04d}_fold0.pt",
        f"epoch_{chosen:04d}_fold1.pt",
    ]
    store = FeatureStore.open(demo_store, sealed=())
    probs = []
    for p in paths:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        model = model_for(TrainConfig.from_dict(ckpt["config"]), store, ckpt["state_dict"])
        data = load_split(
            store, "test", uses=model.uses, frames=32, trim=model.trim, device=torch.device("cpu")
        )
        with torch.no_grad():
            logits = [model(b).logits for _, b in data.batches(torch.arange(data.n), 256)]
        probs.append(torch.cat(logits).softmax(dim=-1))
    ensemble = torch.stack(probs).mean(dim=0).argmax(dim=-1).tolist()
    assert unit["test_pred"][str(chosen)] == ensemble
    gold = torch.as_tensor(store.labels("test"))
    recorded = unit["test_at_checkpoint"][str(chosen)]["test_macro_auroc"]
    auroc = macro_auroc(torch.stack(probs).mean(0), gold, store.num_classes)
    assert recorded == pytest.approx(auroc, abs=1e-9)
    assert len(ensemble) == len(store.indices("test"))
    # the MLflow run holds both heads' checkpoints
    client = fold_final["client"]
    run = client.get_run(unit["mlflow_run_id"])
    arts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "checkpoint"))
    assert arts == [f"checkpoint/{Path(p).name}" for p in paths]


def test_folds_flag_is_checked(fold_final: dict) -> None:
    results = str(fold_final["tmp"] / "results")
    with pytest.raises(UsageError, match="--folds must be 0"):
        fz.parse_settings(["--sweep", "cv", "--results-dir", results, "--folds", "1"])


def test_ensemble_scoring_on_heads_that_disagree(fold_final: dict, demo_store: Path) -> None:
    """A few epochs leave the fold heads nearly equal; here one head is pushed far from the
    other, so scoring the ensemble differs from scoring either head."""
    from data_prep.store import FeatureStore
    from models.config import TrainConfig

    unit = fold_final["unit"]
    a = torch.load(fz.chosen_checkpoints(unit)[0], map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    # small enough that b still ranks rows (a large push saturates it into one class everywhere)
    b = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in a["state_dict"].items()}
    config = TrainConfig.from_dict(a["config"])
    store = FeatureStore.open(demo_store, sealed=())
    history = unit["history"]
    args = (config, store)
    both = _score_test(*args, {4: [a["state_dict"], b]}, history, torch.device("cpu"), "k")
    alone = [
        _score_test(*args, {4: [h]}, history, torch.device("cpu"), "k")
        for h in (a["state_dict"], b)
    ]
    auroc = both[0]["4"]["test_macro_auroc"]
    assert all(abs(auroc - m[0]["4"]["test_macro_auroc"]) > 1e-6 for m in alone)
    assert both[0]["4"]["test_loss"] == pytest.approx(
        sum(m[0]["4"]["test_loss"] for m in alone) / 2, rel=1e-6
    )
    assert sorted(both[2]) == ["4-fold0", "4-fold1"] and sorted(alone[0][2]) == ["4"]
