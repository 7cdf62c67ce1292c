"""`faithful=True` computes what the seed's code computes, head by head.

Each head is built at small sizes, given known weights, and its forward pass (eval mode, float64)
is compared with a reference written here from reference/case-original.md in plain tensor
operations, to 1e-6. The inputs are what the seed's heads saw: text states at every one of the
T positions ([PAD] states past the true length, not zero) and audio frames per utterance,
which the references pad themselves (to the batch's longest utterance, or to the fixed frame
count where the seed cuts/pads). Each test also checks that the quantity it is about (LayerNorm
order, batch-longest padding, [PAD] states) moves the output, so it could fail.

Then the store: built with [PAD] states, masked heads give bit for bit what they gave on the old
store (zero past the true length), and faithful heads see the states.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from data_prep.store import FeatureStore
from models.config import MODEL_NAMES, TrainConfig
from models.data import load_split
from models.faithful import NOT_REPRODUCIBLE, not_reproducible_markdown
from models.registry import SEED_PARAM_COUNTS, count_parameters, create_model
from tests.model_helpers import SMALL, one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
T, F = SMALL["max_tokens"], SMALL["max_frames"]
TEXT_LEN = [3, 10, 5, 1, 7]
AUDIO_LEN = [4, 15, 9, 2, 11]  # the batch's longest (15) is shorter than the store's F (24)
SEED_SIZES = dict(text_dim=768, audio_dim=1024, max_tokens=128, max_frames=512, num_classes=7)


class Weights(dict):
    """Named parameter values; remembers which ones the reference read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return super().__getitem__(key)


def faithful_head(name: str, seed: int = 0) -> tuple[torch.nn.Module, Weights]:
    """Head ``name`` at small sizes (hidden 8), faithful, eval, float64, with known weights."""
    model = create_model(
        name, config=TrainConfig(model=name, hidden=8, faithful=True), **SMALL
    ).double()
    g = torch.Generator().manual_seed(seed)
    w = Weights()
    for pname, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if pname.endswith("bias"):
            w[pname] = 0.3 * noise
        elif p.dim() == 1:  # a LayerNorm gain, far from 1 so that applying it twice shows
            w[pname] = 1.0 + 0.5 * noise
        else:
            w[pname] = noise / math.sqrt(p.shape[1])
    model.load_state_dict(w, strict=True)
    return model.eval(), w


def seed_inputs(seed: int = 1) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(the batch as the store gives it, the audio frames per utterance).

    Text is non-zero at every position ([PAD] states past TEXT_LEN); audio is zero past
    AUDIO_LEN up to the store's F frames."""
    g = torch.Generator().manual_seed(seed)
    b = len(TEXT_LEN)
    frames = [
        torch.randn(n, SMALL["audio_dim"], generator=g, dtype=torch.float64) for n in AUDIO_LEN
    ]
    audio = torch.zeros(b, F, SMALL["audio_dim"], dtype=torch.float64)
    for i, f in enumerate(frames):
        audio[i, : len(f)] = f
    batch = {
        "text": torch.randn(b, T, SMALL["text_dim"], generator=g, dtype=torch.float64),
        "text_len": torch.tensor(TEXT_LEN),
        "text_pooled": torch.randn(b, SMALL["text_dim"], generator=g, dtype=torch.float64),
        "audio": audio,
        "audio_len": torch.tensor(AUDIO_LEN),
    }
    return batch, frames


