"""Read any speech-and-text emotion corpus listed in a CSV or JSONL manifest.

One utterance per row (CSV: a header row, then one row per line; JSONL: one JSON object per
line). Roles and their default column names (``--column ROLE=NAME`` renames one):

    audio         audio file, relative to the manifest's folder or absolute (required);
                  any sample rate or channel count soundfile reads (converted at extraction)
    text          the transcript itself        } one of the two is required; ``text`` wins
    text_path     a path to a transcript file  } when a row has both (UTF-8 or cp949)
    label         the emotion class (required)
    session       the unit of the session-disjoint splits, e.g. a dialogue id (required)
    speaker       who speaks (required)
    utterance_id  optional; ``row000042`` (the 1-based line) when absent
    valence, arousal   optional numbers

The result is the KEMDy20 reader's: a :class:`~data_prep.kemdy20.CorpusRead` with the same
table columns, and every problem a :class:`~data_prep.kemdy20.Fault` naming the manifest file
and its 1-based line. Transcripts are taken as written (KEMDy20's tag cleaning is KEMDy20's).

Classes come from the data: ``labels`` (``--labels``) fixes their order and rejects any other
label; without it they are the usable rows' labels in sorted order, so the order never
depends on row order. ``neutral_label`` names the class the seed's micro-F1 leaves out; with
none that metric is not computed. Sessions named by integers keep them; other names are
numbered 1..n in sorted order, and the store records the names (``session_names``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from data_prep.audio import wav_problem
from data_prep.kemdy20 import (
    CorpusError,
    CorpusRead,
    Fault,
    read_text_file,
    strict_message,
    utterance_table,
)

DEFAULT_COLUMNS: dict[str, str] = {
    "audio": "audio",
    "text": "text",
    "text_path": "text_path",
    "label": "label",
    "session": "session",
    "speaker": "speaker",
    "utterance_id": "utterance_id",
    "valence": "valence",
    "arousal": "arousal",
}
REQUIRED = ("audio", "label", "session", "speaker")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Beyond the kinds the KEMDy20 reader reports (kemdy20.FAULT_KINDS), which keep their names.
MANIFEST_FAULT_KINDS = ("missing_column", "single_utterance_session")
_INT_RE = re.compile(r"^[+-]?\d+$")


def parse_columns(items: list[str] | None) -> dict[str, str]:
    """``["label=emotion", ...]`` -> the full role -> column map; raises ``ValueError``."""
    columns = dict(DEFAULT_COLUMNS)
    for item in items or []:
        role, sep, name = item.partition("=")
        role, name = role.strip(), name.strip()
        if not sep or not name:
            raise ValueError(f"--column {item!r}: expected ROLE=NAME, e.g. label=emotion")
        if role not in DEFAULT_COLUMNS:
            raise ValueError(
                f"--column {item!r}: unknown role {role!r}; roles: {', '.join(DEFAULT_COLUMNS)}"
            )
        columns[role] = name
    return columns


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    """``"neutral,happy"`` -> ("neutral", "happy"); raises ``ValueError`` on empties/repeats."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names):
        raise ValueError(f"--labels {text!r}: expected comma-separated class names")
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(f"--labels {text!r}: {', '.join(repeated)} given more than once")
    return tuple(names)


