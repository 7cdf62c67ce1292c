"""The training loop on synthetic stores (and on the demo store when its fixture exists)."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch

from data_prep.store import FeatureStore, SplitSealedError
from models.config import TrainConfig
from models.data import load_split
from models.metrics import all_neutral_metrics
from models.selection import best_epoch
from models.train import NonFiniteLossError, Trainer, load_checkpoint, lr_lambda, train
from tests.model_helpers import (
    make_synthetic_store,
    one_torch_thread,  # noqa: F401 (autouse fixture)
)

FAST = {"hidden": 32, "lr": 3e-3, "batch_size": 32, "dropout": 0.1, "epochs": 12}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> FeatureStore:
    path = make_synthetic_store(tmp_path_factory.mktemp("stores"), n=600, seed=1)
    return FeatureStore.open(path, sealed=("test",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> FeatureStore:
    # 61 training rows: with batch 10 the last batch of every epoch has one row.
    path = make_synthetic_store(
        tmp_path_factory.mktemp("tiny"),
        n=100,
        sessions=10,
        val_sessions=(8,),
        test_sessions=(9, 10),
        seed=2,
    )
    return FeatureStore.open(path, sealed=("test",))


def cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**FAST, **kw})


def strip_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


def same(a: list[dict], b: list[dict]) -> bool:
    def eq(x, y):
        return x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))

    return len(a) == len(b) and all(
        h.keys() == g.keys() and all(eq(h[k], g[k]) for k in h) for h, g in zip(a, b, strict=True)
    )


def test_compressing_beats_all_neutral_and_fusion_beats_unimodal(synth) -> None:
    baseline = all_neutral_metrics(synth.labels("val"), "val")["val_macro_f1"]
    scores = {
        m: train(cfg(model=m), synth).best_metrics["val_macro_f1"]
        for m in ("case-compressing", "text-only", "speech-only")
    }
    assert scores["case-compressing"] > baseline + 0.4, (scores, baseline)
    assert scores["case-compressing"] > max(scores["text-only"], scores["speech-only"]) + 0.05, (
        scores
    )


def test_history_and_callback(synth) -> None:
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, metrics))
        return epoch == 3  # stop after the third epoch

    result = train(cfg(model="case-attention", epochs=10), synth, on_epoch=on_epoch)
    assert [e for e, _ in seen] == [1, 2, 3] and len(result.history) == 3
    assert result.stopped_early
    m = seen[-1][1]
    for key in (
        "train_loss",
        "train_macro_f1",
        "val_loss",
        "val_macro_f1",
        "val_weighted_f1",
        "val_micro_f1",
        "val_seed_micro_f1",
        "val_f1_neutral",
        "train_seed_micro_f1",
    ):
        assert key in m and np.isfinite(m[key]), key
    values = [h["val_macro_f1"] for h in result.history]
    best, value = best_epoch(values)  # where the trailing mean of val macro-F1 peaks
    assert result.best_epoch == best
    assert result.best_metrics == result.history[best - 1]
    assert result.best_metrics["val_macro_f1_trailing"] == value
    assert synth.accessed <= {"train", "val"}
    assert set(result.state_dict) >= {"text_proj.weight", "classifier.4.bias"}


def test_deterministic_on_cpu(tiny) -> None:
    c = cfg(model="case-compressing", epochs=3, batch_size=10, contrastive="supervised")
    a, b = train(c, tiny), train(c, tiny)
    assert same(strip_time(a.history), strip_time(b.history))
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    other = train(c.replace(seed=1), tiny)
    assert not same(strip_time(a.history), strip_time(other.history))


@pytest.mark.parametrize(
    "extra", [{"model": "case-attention"}, {"model": "case-compressing", "audio_frames": 40}]
)
def test_streamed_and_resident_give_the_same_history(tiny, monkeypatch, extra) -> None:
    c = cfg(epochs=2, batch_size=10, **extra)
    resident = train(c, tiny)
    monkeypatch.setenv("CASE_TUNE_RESIDENT_MAX_BYTES", "1")
    streamed = train(c, tiny)
    assert any("streamed" in n for n in streamed.notes)
    assert same(strip_time(resident.history), strip_time(streamed.history))


@pytest.mark.parametrize("model", ["case-concat-compressing", "mmm", "speech-only", "concat"])
def test_options_train(tiny, model) -> None:
    c = cfg(
        model=model,
        epochs=1,
        batch_size=10,
        loss="focal",
        focal_gamma=2.0,
        class_weights="inverse_sqrt",
        schedule="cosine",
        grad_clip=1.0,
        contrastive="infonce" if model != "speech-only" else "supervised",
        audio_frames=16 if model != "concat" else 40,
        label_smoothing=0.1,
        amp=True,
    )
    result = train(c, tiny)
    assert np.isfinite(result.history[-1]["train_loss"])
    assert np.isfinite(result.history[-1]["val_loss"])
    assert any("amp ignored" in n for n in result.notes)


def test_batch_size_one(tiny) -> None:
    c = cfg(model="case-attention", epochs=1, batch_size=1, contrastive="supervised")
    result = train(c, tiny)
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(
        result.history[0]["val_loss"]
    )


def test_non_finite_loss_names_epoch_and_step(tiny) -> None:
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+") as info:
        train(cfg(model="concat", lr=1e30, epochs=2, batch_size=10), tiny)
    assert info.value.epoch == 1 and info.value.step >= 2
    # Ray moves trial errors between processes by pickling: the error must survive that.
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.epoch, copy.step, str(copy)) == (
        info.value.epoch,
        info.value.step,
        str(info.value),
    )


def test_checkpoints_round_trip(tiny, tmp_path) -> None:
    c = cfg(model="case-compressing", epochs=4, batch_size=10)
    result = train(c, tiny, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002.pt", "epoch_0004.pt"]
    raw = torch.load(tmp_path / "epoch_0004.pt", weights_only=True)
    assert raw["epoch"] == 4 and raw["config"] == c.to_dict()
    assert raw["metrics"]["val_macro_f1"] == result.history[3]["val_macro_f1"]
    model, config = load_checkpoint(tmp_path / "epoch_0004.pt", tiny)
    assert config == c
    for k, v in result.state_dict.items():
        assert torch.equal(model.state_dict()[k], v)


def test_sealed_test_split_is_never_read(tiny) -> None:
    with pytest.raises(SplitSealedError):
        train(cfg(model="text-only", epochs=1), tiny, eval_splits=("val", "test"))


@pytest.mark.parametrize("budget", [10**12, None, 0])  # fp32, fp16 resident, streamed
@pytest.mark.parametrize("frames", [16, 24, 40])
def test_batches_equal_the_store_rows(tiny, budget, frames) -> None:
    rows = tiny.indices("train")
    if budget is None:  # fits as fp16 only, with one load chunk (here: the whole split)
        budget = 2 * 2 * len(rows) * (16 * 10 + 12 * frames + 16) + 1
    data = load_split(
        tiny,
        "train",
        uses=frozenset({"text", "audio", "text_pooled"}),
        frames=frames,
        trim=frozenset({"text", "audio"}),
        device=torch.device("cpu"),
        budget=budget,
    )
    expected_dtype = {10**12: torch.float32, 0: None}.get(budget, torch.float16)
    assert (data.arrays["text"].dtype if data.resident else None) == expected_dtype
    for idx in ([5, 0, 17], [3], list(range(len(rows)))[:10]):
        b = data.batch(torch.tensor(idx))
        r = rows[idx]
        tl = np.minimum(tiny.text_len[r], 10)
        al = np.minimum(tiny.audio_len[r], frames)
        assert b["text"].shape == (len(idx), tl.max(), 16)
        assert b["audio"].shape == (len(idx), al.max(), 12)
        np.testing.assert_array_equal(
            b["text"].numpy(), tiny.text[r, : tl.max()].astype(np.float32)
        )
        np.testing.assert_array_equal(
            b["audio"].numpy(), tiny.audio[r, : al.max()].astype(np.float32)
        )
        np.testing.assert_array_equal(
            b["text_pooled"].numpy(), tiny.text_pooled[r].astype(np.float32)
        )
        np.testing.assert_array_equal(b["audio_len"].numpy(), al)


def test_schedules() -> None:
    c = TrainConfig.from_dict({"schedule": "linear_warmup", "warmup_ratio": 0.1})
    f = lr_lambda(c, 100)
    assert [f(0), f(5), f(10), f(55), f(100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    g = lr_lambda(c.replace(schedule="cosine"), 100)
    assert [g(10), g(55), g(100)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_lambda(c.replace(schedule="none"), 100)(50) == 1.0


def test_cli_prints_a_table(tiny, capsys) -> None:
    from models.train import main

    main(
        [
            "--model",
            "text-only",
            "--data",
            str(tiny.path),
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--set",
            "hidden=16",
            "--set",
            "weight_decay=1e-2",
        ]
    )
    out = capsys.readouterr().out
    assert "all-neutral val" in out and "macro" in out and "best epoch" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 "))]) == 2


@pytest.fixture
def demo(request) -> FeatureStore:
    try:
        path = request.getfixturevalue("demo_store_medium")
    except pytest.FixtureLookupError:
        pytest.skip("the demo_store_medium fixture is not defined yet")
    return FeatureStore.open(path)


def test_on_demo_store_fusion_beats_unimodal(demo) -> None:
    """On the demo's frozen-encoder features a fusion head beats either modality alone.

    The demo puts the emotion cue in both modalities for some utterances and in only one for
    the rest. Held-out rows are few (2-6 per emotion per split), so a score is the mean of
    val and test macro-F1 at the best val epoch, averaged over two seeds; the test split is
    read here on purpose (this checks the data, it is not a search).
    """
    splits = ("val", "test")
    baseline = np.mean([all_neutral_metrics(demo.labels(s), s)[f"{s}_macro_f1"] for s in splits])
    c = cfg(hidden=64, lr=1e-3, epochs=30, class_weights="inverse")

    def score(model: str) -> float:
        runs = [
            train(c.replace(model=model, seed=seed), demo, eval_splits=splits) for seed in (0, 1)
        ]
        return float(np.mean([r.best_metrics[f"{s}_macro_f1"] for r in runs for s in splits]))

    scores = {m: score(m) for m in ("case-attention", "text-only", "speech-only")}
    assert scores["case-attention"] > baseline + 0.2, (scores, baseline)
    assert scores["case-attention"] > max(scores["text-only"], scores["speech-only"]) + 0.03, scores


def test_a_trial_on_a_gpu_fraction_records_its_share(monkeypatch) -> None:
    from models.data import GPU_SHARE_ENV, use_gpu_share

    monkeypatch.delenv(GPU_SHARE_ENV, raising=False)
    use_gpu_share(1.0)  # a whole GPU: nothing to share
    use_gpu_share(0.0)  # CPU trial
    assert GPU_SHARE_ENV not in os.environ
    use_gpu_share(0.25)
    assert os.environ[GPU_SHARE_ENV] == "0.25"


def test_a_run_continued_from_its_state_equals_the_run_straight_through(tiny) -> None:
    """What a restarted trial relies on: state_dict() -> load_state_dict() in a new Trainer
    continues bit for bit (weights, optimiser, schedule, shuffling and dropout streams)."""
    config = cfg(model="case-attention", epochs=6, dropout=0.3, schedule="cosine")
    straight = Trainer(config, tiny)
    for _ in range(4):
        straight.run_epoch()
    first = Trainer(config, tiny)
    for _ in range(2):
        first.run_epoch()
    state = pickle.loads(pickle.dumps(first.state_dict()))
    torch.manual_seed(123)  # whatever the process did meanwhile
    second = Trainer(config, tiny)
    second.load_state_dict(state)
    for _ in range(2):
        second.run_epoch()
    assert same(strip_time(second.history), strip_time(straight.history))
    with pytest.raises(ValueError, match="another config"):
        Trainer(cfg(model="case-attention", epochs=7), tiny).load_state_dict(state)


def test_runs_stepped_together_draw_what_they_would_alone(tiny) -> None:
    """A trial's fold heads train in lockstep; each keeps its own dropout stream."""
    config = cfg(model="case-attention", epochs=3, dropout=0.3)
    alone = Trainer(config, tiny)
    for _ in range(3):
        alone.run_epoch()
    a, b = Trainer(config, tiny), Trainer(config.replace(seed=1), tiny)
    for _ in range(3):
        a.run_epoch()
        b.run_epoch()
    assert same(strip_time(a.history), strip_time(alone.history))
    assert not same(strip_time(b.history), strip_time(alone.history))