# -- the reference: plain tensor operations ------------------------------------------------
def lin(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def layer_norm(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]


def classifier(x: torch.Tensor, w: Weights, name: str = "classifier") -> torch.Tensor:
    """Dropout -> Linear -> GELU -> Dropout -> Linear (dropouts are identities in eval)."""
    return lin(gelu(lin(x, w, f"{name}.1")), w, f"{name}.4")


def pad_to(frames: list[torch.Tensor], n: int) -> torch.Tensor:
    """Cut or zero-pad every utterance to exactly n frames (the seed's fixed 512)."""
    out = torch.zeros(len(frames), n, frames[0].shape[1], dtype=frames[0].dtype)
    for i, f in enumerate(frames):
        out[i, : min(n, len(f))] = f[:n]
    return out


def batch_padded(frames: list[torch.Tensor]) -> torch.Tensor:
    """The seed's pad_sequence: zeros to the batch's longest utterance."""
    return pad_sequence(frames, batch_first=True)


def case_reference(
    w: Weights, text: torch.Tensor, audio: torch.Tensor, alignment: str, fusion: str
) -> torch.Tensor:
    t = lin(text, w, "text_proj")
    a = lin(audio, w, "audio_proj")
    if alignment == "compressing":
        aligned = lin(a.transpose(1, 2), w, "compress").transpose(1, 2)
    else:
        aligned = torch.softmax(t @ a.transpose(1, 2), dim=-1) @ a  # no scale, no mask
    x = t + aligned if fusion == "add" else torch.cat([t, aligned], dim=1)
    return classifier(layer_norm(x, w, "norm").mean(dim=1), w)


def mixer_mlp(x: torch.Tensor, w: Weights, name: str) -> torch.Tensor:
    """Linear -> GELU -> Linear -> Dropout."""
    return lin(gelu(lin(x, w, f"{name}.0")), w, f"{name}.2")


def mmm_reference(w: Weights, text: torch.Tensor, audio: torch.Tensor, order: str = "seed"):
    x = torch.cat([lin(text, w, "text_proj"), lin(audio, w, "audio_proj")], dim=1)
    y = layer_norm(x, w, "norm")
    y = mixer_mlp(y.transpose(1, 2), w, "token_mlp").transpose(1, 2)
    x = x + y
    # The seed normalises the token-mixed y with the same LayerNorm; the Mixer paper
    # normalises the residual sum (only for the check that the order shows).
    y = layer_norm(y if order == "seed" else x, w, "norm")
    y = mixer_mlp(y, w, "channel_mlp")
    pooled = layer_norm(y + x, w, "out_norm").mean(dim=1)
    return lin(gelu(lin(pooled, w, "head.1")), w, "head.4")


def assert_same(actual: torch.Tensor, expected: torch.Tensor, w: Weights) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert w.read == set(w), f"parameters the seed does not have: {sorted(set(w) - w.read)}"


def assert_differs(a: torch.Tensor, b: torch.Tensor) -> None:
    """The alternative computation moves the logits well beyond the tolerance."""
    assert (a - b).abs().max() > 1e-3


# -- heads ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["add", "concat"])
@pytest.mark.parametrize("alignment", ["compressing", "attention"])
def test_case_heads_match_the_seed(alignment: str, fusion: str) -> None:
    name = f"case-{alignment}" if fusion == "add" else f"case-concat-{alignment}"
    model, w = faithful_head(name)
    batch, frames = seed_inputs()
    # compressing: frames cut/padded to the fixed count; attention: to the batch's longest.
    audio = pad_to(frames, F) if alignment == "compressing" else batch_padded(frames)
    with torch.no_grad():
        got = model(batch).logits
        expected = case_reference(w, batch["text"], audio, alignment, fusion)
        assert_same(got, expected, w)
        # Pooling covers the [PAD] states: zeroing them changes the logits.
        no_pad_states = batch["text"] * (torch.arange(T) < batch["text_len"][:, None])[..., None]
        assert_differs(got, case_reference(w, no_pad_states, audio, alignment, fusion))
        if alignment == "attention":
            # Keys padded to the store's F frames instead of the batch's longest: different
            # (padded frames project to the bias and take attention weight).
            assert_differs(
                got, case_reference(w, batch["text"], pad_to(frames, F), alignment, fusion)
            )
            # The head cuts to the batch's longest itself, however wide the batch comes.
            assert model.trim == {"audio"}
            cut = dict(batch, audio=batch["audio"][:, : max(AUDIO_LEN)])
            torch.testing.assert_close(model(cut).logits, got, rtol=0, atol=1e-12)


def test_concat_matches_the_seed() -> None:
    model, w = faithful_head("concat")
    batch, frames = seed_inputs()
    with torch.no_grad():
        t, a = lin(batch["text"], w, "text_proj"), lin(pad_to(frames, F), w, "audio_proj")
        x = layer_norm(lin(torch.cat([t, a], dim=1), w, "mix"), w, "norm")
        assert_same(model(batch).logits, classifier(x.mean(dim=1), w), w)


def test_mmm_block_order_matches_the_seed() -> None:
    model, w = faithful_head("mmm")
    batch, frames = seed_inputs()
    audio = pad_to(frames, F)
    with torch.no_grad():
        got = model(batch).logits
        assert_same(got, mmm_reference(w, batch["text"], audio), w)
        assert_differs(got, mmm_reference(w, batch["text"], audio, order="mixer-paper"))
    # One LayerNorm used twice inside the block, a second one after it: two in all.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2
    dropouts = [type(m).__name__ for m in model.token_mlp]
    assert dropouts == ["Linear", "GELU", "Linear", "Dropout"]


def test_mmm_always_means_when_faithful() -> None:
    model = create_model(
        "mmm", config=TrainConfig(model="mmm", hidden=8, faithful=True, pooling="sum"), **SMALL
    )
    assert model.pooling == "mean"


def test_text_only_is_the_classifier_on_the_pooled_output() -> None:
    model, w = faithful_head("text-only")
    batch, _ = seed_inputs()
    with torch.no_grad():
        out = model(batch)
        assert_same(out.logits, classifier(batch["text_pooled"], w), w)
        # the pooled vector for the contrastive term: the classifier's hidden activation
        torch.testing.assert_close(out.fused, gelu(lin(batch["text_pooled"], w, "classifier.1")))


def test_speech_only_means_over_the_batch_padded_length() -> None:
    model, w = faithful_head("speech-only")
    batch, frames = seed_inputs()
    assert model.trim == {"audio"}
    with torch.no_grad():
        got = model(batch).logits
        # mean over the batch's longest (15 frames), zeros included; Dropout is the identity
        assert_same(got, classifier(batch_padded(frames).mean(dim=1), w), w)
        assert_differs(got, classifier(pad_to(frames, F).mean(dim=1), w))
        true_mean = torch.stack([f.mean(dim=0) for f in frames])
        assert_differs(got, classifier(true_mean, w))


# -- parameter counts -----------------------------------------------------------------------
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seed_parameter_counts_in_both_modes(name: str) -> None:
    expected = {
        "case-compressing": 593_031,
        "case-attention": 527_367,
        "case-concat-compressing": 593_031,
        "case-concat-attention": 527_367,
        "concat": 593_159,
        "mmm": 1_547_527,
        "text-only": 198_663,
        "speech-only": 264_199,
    }
    assert SEED_PARAM_COUNTS[name] == expected[name]
    for faithful in (True, False):
        cfg = TrainConfig(model=name, faithful=faithful)
        assert count_parameters(create_model(name, config=cfg, **SEED_SIZES)) == expected[name]


# -- what cannot be reproduced: one list, shown as it is ------------------------------------
def test_the_list_of_what_cannot_be_reproduced_is_in_readme() -> None:
    assert len(NOT_REPRODUCIBLE) == 3
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not_reproducible_markdown() in readme


# -- the store with [PAD] states ------------------------------------------------------------
def _old_store(store: Path, tmp: Path) -> FeatureStore:
    """A copy of ``store`` with text zero past its true length, as stores were before."""
    copy = tmp / store.name
    shutil.copytree(store, copy)
    text = np.load(copy / "text.npy", mmap_mode="r+")
    lens = np.load(copy / "text_len.npy")
    text[np.arange(text.shape[1])[None, :] >= lens[:, None]] = 0
    text.flush()
    del text
    return FeatureStore.open(copy)


def _outputs(name: str, store: FeatureStore, faithful: bool) -> tuple[torch.Tensor, list]:
    """Eval logits over the train split, and the gradients of one training step."""
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, hidden=16, faithful=faithful)
    model = create_model(
        name,
        text_dim=store.text_dim,
        audio_dim=store.audio_dim,
        max_tokens=store.max_tokens,
        max_frames=store.max_frames,
        num_classes=store.num_classes,
        config=cfg,
    )
    cpu = torch.device("cpu")
    data = load_split(
        store, "train", uses=model.uses, frames=store.max_frames, trim=model.trim, device=cpu
    )
    with torch.no_grad():
        logits = torch.cat(
            [model.eval()(b).logits for _, b in data.batches(torch.arange(data.n), 32)]
        )
    model.train()
    torch.manual_seed(1)
    idx = torch.randperm(data.n)[:32]
    torch.nn.functional.cross_entropy(model(data.batch(idx)).logits, data.labels[idx]).backward()
    return logits, [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def stores(demo_store: Path, tmp_path_factory: pytest.TempPathFactory):
    new = FeatureStore.open(demo_store)
    pad = np.arange(new.max_tokens)[None, :] >= new.text_len[:, None]
    assert pad.any() and (np.abs(new.text[pad].astype(np.float32)).sum(-1) > 0).all()
    return new, _old_store(demo_store, tmp_path_factory.mktemp("old_store"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_masked_heads_give_the_same_outputs_bit_for_bit(name: str, stores) -> None:
    new, old = stores
    logits_new, grads_new = _outputs(name, new, faithful=False)
    logits_old, grads_old = _outputs(name, old, faithful=False)
    assert torch.equal(logits_new, logits_old)
    assert all(torch.equal(a, b) for a, b in zip(grads_new, grads_old, strict=True))


@pytest.mark.parametrize("name", [m for m in MODEL_NAMES if m not in ("text-only", "speech-only")])
def test_faithful_heads_see_the_pad_states(name: str, stores) -> None:
    new, old = stores
    logits_new, _ = _outputs(name, new, faithful=True)
    logits_old, _ = _outputs(name, old, faithful=True)
    assert (logits_new - logits_old).abs().max() > 1e-3
