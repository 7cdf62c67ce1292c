"""Write a small synthetic corpus in KEMDy20's exact layout and encodings.

The corpus is learnable on purpose, and learnable from what the models see (frozen
encoders' frames and tokens, averaged): emotion shows in the voice (absolute pitch level
and contour, syllable rate, spectral brightness, breathiness, formants; speakers differ
little next to the emotion effects) and in word choice (a few Korean emotion words per
class among neutral fillers). Of the non-neutral utterances about 40 % carry both
cues, 30 % only the audio one and 30 % only the text one, so a fusion model can beat either
modality alone. Neutral-heavy like the real data, with a few tie rows and empty wavs.

    python -m data_prep.demo --out DIR [--sessions N] [--seed S]

Deterministic byte for byte for a given seed (numpy Generator, no timestamps, int16 written
directly). ``data_prep.kemdy20.read_corpus`` reads it like the real corpus.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.audio import SAMPLE_RATE, write_pcm16
from data_prep.kemdy20 import clean_transcript
from data_prep.labels import LABELS, NEUTRAL, canonical_label

MANIFEST_NAME = "manifest.csv"

RATERS = (
    "Eval01F",
    "Eval02M",
    "Eval03M",
    "Eval04F",
    "Eval05M",
    "Eval06F",
    "Eval07F",
    "Eval08M",
    "Eval09F",
    "Eval10M",
)
# The real CSVs spell disgust with the dataset's own typo.
CSV_SPELLING = {"disgust": "disqust"}
NON_NEUTRAL = tuple(lab for lab in LABELS if lab != NEUTRAL)
# Share of each non-neutral class beyond the per-session minimum; happy is the largest.
CLASS_WEIGHTS = {
    "happy": 0.50,
    "surprise": 0.14,
    "angry": 0.15,
    "sad": 0.15,
    "disgust": 0.09,
    "fear": 0.09,
}
# Valence/arousal centroids per class seen in KEMDy20 (reference/kemdy20-format.md).
CENTROIDS = {
    "neutral": (3.00, 3.19),
    "happy": (3.84, 3.60),
    "surprise": (3.09, 3.38),
    "angry": (2.22, 3.57),
    "sad": (2.51, 2.92),
    "disgust": (2.20, 3.29),
    "fear": (2.39, 3.08),
}


@dataclass(frozen=True)
class Prosody:
    """Per-class voice: pitch level and contour, syllable rate, brightness, breathiness.

    The frozen demo wav2vec2 normalises every waveform (zero mean, unit variance) and is
    then averaged over frames, so loudness is lost and any cue must be *absolute* and spread
    over the whole utterance: pitch level (a factor on the speaker's pitch, which varies only
    about 5 % between speakers of one gender), syllable rate, spectral tilt of the harmonics,
    breath noise mixed into the voice, and a vowel-formant shift.
    """

    f0: float  # multiplies the speaker's base pitch
    slope: float  # relative pitch change from start to end of the utterance
    depth: float  # depth of slow pitch movement (intonation liveliness)
    energy: float  # multiplies the speaker's loudness (lost to normalisation; kept for realism)
    rate: float  # multiplies the speaker's syllable rate
    tremor: float  # 7 Hz pitch tremor depth
    tilt: float  # harmonic h has amplitude h**-tilt: low = bright / pressed, high = dark / soft
    breath: float  # share of aspiration noise in voiced parts (breathy voice)
    formant: float  # multiplies the vowel formants (smiling raises them, a tight throat lowers)


PROSODY = {
    "neutral": Prosody(1.00, -0.05, 0.05, 1.00, 1.00, 0.00, 1.15, 0.02, 1.00),
    "happy": Prosody(1.40, 0.15, 0.25, 1.35, 1.20, 0.00, 0.60, 0.00, 1.15),
    "surprise": Prosody(1.75, 0.70, 0.14, 1.40, 0.85, 0.00, 0.95, 0.20, 1.05),
    "angry": Prosody(1.15, -0.30, 0.10, 1.90, 1.45, 0.00, 0.20, 0.00, 0.95),
    "sad": Prosody(0.72, -0.20, 0.03, 0.55, 0.62, 0.00, 2.20, 0.40, 0.92),
    "disgust": Prosody(0.80, -0.50, 0.10, 0.90, 0.85, 0.00, 1.80, 0.15, 0.75),
    "fear": Prosody(1.30, 0.00, 0.05, 0.75, 1.55, 0.08, 1.50, 0.90, 1.00),
}

NEUTRAL_WORDS = [
    "오늘",
    "내일",
    "어제",
    "우리",
    "그냥",
    "이제",
    "그래서",
    "그런데",
    "시간",
    "사람",
    "집에",
    "회사",
    "학교",
    "친구",
    "같이",
    "밥을",
    "먹고",
    "가서",
    "보면",
    "했는데",
    "있잖아",
    "그거",
    "이거",
    "저기",
    "아침에",
    "저녁에",
    "주말에",
    "버스",
    "지하철",
    "전화",
    "얘기",
    "생각",
    "일단",
    "다음",
    "주에",
    "거기",
    "많이",
    "조금",
    "하고",
    "있어",
    "했어",
    "갔어",
    "봤어",
    "나는",
    "너는",
    "동생",
    "엄마",
    "아빠",
    "회의",
    "준비",
    "문제",
    "사진",
    "영화",
    "커피",
]
EMOTION_WORDS = {
    "happy": ["좋아", "행복해", "기뻐", "신나", "최고야"],
    "surprise": ["깜짝", "놀랐어", "세상에", "어머", "대박"],
    "angry": ["화나", "짜증나", "열받아", "그만해", "어이없어"],
    "sad": ["슬퍼", "우울해", "눈물", "힘들어", "속상해"],
    "disgust": ["역겨워", "더러워", "징그러워", "끔찍해", "불쾌해"],
    "fear": ["무서워", "겁나", "두려워", "떨려", "불안해"],
}
ALT_READINGS = ("(이십)/(20)", "(그러니까)/(그니까)", "(내일)/(낼)", "(뭐라고)/(머라고)")
FILLERS = ("어/", "음/", "그/", "아/")
N_HARMONICS = 16


@dataclass(frozen=True)
class Speaker:
    user: str  # "User001F"
    gender: str
    f0: float
    rate: float
    gain: float
    formant: float


def _header_rows() -> list[list[str]]:
    top = ["Numb", "Wav", " ", "Segment ID", "Total Evaluation", " ", " "]
    sub = [" ", "start", "end", " ", "Emotion", "Valence", "Arousal"]
    for rater in RATERS:
        top += [rater, " ", " "]
        sub += ["Emotion", "Valence", "Arousal"]
    return [top, sub]


def _speakers(rng: np.random.Generator, session: int) -> tuple[Speaker, Speaker]:
    out = []
    for user in (2 * session - 1, 2 * session):
        gender = "F" if user % 2 else "M"
        # Speakers differ little (pitch within about +-8 %, rate +-5 %) next to the emotion
        # effects (pitch x0.72..x1.75), so that the cue survives frozen, frame-averaged
        # features without per-speaker normalisation.
        base = 165.0 if gender == "F" else 150.0
        out.append(
            Speaker(
                user=f"User{user:03d}{gender}",
                gender=gender,
                f0=float(base * np.exp(np.clip(rng.normal(0, 0.04), -0.08, 0.08))),
                rate=float(4.6 * np.exp(np.clip(rng.normal(0, 0.03), -0.05, 0.05))),
                gain=float(rng.uniform(0.7, 1.2)),
                formant=(1.12 if gender == "F" else 1.0) * float(np.exp(rng.normal(0, 0.03))),
            )
        )
    return out[0], out[1]


def _session_labels(rng: np.random.Generator, n: int, neutral_share: float) -> list[str]:
    """Labels for one session's slots: every non-neutral class at least twice when room."""
    k = max(int(round((1 - neutral_share) * n)), min(len(NON_NEUTRAL), n // 2))
    per_class = min(2, k // len(NON_NEUTRAL))
    labels = [c for c in NON_NEUTRAL for _ in range(per_class)]
    weights = np.array([CLASS_WEIGHTS[c] for c in NON_NEUTRAL])
    extra = rng.choice(len(NON_NEUTRAL), size=k - len(labels), p=weights / weights.sum())
    labels += [NON_NEUTRAL[i] for i in extra]
    labels += [NEUTRAL] * (n - len(labels))
    return [labels[i] for i in rng.permutation(n)]


def _sentence(rng: np.random.Generator, label: str, text_cue: bool) -> str:
    n_words = int(rng.integers(3, 7))
    words = [NEUTRAL_WORDS[i] for i in rng.integers(0, len(NEUTRAL_WORDS), n_words)]
    if text_cue:
        # Few words per class, two per utterance: with a few dozen emotional training
        # rows per class, each word must recur for frozen random-BERT features to carry it.
        pool = EMOTION_WORDS[label]
        for _ in range(2):
            words.insert(int(rng.integers(0, len(words) + 1)), pool[rng.integers(len(pool))])
    elif rng.random() < 0.04:
        # Real speech sometimes uses an emotion word without the emotion.
        pool = EMOTION_WORDS[NON_NEUTRAL[rng.integers(len(NON_NEUTRAL))]]
        words.insert(int(rng.integers(0, len(words) + 1)), pool[rng.integers(len(pool))])
    return _add_tags(rng, words)


def _add_tags(rng: np.random.Generator, words: list[str]) -> str:
    """Sprinkle KEMDy20's transcription tags over about 40 % of transcripts."""
    words = list(words)
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 3))):
            op = int(rng.integers(0, 9))
            i = int(rng.integers(0, len(words)))
            if op == 0:
                words.insert(0, "c/")
            elif op in (1, 2, 3, 4):
                words.insert(i, ("n/", "l/", "b/", "u/")[op - 1])
            elif op == 5:
                words[i] = words[i] + "*"
            elif op == 6:
                words.insert(i, words[i][0] + "+")
            elif op == 7:
                words.insert(i, FILLERS[rng.integers(len(FILLERS))])
            else:
                words.insert(i, ALT_READINGS[rng.integers(len(ALT_READINGS))])
    return " ".join(words)


