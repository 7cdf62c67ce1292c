"""Batched feature extraction with frozen encoders, straight into a store's memory maps.

Utterances are run through the frozen model under ``torch.inference_mode`` and written as
fp16 into ``[N, max_len, dim]`` arrays at their own rows. True lengths are kept for masking
downstream: audio frame counts from the model's own conv arithmetic
(``_get_feat_extract_output_lengths``), token counts from the tokenizer's attention mask; both
capped at the limit and at least 1.

Past the true length, audio is zero (the seed zero-pads frames too), and text holds the
encoder's states at [PAD] positions: like the seed, every transcript is padded to
``max_tokens`` with an attention mask, and the states at [PAD] positions, which are not zero,
are kept, because the seed's heads pool over (and attend from) them. The mask keeps them out
of the real tokens' states, so those are what an unpadded run gives (within float rounding).
Audio is sorted by length, so a batch pads little.

Audio in any sample rate and channel count soundfile reads is converted once, as it is read
(``load_wav``: channels averaged to mono, then ``scipy.signal.resample_poly`` to the encoder's
rate, 16 kHz for wav2vec2), and then cut to the fewest samples that give ``max_frames``
frames, so frames past the limit are never computed (the seed ran whole utterances and then
dropped frames).

``compile=True`` runs the encoder through ``torch.compile(model, dynamic=True)`` (inductor),
which fuses the conv feature encoder's transposes, layer norms and GELUs. The features are
the same within fp16 rounding. Compiling costs tens of seconds to minutes per process, and
again for each shape range dynamo specialises (batch 1; batch 16 and up vs smaller; for
batch 1, ranges of input length), so it pays only on large corpora. If compiling or a
compiled call fails (no C++ compiler, an inductor error), one warning is printed and
extraction continues eagerly, with the same features.

Attention masks for audio. Every waveform is normalised over its own true length (the feature
extractor is always asked for the mask, which it uses to normalise). The mask is passed to the
*model* only when the feature extractor says ``return_attention_mask``: that is how
checkpoints with a layer-normalised feature encoder (wav2vec2-large, XLS-R, the demo encoder)
declare that they were trained with masks, and for them a padded batch gives the same frames
as one utterance at a time. Checkpoints with a group-normalised feature encoder
(wav2vec2-base style) were trained without masks: their group norm takes statistics over the
whole padded time axis, so a mask cannot make padding invisible, and Hugging Face's advice is
to zero-pad and pass no mask. Sorting by length keeps that padding (and its effect) small.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from data_prep.encoders import AudioEncoder, TextEncoder

FP16_MAX = float(np.finfo(np.float16).max)


class ExtractionError(RuntimeError):
    """Features could not be computed or stored (e.g. values overflow fp16)."""


@dataclass(frozen=True)
class ExtractFault:
    """An utterance that could not be encoded; ``row`` indexes the inputs given."""

    row: int
    kind: str  # "unreadable_wav" | "empty_wav"
    message: str


class WavError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def load_wav(path: str, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sampling_rate``; raises :class:`WavError`."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise WavError("unreadable_wav", f"cannot read wav {path}: {exc}") from exc
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if wave.size == 0 or not np.any(wave):
        raise WavError("empty_wav", f"wav holds no audio (all zero or no frames): {path}")
    if sr != sampling_rate:
        from scipy.signal import resample_poly

        g = gcd(sr, sampling_rate)
        wave = resample_poly(wave, sampling_rate // g, sr // g).astype(np.float32)
    return np.ascontiguousarray(wave)


def _num_samples(path: str, sampling_rate: int) -> int:
    """Samples of ``path`` once at ``sampling_rate`` (what load_wav will return)."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0  # unreadable: sorted first, reported as a fault when read
    return int(info.frames) * sampling_rate // max(1, int(info.samplerate))


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _check_finite(batch: np.ndarray, what: str) -> None:
    if not np.isfinite(batch).all():
        raise ExtractionError(
            f"{what}: encoder output is not finite or exceeds the fp16 range ({FP16_MAX:g}); "
            "the features cannot be stored in fp16"
        )


_COMPILED_ATTR = "_case_tune_compiled"


