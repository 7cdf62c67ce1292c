"""Every registered head: shapes, backward, batch of one, parameter counts, masking."""

from __future__ import annotations

import pytest
import torch

from models.config import MODEL_NAMES, ConfigError, TrainConfig
from models.registry import count_parameters, create_model, list_models
from tests.model_helpers import (
    SMALL,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    random_batch,
)

SEED_SIZES = dict(text_dim=768, audio_dim=1024, max_tokens=128, max_frames=512, num_classes=7)
# The seed's counts (reference/case-original.md), layer by layer as in the docstrings of
# models/case.py and models/baselines.py.
EXPECTED = {
    "case-compressing": 196_864 + 262_400 + 65_664 + 512 + 65_792 + 1_799,  # 593,031
    "case-attention": 196_864 + 262_400 + 512 + 65_792 + 1_799,  # 527,367
    "case-concat-compressing": 593_031,
    "case-concat-attention": 527_367,
    "concat": 196_864 + 262_400 + 65_792 + 512 + 65_792 + 1_799,  # 593,159
    "mmm": 196_864 + 262_400 + 2 * 410_240 + 2 * 65_792 + 2 * 512 + 131_584 + 3_591,
    "text-only": 196_864 + 1_799,  # classifier straight on the 768-d pooled output
    "speech-only": 262_400 + 1_799,  # classifier straight on the 1024-d mean of frames
}
POOLING_MODELS = [m for m in MODEL_NAMES if m != "text-only"]


def small(name: str, **cfg) -> torch.nn.Module:
    config = TrainConfig.from_dict({"model": name, "hidden": 8, **cfg})
    return create_model(name, config=config, **SMALL)


def test_registry_names() -> None:
    assert list_models() == list(MODEL_NAMES)
    assert len(MODEL_NAMES) == 8
    with pytest.raises(ConfigError, match="'model'"):
        create_model("nope", **SMALL)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_at_seed_sizes(name: str) -> None:
    model = create_model(name, config=TrainConfig(model=name), **SEED_SIZES)
    assert count_parameters(model) == EXPECTED[name]


def test_seed_published_counts() -> None:
    assert EXPECTED["case-compressing"] == 593_031
    assert EXPECTED["case-attention"] == 527_367
    assert EXPECTED["concat"] == 593_159
    assert EXPECTED["mmm"] == 1_547_527
    assert EXPECTED["text-only"] == 198_663
    assert EXPECTED["speech-only"] == 264_199


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch_size", [1, 5])
def test_forward_backward(name: str, batch_size: int) -> None:
    torch.manual_seed(0)
    model = small(name)
    model.train()
    out = model(random_batch(batch_size, **SMALL))
    assert out.logits.shape == (batch_size, 7)
    assert out.fused.shape == (batch_size, 8)
    for vec in (out.text_vec, out.audio_vec):
        assert vec is None or vec.shape == (batch_size, 8)
    out.logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def _perturb_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    b = {k: v.clone() for k, v in batch.items()}
    for name, length in (("text", "text_len"), ("audio", "audio_len")):
        size = b[name].shape[1]
        pad = (torch.arange(size) >= b[length][:, None]).unsqueeze(-1)
        b[name] = torch.where(pad, torch.randn_like(b[name]) * 5 + 3, b[name])
    return b


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fixed_models_ignore_padding(name: str) -> None:
    torch.manual_seed(0)
    model = small(name).eval()
    batch = random_batch(6, **SMALL, seed=3)
    batch["text_len"][0], batch["audio_len"][0] = 2, 3  # surely padded rows
    with torch.no_grad():
        a, b = model(batch), model(_perturb_padding(batch))
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.fused, b.fused)