def _synthesise(rng: np.random.Generator, spk: Speaker, p: Prosody) -> np.ndarray:
    """Speech-like audio: voiced harmonic syllables with formant shaping, gaps and pauses."""
    sr = SAMPLE_RATE
    f0 = spk.f0 * p.f0 * float(np.exp(rng.normal(0, 0.03)))
    rate = spk.rate * p.rate * float(np.exp(rng.normal(0, 0.05)))
    energy = spk.gain * p.energy * float(np.exp(rng.normal(0, 0.1)))
    slope = p.slope + rng.normal(0, 0.05)
    depth = p.depth * float(np.exp(rng.normal(0, 0.2)))
    target = float(rng.uniform(1.0, 3.2))

    # Built segment by segment (lead, consonant+vowel syllables, pauses, tail): a voiced
    # envelope, a consonant-noise envelope, and per segment a pitch accent and the vowel's
    # formants (F1, F2).
    env_parts: list[np.ndarray] = []
    cons_parts: list[np.ndarray] = []
    seg_len: list[int] = []
    seg_acc: list[float] = []
    seg_form: list[np.ndarray] = []

    def add(env: np.ndarray, cons: np.ndarray, accent: float, vowel: np.ndarray) -> None:
        env_parts.append(env)
        cons_parts.append(cons)
        seg_len.append(env.size)
        seg_acc.append(accent)
        seg_form.append(vowel)

    rest = np.array([700.0, 1200.0])
    lead = int(rng.uniform(0.03, 0.12) * sr)
    add(np.zeros(lead), np.zeros(lead), 1.0, rest)
    t = lead / sr
    while t < target:
        syl = (1.0 / rate) * float(rng.uniform(0.75, 1.25))
        n_cons = int(0.2 * syl * sr)
        n_vow = int(0.8 * syl * sr)
        x = np.linspace(0.0, 1.0, n_vow)
        vowel = np.array([rng.uniform(300, 850), rng.uniform(900, 2300)]) * (
            spk.formant * p.formant
        )
        accent = float(np.exp(rng.normal(0, 0.3 * depth + 0.01)))
        burst = 0.15 * np.exp(-np.linspace(0, 4, n_cons))
        add(
            np.concatenate([np.zeros(n_cons), np.sin(np.pi * x) ** 0.6]),
            np.concatenate([burst, np.zeros(n_vow)]),
            accent,
            vowel,
        )
        t += (n_cons + n_vow) / sr
        if rng.random() < 0.12:
            n_pause = int(rng.uniform(0.08, 0.25) * sr)
            add(np.zeros(n_pause), np.zeros(n_pause), accent, vowel)
            t += n_pause / sr
    tail = int(rng.uniform(0.05, 0.1) * sr)
    add(np.zeros(tail), np.zeros(tail), 1.0, rest)

    env = np.concatenate(env_parts)
    cons = np.concatenate(cons_parts)
    lengths = np.array(seg_len)
    acc = np.repeat(np.array(seg_acc), lengths)
    n = env.size
    time = np.arange(n) / sr
    total = max(time[-1], 1e-3)
    contour = (1 + slope * (time / total - 0.5)) * (
        1 + depth * np.sin(2 * np.pi * 0.8 * time + rng.uniform(0, 2 * np.pi))
    )
    if p.tremor:
        contour = contour * (1 + p.tremor * np.sin(2 * np.pi * 7.0 * time))
    pitch = np.clip(f0 * contour * acc, 60.0, 500.0)
    # Harmonic amplitudes per segment (source tilt times two formant bumps), from the
    # segment's nominal pitch: cheap, and the spectral shape still follows the vowel.
    harmonics = np.arange(1, N_HARMONICS + 1)
    fh = np.clip(f0 * np.array(seg_acc), 60.0, 500.0)[:, None] * harmonics[None, :]
    form = np.array(seg_form)
    amp = harmonics**-p.tilt * (
        1
        + 3 * np.exp(-(((fh - form[:, :1]) / 150.0) ** 2))
        + 2 * np.exp(-(((fh - form[:, 1:]) / 250.0) ** 2))
    )
    amp[fh >= 7000] = 0.0
    amp = np.repeat(amp, lengths, axis=0)
    # Harmonic h is Im(z**h) with z = exp(i*phase): one complex exp instead of N sines.
    phase = np.mod(2 * np.pi * np.cumsum(pitch) / sr, 2 * np.pi)
    z = np.exp(1j * phase.astype(np.float32))
    zh = z.copy()
    voiced = np.zeros(n)
    for h in range(N_HARMONICS):
        voiced += amp[:, h] * zh.imag
        zh *= z
    peak = float(np.max(np.abs(voiced * env))) or 1.0
    voiced /= peak
    # Breathy voice: aspiration noise under the voiced envelope, as a share of the voice.
    rms = float(np.sqrt(np.mean((voiced * env) ** 2))) or 1.0
    breath = p.breath * 3.0 * rms * rng.standard_normal(n, dtype=np.float32)
    signal = 0.3 * energy * env * (voiced + breath)
    # Consonant bursts plus room noise, so that pauses are not digital zero.
    signal += (0.3 * energy * cons + 0.002) * rng.standard_normal(n, dtype=np.float32)
    return np.clip(signal, -0.98, 0.98)


