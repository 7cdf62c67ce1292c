"""Read a KEMDy20 folder (the real one or the demo) into one table of usable utterances.

Layout read (see shared reference kemdy20-format.md):

    annotation/SessNN_eval.csv          two header rows, 37 columns, parsed by position
    wav/SessionSS/<segment>.wav         16 kHz mono PCM
    wav/SessionSS/<segment>.txt         cp949, one line, transcription tags

Every problem with an utterance becomes a ``Fault`` naming the CSV file and its 1-based line;
by default such utterances are skipped and the faults returned, ``strict=True`` raises.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data_prep.audio import wav_problem
from data_prep.labels import LABELS, NEUTRAL, canonical_label

N_COLUMNS = 37
N_HEADER_ROWS = 2
COL_SEGMENT, COL_EMOTION, COL_VALENCE, COL_AROUSAL = 3, 4, 5, 6
TRANSCRIPT_ENCODING = "cp949"

COLUMNS = (
    "segment_id",
    "session",
    "script",
    "speaker",
    "gender",
    "label",
    "labels",
    "multi_label",
    "text",
    "raw_text",
    "wav_path",
    "valence",
    "arousal",
    "csv_file",
    "csv_row",
)

FAULT_KINDS = (
    "malformed_file",
    "malformed_row",
    "duplicate_segment",
    "unknown_label",
    "missing_transcript",
    "undecodable_transcript",
    "empty_transcript",
    "missing_wav",
    "unreadable_wav",
    "empty_wav",
)

SEGMENT_RE = re.compile(r"^Sess(\d{2})_script(\d{2})_(User(\d{3})([MF]))_(\d{3})$")
_CSV_NAME_RE = re.compile(r"^Sess(\d{2})_eval\.csv$")

# Transcription tags: a tag letter followed by "/" (c/ continuous, n/ N/ noise, u/
# unintelligible, l/ "um", b/ breath). The lookbehind keeps the letter of a Latin word
# ("abc/") from being read as a tag; the stray "/" is removed with the other markers.
_TAG_RE = re.compile(r"(?<![A-Za-z])[cnNulb]/")
# Alternative readings "( ... )" are dropped whole, innermost first (handles nesting).
_PAREN_RE = re.compile(r"\([^()]*\)")
# Marker characters with no lexical content: * partly heard, + stutter, / filler.
_MARK_RE = re.compile(r"[*+/]")
_SPACE_RE = re.compile(r"\s+")


def clean_transcript(text: str) -> str:
    """The seed's cleaning rule: drop ``x/`` tags and ``( ... )`` groups, collapse spaces.

    Stray ``*``, ``+`` and ``/`` markers (and the ``/`` between alternative readings) go
    too; an unmatched parenthesis is left as a bare character and removed.
    """
    out = text
    while True:
        stripped = _PAREN_RE.sub(" ", out)
        if stripped == out:
            break
        out = stripped
    out = _TAG_RE.sub(" ", out)
    out = _MARK_RE.sub(" ", out)
    out = out.replace("(", " ").replace(")", " ")
    return _SPACE_RE.sub(" ", out).strip()


@dataclass(frozen=True)
class Fault:
    """One problem found while reading: CSV file (relative to the corpus root), 1-based line."""

    file: str
    row: int
    segment_id: str
    kind: str
    message: str

    def __str__(self) -> str:
        seg = f" {self.segment_id}" if self.segment_id else ""
        return f"{self.file}:{self.row}:{seg} [{self.kind}] {self.message}"


@dataclass
class CorpusRead:
    """The usable utterances (sorted by segment_id) and every fault met while reading.

    ``label_names`` is the class order (label_id = position), ``neutral_label`` the class the
    seed's micro-F1 leaves out (None: that metric is not computed). A manifest corpus
    (:mod:`data_prep.manifest`) also names the files its contents come from (``files``, for
    the store key), its reader options (``options``, part of the key) and its session names
    (``session_names``: the integer session of the table -> the name in the manifest).
    """

    root: Path
    utterances: pd.DataFrame
    faults: list[Fault] = field(default_factory=list)
    label_names: tuple[str, ...] = LABELS
    neutral_label: str | None = NEUTRAL
    kind: str = "kemdy20"  # "kemdy20" | "manifest"
    source: Path | None = None  # the manifest file (None for a KEMDy20 folder)
    files: list[Path] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    session_names: dict[int, str] = field(default_factory=dict)


class CorpusError(RuntimeError):
    """The corpus folder is unusable, or (strict mode) some utterances are faulty."""


@dataclass(frozen=True)
class SegmentId:
    session: int
    script: int
    speaker: str
    gender: str
    number: int


def parse_segment_id(segment_id: str) -> SegmentId | None:
    """``Sess01_script02_User001F_003`` -> its parts, or None if it does not match."""
    m = SEGMENT_RE.match(segment_id)
    if not m:
        return None
    return SegmentId(
        session=int(m.group(1)),
        script=int(m.group(2)),
        speaker=m.group(3),
        gender=m.group(5),
        number=int(m.group(6)),
    )


def segment_paths(root: Path, segment_id: str, session: int) -> tuple[Path, Path]:
    """(wav, txt) paths of a segment, built straight from its ID as KEMDy20 v1.1 does."""
    folder = root / "wav" / f"Session{session:02d}"
    return folder / f"{segment_id}.wav", folder / f"{segment_id}.txt"


def format_fault_summary(faults: list[Fault], *, examples: int = 3) -> str:
    """Counts per kind and the first few examples of each, for the command line."""
    if not faults:
        return "no faults"
    counts = Counter(f.kind for f in faults)
    lines = [f"{len(faults)} utterance problem(s):"]
    for kind in sorted(counts, key=lambda k: (-counts[k], k)):
        lines.append(f"  {kind}: {counts[kind]}")
        for f in [f for f in faults if f.kind == kind][:examples]:
            lines.append(f"    {f}")
    return "\n".join(lines)


def strict_message(faults: list[Fault], where: str | os.PathLike[str]) -> str:
    """The error of a strict read: the first ten faults and what to do."""
    shown = faults[:10]
    more = len(faults) - len(shown)
    return (
        f"{len(faults)} problem(s) reading {where}:\n"
        + "\n".join(f"  {f}" for f in shown)
        + (f"\n  ... and {more} more" if more else "")
        + "\nFix or remove these utterances, or read without strict mode to skip them."
    )


def read_text_file(path: Path) -> str:
    """A text file as UTF-8 (with or without BOM), else cp949 (KEMDy20's encoding)."""
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "cp949"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8/cp949", raw, 0, 1, "neither UTF-8 nor cp949")


def _to_float(cell: str) -> float | None:
    try:
        value = float(cell.strip())
    except ValueError:
        return None
    return value if value == value else None  # NaN is not a rating


class _Reader:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults: list[Fault] = []
        self.rows: list[dict] = []
        self.seen: dict[str, str] = {}

    def fault(self, file: str, row: int, seg: str, kind: str, message: str) -> None:
        self.faults.append(Fault(file, row, seg, kind, message))

    def read_csv(self, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        try:
            text = read_text_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            self.fault(rel, 0, "", "malformed_file", f"cannot read annotation file: {exc}")
            return
        reader = csv.reader(io.StringIO(text, newline=""))
        headers = 0
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line (trailing newlines)
            if headers < N_HEADER_ROWS:
                looks_like_data = len(cells) > COL_SEGMENT and parse_segment_id(
                    cells[COL_SEGMENT].strip()
                )
                if not looks_like_data:
                    headers += 1
                    continue
                self.fault(
                    rel,
                    line,
                    "",
                    "malformed_file",
                    f"expected {N_HEADER_ROWS} header rows, found {headers} before the first "
                    "data row; data rows are parsed anyway",
                )
                headers = N_HEADER_ROWS
            self.read_row(rel, line, cells)

    def read_row(self, rel: str, line: int, cells: list[str]) -> None:
        if len(cells) != N_COLUMNS:
            seg = cells[COL_SEGMENT].strip() if len(cells) > COL_SEGMENT else ""
            self.fault(
                rel, line, seg, "malformed_row", f"{len(cells)} columns, expected {N_COLUMNS}"
            )
            return
        seg = cells[COL_SEGMENT].strip()
        parts = parse_segment_id(seg)
        if parts is None:
            self.fault(
                rel,
                line,
                seg,
                "malformed_row",
                f"bad Segment ID {seg!r} (expected Sess01_script01_User001F_001)",
            )
            return
        valence = _to_float(cells[COL_VALENCE])
        arousal = _to_float(cells[COL_AROUSAL])
        bad = [
            f"{name} {cells[col]!r}"
            for name, col, v in (
                ("valence", COL_VALENCE, valence),
                ("arousal", COL_AROUSAL, arousal),
            )
            if v is None
        ]
        if bad:
            self.fault(rel, line, seg, "malformed_row", "non-numeric total " + ", ".join(bad))
            return
        if seg in self.seen:
            self.fault(
                rel, line, seg, "duplicate_segment", f"segment already listed at {self.seen[seg]}"
            )
            return
        self.seen[seg] = f"{rel}:{line}"

        ok = True
        raw_label = cells[COL_EMOTION].strip()
        names = [n for n in raw_label.split(";") if n.strip()]
        labels = [canonical_label(n) for n in names]
        if not names or any(lab is None for lab in labels):
            unknown = [n for n, lab in zip(names, labels, strict=True) if lab is None]
            self.fault(
                rel,
                line,
                seg,
                "unknown_label",
                f"unknown emotion {unknown or raw_label!r} in {raw_label!r}",
            )
            ok = False
        labels = list(dict.fromkeys(labels))  # de-duplicate, keep order

        wav, txt = segment_paths(self.root, seg, parts.session)
        raw_text = text = ""
        if not txt.is_file():
            self.fault(rel, line, seg, "missing_transcript", f"transcript not found: {txt}")
            ok = False
        else:
            try:
                raw_text = txt.read_bytes().decode(TRANSCRIPT_ENCODING)
            except UnicodeDecodeError as exc:
                self.fault(
                    rel,
                    line,
                    seg,
                    "undecodable_transcript",
                    f"{txt} is not {TRANSCRIPT_ENCODING}: {exc}",
                )
                ok = False
            else:
                raw_text = " ".join(raw_text.splitlines()).strip()
                text = clean_transcript(raw_text)
                if not text:
                    self.fault(
                        rel,
                        line,
                        seg,
                        "empty_transcript",
                        f"transcript empty after removing tags: {txt} ({raw_text!r})",
                    )
                    ok = False
        problem = wav_problem(wav)
        if problem is not None:
            self.fault(rel, line, seg, problem[0], problem[1])
            ok = False
        if not ok:
            return
        self.rows.append(
            {
                "segment_id": seg,
                "session": parts.session,
                "script": parts.script,
                "speaker": parts.speaker,
                "gender": parts.gender,
                "label": labels[0],
                "labels": ";".join(labels),
                "multi_label": len(labels) > 1,
                "text": text,
                "raw_text": raw_text,
                "wav_path": str(wav),
                "valence": valence,
                "arousal": arousal,
                "csv_file": rel,
                "csv_row": line,
            }
        )


def utterance_table(rows: list[dict[str, Any]] | list[tuple]) -> pd.DataFrame:
    """The readers' rows as the utterance table: COLUMNS, their dtypes, in segment_id order."""
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    table = table.astype(
        {
            "session": "int64",
            "script": "int64",
            "multi_label": "bool",
            "valence": "float64",
            "arousal": "float64",
            "csv_row": "int64",
        }
    )
    table = table.sort_values("segment_id", kind="stable").reset_index(drop=True)
    return table


def read_corpus(root: str | os.PathLike[str], *, strict: bool = False) -> CorpusRead:
    """Read a KEMDy20 folder; see the module docstring. Raises ``CorpusError`` if unusable."""
    base = Path(root).expanduser().resolve()
    ann = base / "annotation"
    if not ann.is_dir():
        raise CorpusError(
            f"{base} has no 'annotation' folder: point to the KEMDy20 root (the folder holding "
            "annotation/ and wav/, usually named KEMDy20_v1_1), or write a demo corpus with "
            "`python -m data_prep.demo --out DIR`."
        )
    csvs = sorted(p for p in ann.iterdir() if _CSV_NAME_RE.match(p.name))
    if not csvs:
        raise CorpusError(f"{ann} holds no SessNN_eval.csv files")
    reader = _Reader(base)
    for path in csvs:
        reader.read_csv(path)
    if strict and reader.faults:
        raise CorpusError(strict_message(reader.faults, base))
    table = utterance_table(reader.rows)
    return CorpusRead(root=base, utterances=table, faults=reader.faults)