class _Runner:
    """Calls ``model`` eagerly, or compiled when asked, falling back to eager on failure.

    The compiled wrapper is kept on the model (outside its registered submodules), so that
    extracting again with the same model reuses dynamo's compiled graphs.
    """

    def __init__(self, model: torch.nn.Module, compile: bool, what: str) -> None:
        self.model = model
        self.what = what
        self.compiled: Callable[..., Any] | None = None
        if compile:
            compiled = model.__dict__.get(_COMPILED_ATTR)
            if compiled is None:
                try:
                    compiled = torch.compile(model, dynamic=True)
                except Exception as exc:  # e.g. a Python version dynamo does not support
                    self._give_up(exc)
                    return
                object.__setattr__(model, _COMPILED_ATTR, compiled)
            self.compiled = compiled

    def _give_up(self, exc: Exception) -> None:
        self.compiled = None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(
            f"warning: compiled {self.what} encoder failed ({type(exc).__name__}: {first}); "
            "continuing without compile (eager: same features, slower). Drop --compile to "
            "skip the attempt.",
            file=sys.stderr,
            flush=True,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                with warnings.catch_warnings():
                    # Raised while tracing transformers' fsdp check; harmless here, and
                    # alarming on the console of a long prepare.
                    warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a")
                    return self.compiled(*args, **kwargs)
            except Exception as exc:  # compile errors surface at a (first or new-shape) call
                self._give_up(exc)
        return self.model(*args, **kwargs)


class _AudioBatches(torch.utils.data.Dataset):
    """One item = one prepared batch, so a DataLoader can read wavs in worker processes."""

    def __init__(
        self, enc: AudioEncoder, paths: Sequence[str], batches: list[np.ndarray], max_samples: int
    ) -> None:
        self.fe = enc.feature_extractor
        self.sr = enc.sampling_rate
        self.use_mask = enc.use_attention_mask
        self.min_samples = enc.receptive_field
        self.paths = paths
        self.batches = batches
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows, waves, lengths, faults = [], [], [], []
        for row in self.batches[i].tolist():
            try:
                wave = load_wav(self.paths[row], self.sr)
            except WavError as exc:
                faults.append(ExtractFault(row, exc.kind, str(exc)))
                continue
            wave = wave[: self.max_samples]
            lengths.append(wave.size)
            if wave.size < self.min_samples:  # shorter than one frame's field: zero-pad
                wave = np.pad(wave, (0, self.min_samples - wave.size))
            rows.append(row)
            waves.append(wave)
        item: dict[str, Any] = {"rows": rows, "lengths": lengths, "faults": faults}
        if waves:
            # Always ask for the mask: the extractor uses it to normalise each utterance over
            # its own samples. Whether the model sees it is decided in extract_audio.
            feats = self.fe(
                waves,
                sampling_rate=self.sr,
                padding=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            item["input_values"] = feats["input_values"]
            item["attention_mask"] = feats["attention_mask"] if self.use_mask else None
        return item


def extract_audio(
    encoder: AudioEncoder,
    wav_paths: Sequence[str],
    out: np.ndarray,
    out_len: np.ndarray,
    *,
    max_frames: int,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
    compile: bool = False,
) -> list[ExtractFault]:
    """Encode ``wav_paths[i]`` into ``out[i, :out_len[i]]`` (fp16, zero beyond).

    ``out`` is ``[N, max_frames, encoder.dim]``, ``out_len`` is ``[N]`` int; both are
    typically a :class:`~data_prep.store.StoreWriter` memory map. Unreadable or silent wavs
    are returned as faults (their rows stay zero with length 0) instead of raising.
    ``compile`` runs the model through ``torch.compile`` (see the module docstring).
    """
    n = len(wav_paths)
    if out.shape[:2] != (n, max_frames) or out.shape[2] != encoder.dim or out_len.shape != (n,):
        raise ValueError(
            f"audio output shape {out.shape} does not fit {n} x {max_frames} x {encoder.dim}"
        )
    max_samples = encoder.samples_for(max_frames)
    sr = encoder.sampling_rate
    sizes = np.array([min(_num_samples(p, sr), max_samples) for p in wav_paths], dtype=np.int64)
    # Longest first: a batch that does not fit in memory fails at once, not at the end.
    order = np.argsort(-sizes, kind="stable")
    data = _AudioBatches(encoder, wav_paths, _batches(order, batch_size), max_samples)
    cuda = encoder.device.type == "cuda"
    loader = torch.utils.data.DataLoader(
        data, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=cuda
    )
    model = _Runner(encoder.model, compile, "audio")
    faults: list[ExtractFault] = []
    bar = tqdm(total=n, desc="audio features", unit="utt", file=sys.stderr, disable=not progress)
    with torch.inference_mode():
        for item in loader:
            faults.extend(item["faults"])
            for f in item["faults"]:
                out_len[f.row] = 0
            if item["rows"]:
                x = item["input_values"].to(encoder.device, non_blocking=cuda)
                mask = item["attention_mask"]
                if mask is not None:
                    mask = mask.to(encoder.device, non_blocking=cuda)
                hidden = model(x, attention_mask=mask).last_hidden_state
                hidden = hidden[:, :max_frames].float().cpu().numpy()
                for i, (row, samples) in enumerate(zip(item["rows"], item["lengths"], strict=True)):
                    frames = max(1, min(max_frames, encoder.frames_for(samples), hidden.shape[1]))
                    feat = hidden[i, :frames].astype(np.float16)
                    _check_finite(feat, f"audio of {wav_paths[row]}")
                    out[row, :frames] = feat
                    out_len[row] = frames
            bar.update(len(item["rows"]) + len(item["faults"]))
    bar.close()
    return sorted(faults, key=lambda f: f.row)


def extract_text(
    encoder: TextEncoder,
    texts: Sequence[str],
    out: np.ndarray,
    out_len: np.ndarray,
    out_pooled: np.ndarray,
    *,
    max_tokens: int,
    batch_size: int = 32,
    progress: bool = True,
    compile: bool = False,
) -> None:
    """Encode ``texts[i]`` into ``out[i]`` and ``out_pooled[i]`` (fp16).

    Token states are the model's ``last_hidden_state`` (with [CLS]/[SEP], up to
    ``max_tokens``) at all ``max_tokens`` positions: the true ones, then the [PAD] ones (see
    the module docstring); ``out_len`` counts the true ones. The pooled vector is
    ``pooler_output`` when the model has a pooler, else the [CLS] state. ``compile`` runs the
    model through ``torch.compile`` (see the module docstring).
    """
    n = len(texts)
    if out.shape != (n, max_tokens, encoder.dim) or out_pooled.shape != (n, encoder.dim):
        raise ValueError(
            f"text output shape {out.shape} does not fit {n} x {max_tokens} x {encoder.dim}"
        )
    tok = encoder.tokenizer
    cuda = encoder.device.type == "cuda"
    model = _Runner(encoder.model, compile, "text")
    bar = tqdm(total=n, desc="text features", unit="utt", file=sys.stderr, disable=not progress)
    with torch.inference_mode():
        for rows in _batches(np.arange(n), batch_size):
            enc = tok(
                [texts[r] for r in rows.tolist()],
                padding="max_length",
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            if cuda:
                enc = {
                    k: v.pin_memory().to(encoder.device, non_blocking=True) for k, v in enc.items()
                }
            result = model(**enc)
            hidden = result.last_hidden_state.float().cpu().numpy()
            pooled_t = (
                result.pooler_output if encoder.has_pooler else result.last_hidden_state[:, 0]
            )
            pooled = pooled_t.float().cpu().numpy().astype(np.float16)
            counts = enc["attention_mask"].sum(dim=1).cpu().numpy()
            for i, row in enumerate(rows.tolist()):
                feat = hidden[i].astype(np.float16)  # every position, [PAD] ones included
                _check_finite(feat, f"text of row {row}")
                _check_finite(pooled[i], f"pooled text of row {row}")
                out[row] = feat
                out_len[row] = int(max(1, min(max_tokens, counts[i])))
                out_pooled[row] = pooled[i]
            bar.update(len(rows))
    bar.close()