@pytest.mark.parametrize("name", POOLING_MODELS)
def test_faithful_models_see_padding(name: str) -> None:
    torch.manual_seed(0)
    model = small(name, faithful=True).eval()
    batch = random_batch(6, **SMALL, seed=3)
    batch["text_len"][0], batch["audio_len"][0] = 2, 3
    with torch.no_grad():
        a, b = model(batch), model(_perturb_padding(batch))
    assert not torch.allclose(a.logits, b.logits)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trimming_padding_changes_nothing(name: str) -> None:
    """Axes a model declares trimmable may be cut to the batch's longest true length."""
    torch.manual_seed(0)
    model = small(name).eval()
    batch = random_batch(4, **SMALL, seed=5)
    batch["text_len"] = batch["text_len"].clamp_max(6)
    batch["audio_len"] = batch["audio_len"].clamp_max(15)
    cut = dict(batch)
    if "text" in model.trim:
        cut["text"] = batch["text"][:, : int(batch["text_len"].max())]
    if "audio" in model.trim:
        cut["audio"] = batch["audio"][:, : int(batch["audio_len"].max())]
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, model(cut).logits)


def test_faithful_attention_is_unscaled() -> None:
    from models.layers import text_to_audio_attention

    q, kv = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    expected = torch.softmax(q @ kv.transpose(1, 2), -1) @ kv
    torch.testing.assert_close(text_to_audio_attention(q, kv, None, scaled=False), expected)
    scaled = torch.softmax(q @ kv.transpose(1, 2) / 2.0, -1) @ kv
    torch.testing.assert_close(text_to_audio_attention(q, kv, None, scaled=True), scaled)


def test_audio_frames_sets_compression_width() -> None:
    model = small("case-compressing", audio_frames=16)
    assert model.compress.in_features == 16 and model.compress.out_features == SMALL["max_tokens"]
    mmm = small("mmm", audio_frames=30)
    assert mmm.token_mlp[0].in_features == SMALL["max_tokens"] + 30


def test_dropout_defaults_follow_the_seed() -> None:
    assert small("case-compressing").classifier[0].p == 0.5
    assert small("mmm").head[0].p == 0.1
    assert small("mmm", dropout=0.3).head[0].p == 0.3


def test_sum_pooling_differs_from_mean() -> None:
    torch.manual_seed(0)
    mean = small("concat").eval()
    torch.manual_seed(0)
    total = small("concat", pooling="sum").eval()
    batch = random_batch(3, **SMALL)
    with torch.no_grad():
        assert not torch.allclose(mean(batch).fused, total(batch).fused)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"modle": "concat"}, "modle"),
        ({"model": "bert"}, "model"),
        ({"lr": -1.0}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"faithful": "False"}, "faithful"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"schedule": "step"}, "schedule"),
        ({"contrastive_temperature": 0}, "contrastive_temperature"),
        ({"epochs": float("nan")}, "epochs"),
        ({"model": "text-only", "contrastive": "infonce"}, "contrastive"),
    ],
)
def test_config_errors_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'?{key}'?"):
        TrainConfig.from_dict(raw)


def test_config_round_trip_and_coercion() -> None:
    cfg = TrainConfig.from_dict({"model": "mmm", "batch_size": 32.0, "lr": 1, "audio_frames": None})
    assert cfg.batch_size == 32 and isinstance(cfg.batch_size, int)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({}) == TrainConfig()


def test_param_count_cli(capsys) -> None:
    from models.param_count import main

    main([])
    out = capsys.readouterr().out
    for name, n in EXPECTED.items():
        assert f"| {name} | {n:,} | {n:,} ✓ |" in out
    assert out.count("✓") == 8 and "✗" not in out


def test_text_only_reads_tokens_by_default_and_the_pooler_when_faithful() -> None:
    """Default text-only = masked mean of token features; faithful = the encoder's pooler."""
    torch.manual_seed(0)
    fixed, faithful = small("text-only").eval(), small("text-only", faithful=True).eval()
    assert fixed.uses == {"text"} and faithful.uses == {"text_pooled"}
    assert count_parameters(fixed) == count_parameters(faithful)
    batch = random_batch(4, **SMALL, seed=7)
    new_pooled = dict(batch, text_pooled=torch.randn_like(batch["text_pooled"]))
    new_tokens = dict(batch, text=torch.randn_like(batch["text"]))
    with torch.no_grad():
        torch.testing.assert_close(fixed(batch).logits, fixed(new_pooled).logits)
        assert not torch.allclose(fixed(batch).logits, fixed(new_tokens).logits)
        torch.testing.assert_close(faithful(batch).logits, faithful(new_tokens).logits)
        assert not torch.allclose(faithful(batch).logits, faithful(new_pooled).logits)