def _raters(
    rng: np.random.Generator, label: str, tie_with: tuple[str, ...] = ()
) -> tuple[list[str], list[int], list[int]]:
    """Ten rater emotions (majority = label, or a tie of label and tie_with) and V/A ints."""
    if tie_with:
        groups = (label, *tie_with)
        per = 10 // len(groups)
        votes = [g for g in groups for _ in range(per)]
        rest = [c for c in LABELS if c not in groups]
        while len(votes) < 10:
            votes.append(rest[rng.integers(len(rest))])
    else:
        k = int(rng.integers(6, 11))  # others get at most 4 votes: no tie possible
        others = [c for c in LABELS if c != label]
        if label == NEUTRAL:
            w = np.array([CLASS_WEIGHTS[c] for c in others])
        else:
            w = np.array([0.6 if c == NEUTRAL else 0.08 for c in others])
        picks = rng.choice(len(others), size=10 - k, p=w / w.sum())
        votes = [label] * k + [others[i] for i in picks]
    votes = [votes[i] for i in rng.permutation(10)]
    val = [int(np.clip(np.rint(CENTROIDS[e][0] + rng.normal(0, 0.6)), 1, 5)) for e in votes]
    aro = [int(np.clip(np.rint(CENTROIDS[e][1] + rng.normal(0, 0.6)), 1, 5)) for e in votes]
    return votes, val, aro


