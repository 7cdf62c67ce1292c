"""Frozen encoders: a wav2vec2-family audio encoder and a BERT-family text encoder.

Both load with ``from_pretrained`` from a local directory or a hub id. The demo's tiny
encoders are built here, saved with ``save_pretrained`` and loaded back through the very same
loaders, so the demo exercises the real code path. Nothing here trains: models are put in
eval mode with gradients off, and callers run them under ``torch.inference_mode``.

An encoder's *identity* (what goes into a feature store's key) is computed without loading
the model, so that an existing store is found before any weights are read: a local directory
is identified by a hash of its files (config, weights, tokenizer / feature-extractor files),
a hub id by the id and the revision asked for ("main"). The commit a hub id resolved to is
recorded beside it (in a store's manifest) but is not part of the key: before the first
download nothing local knows it, so keying on it gave the first ``prepare`` one key (no
commit) and every later one another (the cached ``refs/main``), and the second run extracted
everything again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from data_prep.atomic import build_dir_atomic
from data_prep.device import resolve_device

DEFAULT_AUDIO_MODEL = "kresnik/wav2vec2-large-xlsr-korean"
DEFAULT_TEXT_MODEL = "klue/bert-base"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Tiny but structurally real encoders for the demo. The conv stack keeps wav2vec2's real
# kernels and strides, so one frame is still 20 ms (320 samples) with a 400-sample field.
DEMO_AUDIO_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": [32] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    # Layer norm in the feature encoder (as in the large models) makes padded batches with
    # attention masks give the same frames as one utterance at a time.
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "apply_spec_augment": False,
    "mask_time_prob": 0.0,
}
DEMO_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}
DEMO_VOCAB_SIZE = 2000
# Random init gives attention value/output weights so small (std 0.02) that the tiny
# transformers barely mix positions: every frame stays a local description of 20 ms of sound
# (frame-to-frame variance ~60x the variance between utterance means). Pretrained encoders'
# upper layers carry utterance-level context in every frame, and models such as CASE's
# compressing alignment (a learned Linear over frame positions) rely on that. Scaling the
# value and output projections of each attention block by these gains makes attention add a
# (near-uniform) utterance summary to every position: frame variance falls to about the
# between-utterance variance, while linear probes on mean-pooled features keep their score.
DEMO_AUDIO_ATTENTION_GAIN = 12.0
DEMO_TEXT_ATTENTION_GAIN = 4.0
# The random BERT pooler (tanh(W h_[CLS]), W std 0.02) is nearly constant (spread ~0.001 per
# dimension); with this gain its output varies ~0.1 and carries some of the sentence.
DEMO_POOLER_GAIN = 20.0
# Bump when the way demo encoders are built changes, so old saved copies are not reused.
DEMO_ENCODER_VERSION = 2


class EncoderError(RuntimeError):
    """An encoder could not be found or loaded; the message says what to do."""


# -- identity -------------------------------------------------------------------------------
def _is_local(name_or_dir: str | os.PathLike[str]) -> bool:
    return Path(name_or_dir).expanduser().is_dir()


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else can only be meant as a directory.
    return (
        name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name
    )


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so an edited file is hashed again.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hash_model_dir(path: str | os.PathLike[str]) -> str:
    """sha256 over the names and contents of a saved model directory's files.

    Covers config, weights and tokenizer / feature-extractor files; skips hidden files and
    READMEs, which do not change what the encoder computes.
    """
    root = Path(path).expanduser().resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        if f.name.startswith(".") or f.name.lower().startswith("readme"):
            continue
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0".encode())
        h.update(_file_digest(str(f), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


HUB_REVISION = "main"  # what from_pretrained loads when no revision is given


def cached_hub_commit(repo_id: str, revision: str = HUB_REVISION) -> str | None:
    """Commit that ``revision`` of ``repo_id`` points to in the local HF cache, if cached."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def encoder_identity(name_or_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an encoder, computed without loading it.

    Local directory: ``{"source": "local", "name", "path", "sha256"}``.
    Hub id: ``{"source": "hub", "name", "revision", "commit"}`` (commit None until cached).
    Only the fields of :func:`identity_for_key` enter a store's key (not the path, so moving
    a model folder does not invalidate stores; not the commit, which downloading changes).
    """
    if _is_local(name_or_dir):
        root = Path(name_or_dir).expanduser().resolve()
        return {
            "source": "local",
            "name": root.name,
            "path": str(root),
            "sha256": hash_model_dir(root),
        }
    name = str(name_or_dir)
    if _looks_like_path(name):
        raise EncoderError(f"model directory {name} does not exist")
    return {
        "source": "hub",
        "name": name,
        "revision": HUB_REVISION,
        "commit": cached_hub_commit(name),
    }


def identity_for_key(identity: dict[str, Any]) -> dict[str, Any]:
    """The part of an identity that decides what features come out and is known before any
    download: no filesystem path, no resolved commit."""
    if identity["source"] == "local":
        return {"source": "local", "sha256": identity["sha256"]}
    return {"source": "hub", "name": identity["name"], "revision": identity["revision"]}


def commit_changes(recorded: dict[str, Any]) -> str | None:
    """A note when a hub model's cached commit differs from the one a store recorded.

    The key stays the same (see the module docstring), so a hub model whose ``main`` moved
    would reuse features of the old commit: say so, and how to re-extract.
    """
    if recorded.get("source") != "hub" or not recorded.get("commit"):
        return None
    now = cached_hub_commit(recorded["name"], recorded.get("revision") or HUB_REVISION)
    if now is None or now == recorded["commit"]:
        return None
    return (
        f"note: this store was extracted with {recorded['name']} at commit "
        f"{recorded['commit'][:12]}; the local cache now holds {now[:12]}. To extract with the "
        f"new weights, delete the store (or pass the downloaded folder as a directory)."
    )


# -- loading --------------------------------------------------------------------------------
def _from_pretrained(
    loader: Any, name_or_dir: str | os.PathLike[str], flag: str, **kwargs: Any
) -> Any:
    local = _is_local(name_or_dir)
    name = str(Path(name_or_dir).expanduser()) if local else str(name_or_dir)
    if not local and _looks_like_path(name):
        raise EncoderError(f"{flag}: model directory {name} does not exist")
    try:
        with _quiet_transformers():
            return loader(name, local_files_only=local, **kwargs)
    except OSError as exc:
        if local:
            raise EncoderError(
                f"{flag}: cannot load a model from directory {name}: {exc}. The directory "
                "must hold files written by `save_pretrained` (config.json, weights, and the "
                "tokenizer or feature-extractor files)."
            ) from exc
        raise EncoderError(
            f"{flag}: cannot load {name!r}: it is not in the local Hugging Face cache and the "
            "hub cannot be reached (offline). Download it on a machine with network access "
            f"(e.g. `hf download {name} --local-dir DIR`), copy DIR here and "
            f"pass `{flag} DIR`."
        ) from exc


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own per-load progress bars (ours is the one that matters)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _with_loaded_commit(identity: dict[str, Any]) -> dict[str, Any]:
    """A hub identity with the commit just loaded (a first load downloads it into the cache)."""
    if identity.get("source") != "hub":
        return identity
    commit = cached_hub_commit(identity["name"], identity.get("revision") or HUB_REVISION)
    return {**identity, "commit": commit or identity.get("commit")}


def _freeze(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device)


@dataclass
class _FrozenEncoder:
    """What both encoders hold: the frozen model, what identifies it, where it runs."""

    model: Any
    identity: dict[str, Any]
    device: torch.device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)


@dataclass
class AudioEncoder(_FrozenEncoder):
    """A frozen wav2vec2-family model and its feature extractor."""

    feature_extractor: Any

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def use_attention_mask(self) -> bool:
        """Whether batches get attention masks (see :mod:`data_prep.extract` for why not always)."""
        return bool(getattr(self.feature_extractor, "return_attention_mask", False))

    @property
    def frame_stride(self) -> int:
        """Samples between frames (320 = 20 ms at 16 kHz for every wav2vec2 model)."""
        stride = 1
        for s in self.model.config.conv_stride:
            stride *= int(s)
        return stride

    @property
    def receptive_field(self) -> int:
        """Samples seen by one frame (400 for the real conv stack)."""
        field, jump = 1, 1
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride, strict=True):
            field += (int(k) - 1) * jump
            jump *= int(s)
        return field

    def frames_for(self, num_samples: int) -> int:
        """Frames the model produces for ``num_samples`` samples (0 if too short)."""
        return int(self.model._get_feat_extract_output_lengths(int(num_samples)))

    def samples_for(self, num_frames: int) -> int:
        """Fewest samples that give exactly ``num_frames`` frames."""
        return self.receptive_field + self.frame_stride * (num_frames - 1)


@dataclass
class TextEncoder(_FrozenEncoder):
    """A frozen BERT-family model and its tokenizer."""

    tokenizer: Any

    @property
    def has_pooler(self) -> bool:
        return getattr(self.model, "pooler", None) is not None


def _load_frozen(
    processor_cls: Any,
    name_or_dir: str | os.PathLike[str],
    flag: str,
    device: str | torch.device | None,
    identity: dict[str, Any] | None,
    check: Callable[[Any], None] = lambda model: None,
) -> tuple[Any, torch.nn.Module, dict[str, Any], torch.device]:
    """(processor, frozen model, identity with the loaded commit, device) of one encoder;
    ``check`` vets the model before anything else is done with it."""
    from transformers import AutoModel

    dev = resolve_device(device)
    ident = identity or encoder_identity(name_or_dir)
    processor = _from_pretrained(processor_cls.from_pretrained, name_or_dir, flag)
    model = _from_pretrained(AutoModel.from_pretrained, name_or_dir, flag, dtype=torch.float32)
    check(model)
    ident = _with_loaded_commit(ident)
    return processor, _freeze(model, dev), ident, dev


def load_audio_encoder(
    name_or_dir: str | os.PathLike[str] = DEFAULT_AUDIO_MODEL,
    *,
    device: str | torch.device | None = None,
    identity: dict[str, Any] | None = None,
) -> AudioEncoder:
    """Load a frozen audio encoder (``AutoModel`` + ``AutoFeatureExtractor``)."""
    from transformers import AutoFeatureExtractor

    def check(model: Any) -> None:  # frame counts come from wav2vec2's conv arithmetic
        if not hasattr(model, "_get_feat_extract_output_lengths"):
            raise EncoderError(
                f"--audio-model {name_or_dir}: {type(model).__name__} is not a wav2vec2-family model"
            )

    fe, model, ident, dev = _load_frozen(
        AutoFeatureExtractor, name_or_dir, "--audio-model", device, identity, check
    )
    return AudioEncoder(model=model, feature_extractor=fe, identity=ident, device=dev)


def load_text_encoder(
    name_or_dir: str | os.PathLike[str] = DEFAULT_TEXT_MODEL,
    *,
    device: str | torch.device | None = None,
    identity: dict[str, Any] | None = None,
) -> TextEncoder:
    """Load a frozen text encoder (``AutoModel`` + ``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    tok, model, ident, dev = _load_frozen(
        AutoTokenizer, name_or_dir, "--text-model", device, identity
    )
    return TextEncoder(model=model, tokenizer=tok, identity=ident, device=dev)


# -- demo encoders --------------------------------------------------------------------------
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[
        :16
    ]


def _has_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _build_demo_audio(out: Path, seed: int) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    model = Wav2Vec2Model(Wav2Vec2Config(**DEMO_AUDIO_CONFIG))
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.attention.v_proj.weight.mul_(DEMO_AUDIO_ATTENTION_GAIN)
            layer.attention.out_proj.weight.mul_(DEMO_AUDIO_ATTENTION_GAIN)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(out)


def train_wordpiece(transcripts: list[str], vocab_size: int, max_length: int) -> Any:
    """A BERT-style WordPiece tokenizer trained on ``transcripts``, as a
    ``PreTrainedTokenizerFast`` (saves and reloads offline with ``save_pretrained``)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # strip_accents=False: NFD would split Hangul syllables into jamo.
    tok.normalizer = normalizers.BertNormalizer(
        lowercase=False, strip_accents=False, clean_text=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(transcripts, trainer)
    # The trainer orders tokens of equal frequency differently from run to run; rebuild the
    # model from a sorted vocabulary so that token ids (and so the features) are reproducible.
    learned = sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS))
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *learned])}
    tok.model = models.WordPiece(vocab=vocab, unk_token="[UNK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _build_demo_text(out: Path, transcripts: list[str], seed: int) -> None:
    from transformers import BertConfig, BertModel

    fast = train_wordpiece(
        transcripts, DEMO_VOCAB_SIZE, DEMO_TEXT_CONFIG["max_position_embeddings"]
    )
    tok = fast.backend_tokenizer
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id("[PAD]"), **DEMO_TEXT_CONFIG
    )
    model = BertModel(config, add_pooling_layer=True)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight.mul_(DEMO_TEXT_ATTENTION_GAIN)
            layer.attention.output.dense.weight.mul_(DEMO_TEXT_ATTENTION_GAIN)
        model.pooler.dense.weight.mul_(DEMO_POOLER_GAIN)
    model.save_pretrained(out)
    fast.save_pretrained(out)


def build_demo_encoders(
    out_dir: str | os.PathLike[str], transcripts: Iterable[str], seed: int = 0
) -> tuple[Path, Path]:
    """Build (or reuse) the tiny demo audio and text encoders under ``out_dir``.

    Randomly initialised under ``torch.manual_seed(seed)``, attention value/output projections
    (and the BERT pooler) scaled by the gains above; the text encoder's WordPiece
    vocabulary is trained on ``transcripts``. Folder names hash the configuration, the seed
    and (for text) the transcripts, so an identical request reuses the saved copy.
    Returns ``(audio_dir, text_dir)``, loadable with :func:`load_audio_encoder` /
    :func:`load_text_encoder`.
    """
    import transformers

    out = Path(out_dir).expanduser()
    texts = sorted(set(transcripts))
    if not texts:
        raise ValueError("build_demo_encoders needs at least one transcript")
    common = {
        "seed": seed,
        "version": DEMO_ENCODER_VERSION,
        "transformers": transformers.__version__.split(".")[0],
    }
    gains = {
        "audio_attention": DEMO_AUDIO_ATTENTION_GAIN,
        "text_attention": DEMO_TEXT_ATTENTION_GAIN,
        "pooler": DEMO_POOLER_GAIN,
    }
    audio_dir = out / (
        "demo-wav2vec2-"
        + _digest({**common, "config": DEMO_AUDIO_CONFIG, "gain": gains["audio_attention"]})
    )
    text_dir = out / (
        "demo-bert-"
        + _digest(
            {
                **common,
                "config": DEMO_TEXT_CONFIG,
                "gains": [gains["text_attention"], gains["pooler"]],
                "vocab": DEMO_VOCAB_SIZE,
                "texts": _digest(texts),
            }
        )
    )
    with _quiet_transformers():
        build_dir_atomic(audio_dir, lambda d: _build_demo_audio(d, seed), _has_config)
        build_dir_atomic(text_dir, lambda d: _build_demo_text(d, texts, seed), _has_config)
    return audio_dir, text_dir