def _cell(value: Any) -> str | None:
    """A cell as stripped text; None when absent or empty (JSON null counts as absent)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.strip()
    return text or None


def _rows(path: Path, fmt: str, rel: str, faults: list[Fault]) -> tuple[list[str], list]:
    """(columns seen, [(line, {column: value})]); malformed lines become faults."""
    try:
        text = read_text_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read manifest {path}: {exc}") from exc
    rows: list[tuple[int, dict[str, Any]]] = []

    def malformed(line: int, message: str) -> Fault:  # no segment id: the row did not parse
        return Fault(rel, line, "", "malformed_row", message)

    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header: list[str] | None = None
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                continue
            line = reader.line_num
            if len(cells) > len(header):
                faults.append(malformed(line, f"{len(cells)} cells, the header has {len(header)}"))
                continue
            rows.append((line, dict(zip(header, cells, strict=False))))
        if header is None:
            raise CorpusError(f"manifest {path} is empty (no header row)")
        return header, rows
    seen: dict[str, None] = {}
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            faults.append(malformed(line, f"not JSON: {exc}"))
            continue
        if not isinstance(obj, dict):
            faults.append(malformed(line, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        seen.update(dict.fromkeys(obj))
        rows.append((line, obj))
    if not rows and not faults:
        raise CorpusError(f"manifest {path} lists no utterances")
    return list(seen), rows


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def read_manifest(
    path: str | os.PathLike[str],
    *,
    columns: dict[str, str] | None = None,
    labels: tuple[str, ...] | list[str] | None = None,
    neutral_label: str | None = None,
    strict: bool = False,
) -> CorpusRead:
    """Read a manifest; see the module docstring. ``CorpusError`` for an unusable manifest
    (a missing required column, an unknown ``neutral_label``), or any fault when ``strict``."""
    src = Path(path).expanduser().resolve()
    if not src.is_file():
        raise CorpusError(f"manifest {src} does not exist")
    fmt = SUFFIXES.get(src.suffix.lower())
    if fmt is None:
        raise CorpusError(
            f"manifest {src}: unknown format {src.suffix!r}; use .csv or .jsonl "
            f"({', '.join(SUFFIXES)})"
        )
    cols = dict(DEFAULT_COLUMNS) if columns is None else {**DEFAULT_COLUMNS, **columns}
    label_set = tuple(labels) if labels is not None else None
    base, rel = src.parent, src.name
    faults: list[Fault] = []
    present, rows = _rows(src, fmt, rel, faults)

    # A required column absent from the whole file is a naming mistake, not a row's fault.
    absent = [r for r in REQUIRED if cols[r] not in present]
    if cols["text"] not in present and cols["text_path"] not in present:
        absent.append(f"text (or text_path: {cols['text_path']!r})")
    if absent and rows:
        names = ", ".join(f"{r} (column {cols[r]!r})" if r in cols else r for r in absent)
        raise CorpusError(
            f"{src}: no column for {names}; columns: {', '.join(present) or 'none'}. "
            "Name them with `python -m data_prep.prepare --manifest FILE --column ROLE=NAME` "
            "(e.g. --column label=emotion)"
        )

    kept: list[dict[str, Any]] = []
    files: dict[Path, None] = {src: None}
    first_line: dict[str, int] = {}
    for line, raw in rows:
        cell = {role: _cell(raw.get(name)) for role, name in cols.items()}
        seg = cell["utterance_id"] or f"row{line:06d}"

        def fault(kind: str, message: str, seg: str = seg, line: int = line) -> None:
            faults.append(Fault(rel, line, seg, kind, message))

        missing = [f"{r} ({cols[r]!r})" for r in REQUIRED if cell[r] is None]
        # A text cell that is there but empty is an empty transcript, not a missing column.
        has_text = any(raw.get(cols[r]) is not None for r in ("text", "text_path"))
        if not has_text:
            missing.append(f"text ({cols['text']!r} or {cols['text_path']!r})")
        if missing:
            fault("missing_column", f"no value for {', '.join(missing)}")
            continue
        if seg in first_line:
            fault("duplicate_segment", f"utterance id already listed at {rel}:{first_line[seg]}")
            continue
        first_line[seg] = line
        ratings: dict[str, float] = {}
        bad = []
        for role in ("valence", "arousal"):
            value = cell[role]
            try:
                ratings[role] = float(value) if value is not None else float("nan")
            except ValueError:
                bad.append(f"{role} {value!r}")
        if bad:
            fault("malformed_row", "non-numeric " + ", ".join(bad))
            continue

        ok = True
        label = cell["label"]
        if label_set is not None and label not in label_set:
            fault("unknown_label", f"label {label!r} is not one of --labels {','.join(label_set)}")
            ok = False
        if cell["text"] is not None or cell["text_path"] is None:
            raw_text = cell["text"] or ""
        else:
            txt = _resolve(base, cell["text_path"])
            raw_text = ""
            if not txt.is_file():
                fault("missing_transcript", f"transcript not found: {txt}")
                ok = False
            else:
                files[txt] = None
                try:
                    raw_text = read_text_file(txt)
                except (OSError, UnicodeDecodeError) as exc:
                    fault("undecodable_transcript", f"{txt} is neither UTF-8 nor cp949: {exc}")
                    ok = False
        text = " ".join(raw_text.split())
        if ok and not text:
            fault("empty_transcript", "transcript is empty")
            ok = False
        audio = _resolve(base, cell["audio"])
        if audio.is_file():
            files[audio] = None
        problem = wav_problem(audio)
        if problem is not None:
            fault(problem[0], problem[1])
            ok = False
        if not ok:
            continue
        kept.append(
            {
                "segment_id": seg,
                "session_name": cell["session"],
                "script": 0,
                "speaker": cell["speaker"],
                "gender": "",
                "label": label,
                "labels": label,
                "multi_label": False,
                "text": text,
                "raw_text": raw_text,
                "wav_path": str(audio.resolve()),
                "valence": ratings["valence"],
                "arousal": ratings["arousal"],
                "csv_file": rel,
                "csv_row": line,
            }
        )

    # A session of one utterance is most often a wrong session column (an utterance id).
    sizes = Counter(r["session_name"] for r in kept)
    usable = []
    for r in kept:
        if sizes[r["session_name"]] == 1:
            faults.append(
                Fault(
                    rel,
                    r["csv_row"],
                    r["segment_id"],
                    "single_utterance_session",
                    f"session {r['session_name']!r} has no other usable utterance; "
                    "a session needs two or more (check the session column)",
                )
            )
        else:
            usable.append(r)
    faults.sort(key=lambda f: f.row)
    if strict and faults:
        raise CorpusError(strict_message(faults, src))

    names = sorted({r["session_name"] for r in usable})
    if all(_INT_RE.match(n) for n in names):
        number = {n: int(n) for n in names}
    else:
        number = {n: i for i, n in enumerate(names, start=1)}
    for r in usable:
        r["session"] = number[r.pop("session_name")]
    label_names = (
        label_set if label_set is not None else tuple(sorted({r["label"] for r in usable}))
    )
    if neutral_label is not None and neutral_label not in label_names:
        raise CorpusError(
            f"--neutral-label {neutral_label!r} is not a class of {src} "
            f"(classes: {', '.join(label_names) or 'none'})"
        )
    table = utterance_table(usable)
    return CorpusRead(
        root=base,
        utterances=table,
        faults=faults,
        label_names=label_names,
        neutral_label=neutral_label,
        kind="manifest",
        source=src,
        files=list(files),
        options={
            "columns": cols,
            "labels": list(label_set) if label_set else None,
            "neutral_label": neutral_label,
        },
        session_names={i: n for n, i in number.items()},
    )