def test_a_short_run_is_the_start_of_the_long_one(tiny) -> None:
    """max_epochs stops a run without changing its schedule: the prefix property."""
    config = cfg(model="case-attention", epochs=8, schedule="linear_warmup", warmup_ratio=0.25)
    short = train(config, tiny, max_epochs=3)
    full = train(config, tiny)
    assert len(short.history) == 3 and len(full.history) == 8
    assert same(strip_time(short.history), strip_time(full.history[:3]))
    other = train(config.replace(epochs=3), tiny)  # a run *scheduled* for 3 epochs differs
    assert not same(strip_time(other.history), strip_time(full.history[:3]))


def test_val_se_resamples_sessions(tmp_path) -> None:
    """val_macro_f1_se is a bootstrap over val sessions (3 here), not rows; with fewer
    sessions it falls back to rows and says so."""
    from models.metrics import bootstrap_scores
    from models.train import evaluate

    path = make_synthetic_store(tmp_path, n=300, val_sessions=(5, 6, 7), seed=3)
    store = FeatureStore.open(path, sealed=("test",))
    trainer = Trainer(cfg(), store)
    metrics = trainer.run_epoch()
    assert not any("resamples rows" in n for n in trainer.notes)
    data = trainer.evals["val"]
    _, pred, _ = evaluate(
        trainer.model, data, trainer.objective, trainer.config.batch_size, trainer.autocast
    )
    labels = data.labels.cpu().numpy()
    sessions = store.table["session"].to_numpy()[data.rows]
    assert sorted(set(sessions)) == [5, 6, 7]

    def se(groups) -> float:
        reps = bootstrap_scores(
            [pred.numpy()],
            labels,
            store.num_classes,
            groups=groups,
            n_boot=200,
            neutral_index=None,
        )["macro_f1"]
        return float(reps.std(ddof=1))

    assert metrics["val_macro_f1_se"] == pytest.approx(se(sessions), abs=0, rel=1e-12)
    assert se(sessions) != pytest.approx(se(None), rel=1e-3)
    two = Trainer(
        cfg(), FeatureStore.open(make_synthetic_store(tmp_path / "b", n=300), sealed=("test",))
    )
    assert any("val split has 2 session(s)" in n for n in two.notes)