def majority_label(votes: list[str]) -> str:
    """Total emotion as KEMDy20 writes it: the most voted; ties joined by ';' in order of
    first vote, in the CSV's own spelling."""
    counts = {v: votes.count(v) for v in dict.fromkeys(votes)}
    top = max(counts.values())
    return ";".join(CSV_SPELLING.get(v, v) for v, c in counts.items() if c == top)


def write_demo_corpus(
    out: str | os.PathLike[str],
    *,
    sessions: int = 16,
    seed: int = 0,
    scripts: int = 6,
    utterances_per_script: int = 7,
    neutral_share: float = 0.80,
    tie_share: float = 0.03,
    empty_wavs: int = 4,
    manifest: bool = False,
) -> Path:
    """Write the demo corpus under ``out`` (created) and return its root path.

    ``manifest`` also writes ``manifest.csv`` (:mod:`data_prep.manifest`): the same
    utterances listed for the manifest reader, with KEMDy20's cleaned transcripts inline and
    its tied rows left out (the KEMDy20 path drops them by default), so both paths give the
    same store (tests/test_manifest.py). The KEMDy20 files are the same either way."""
    if not 1 <= sessions <= 99:
        raise ValueError(f"sessions must be in 1..99, got {sessions}")
    if scripts < 1 or utterances_per_script < 1:
        raise ValueError("scripts and utterances_per_script must be >= 1")
    root = Path(out)
    (root / "annotation").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows_by_session: dict[int, list[list[str]]] = {}
    audio: dict[Path, np.ndarray] = {}
    plain: list[Path] = []  # single-label neutral wavs: candidates for the empty ones
    listed: list[dict[str, str]] = []  # manifest.csv rows

    for s in range(1, sessions + 1):
        spk_a, spk_b = _speakers(rng, s)
        wav_dir = root / "wav" / f"Session{s:02d}"
        wav_dir.mkdir(parents=True, exist_ok=True)
        slots = []  # dialogue order: script, then alternating turns
        for script in range(1, scripts + 1):
            first, second = (spk_a, spk_b) if script % 2 else (spk_b, spk_a)
            for turn in range(1, utterances_per_script + 1):
                slots += [(script, first, turn), (script, second, turn)]
        labels = _session_labels(rng, len(slots), neutral_share)
        neutral_slots = [i for i, lab in enumerate(labels) if lab == NEUTRAL]
        n_ties = min(len(neutral_slots), int(round(tie_share * len(slots))))
        ties = set(rng.choice(neutral_slots, size=n_ties, replace=False).tolist())
        rows = []
        clock = {script: 0.0 for script in range(1, scripts + 1)}
        for i, ((script, spk, turn), label) in enumerate(zip(slots, labels, strict=True)):
            seg = f"Sess{s:02d}_script{script:02d}_{spk.user}_{turn:03d}"
            # Non-neutral: u < 0.4 both cues, 0.4-0.7 audio only, >= 0.7 text only.
            u = rng.random()
            audio_cue = label != NEUTRAL and u < 0.7
            text_cue = label != NEUTRAL and (u < 0.4 or u >= 0.7)
            tie_with: tuple[str, ...] = ()
            if i in ties:
                partners = [NON_NEUTRAL[j] for j in rng.permutation(len(NON_NEUTRAL))]
                tie_with = tuple(partners[: 2 if rng.random() < 0.25 else 1])
            sentence = _sentence(rng, label, text_cue)
            wave = _synthesise(rng, spk, PROSODY[label if audio_cue else NEUTRAL])
            votes, val, aro = _raters(rng, label, tie_with)
            start = clock[script] + float(rng.uniform(0.2, 1.0))
            end = start + wave.size / SAMPLE_RATE
            clock[script] = end
            (wav_dir / f"{seg}.txt").write_bytes((sentence + "\n").encode("cp949"))
            wav_path = wav_dir / f"{seg}.wav"
            audio[wav_path] = wave
            if label == NEUTRAL and not tie_with:
                plain.append(wav_path)
            row = [
                "",
                f"{start:.4f}",
                f"{end:.4f}",
                seg,
                majority_label(votes),
                f"{np.mean(val):.1f}",
                f"{np.mean(aro):.1f}",
            ]
            for e, v, a in zip(votes, val, aro, strict=True):
                row += [CSV_SPELLING.get(e, e), str(v), str(a)]
            rows.append(row)
            if ";" not in row[4]:
                listed.append(
                    {
                        "utterance_id": seg,
                        "audio": wav_path.relative_to(root).as_posix(),
                        "text": clean_transcript(sentence),
                        "label": canonical_label(row[4]) or "",
                        "session": str(s),
                        "speaker": spk.user,
                        "valence": row[5],
                        "arousal": row[6],
                    }
                )
        rows_by_session[s] = rows

    # A few wavs hold no audio, as in the real corpus: zero frames, or only zeros.
    n_empty = min(empty_wavs, len(plain))
    for j, idx in enumerate(sorted(rng.choice(len(plain), size=n_empty, replace=False))):
        path = plain[int(idx)]
        audio[path] = np.zeros(0 if j % 2 == 0 else SAMPLE_RATE, dtype=np.int16)
    for path, wave in audio.items():
        write_pcm16(path, wave)

    header = _header_rows()
    for s, rows in rows_by_session.items():
        lines = [",".join(r) for r in header]
        for number, row in enumerate(rows, start=1):
            row[0] = str(number)
            lines.append(",".join(row))
        (root / "annotation" / f"Sess{s:02d}_eval.csv").write_text(
            "\n".join(lines) + "\n", encoding="utf-8", newline=""
        )
    if manifest:
        with open(root / MANIFEST_NAME, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(listed[0]))
            writer.writeheader()
            writer.writerows(listed)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data_prep.demo",
        description="Write the synthetic demo corpus in KEMDy20's layout.",
    )
    ap.add_argument("--out", required=True, help="folder to write (created)")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--utterances-per-script", type=int, default=7)
    ap.add_argument(
        "--manifest",
        action="store_true",
        help=f"also list the corpus in OUT/{MANIFEST_NAME}, for `data_prep.prepare --manifest`",
    )
    args = ap.parse_args(argv)
    root = write_demo_corpus(
        args.out,
        sessions=args.sessions,
        seed=args.seed,
        utterances_per_script=args.utterances_per_script,
        manifest=args.manifest,
    )
    n = sum(1 for _ in (root / "wav").rglob("*.wav"))
    print(f"wrote demo corpus with {n} utterances in {args.sessions} sessions to {root}")
    if args.manifest:
        print(
            f"manifest: {root / MANIFEST_NAME}  (prepare it with: python -m data_prep.prepare "
            f"--manifest {root / MANIFEST_NAME} --labels {','.join(LABELS)} "
            f"--neutral-label {NEUTRAL} [--audio-model ID_OR_DIR --text-model ID_OR_DIR])"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
