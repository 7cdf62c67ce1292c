"""The KEMDy20 reader: real layout, cleaning rule, and every kind of fault reported."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from data_prep.audio import write_pcm16
from data_prep.demo import write_demo_corpus
from data_prep.kemdy20 import (
    COLUMNS,
    CorpusError,
    clean_transcript,
    format_fault_summary,
    parse_segment_id,
    read_corpus,
)
from data_prep.labels import canonical_label

# ---------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("그냥 오늘 집에 가자", "그냥 오늘 집에 가자"),
        ("c/ 오늘 n/ 회의 있어", "오늘 회의 있어"),
        ("N/ 그래서 u/ 뭐라고", "그래서 뭐라고"),
        ("l/ 음 b/ 그러니까", "음 그러니까"),
        ("c/n/오늘", "오늘"),
        ("그거* 있잖아", "그거 있잖아"),
        ("그+ 그래서 갔어", "그 그래서 갔어"),
        ("어/ 그게 음/ 아니야", "어 그게 음 아니야"),
        ("(이십)/(20) 살이야", "살이야"),
        ("나 (그러니까)/(그니까) 갔어", "나 갔어"),
        ("a (b (c) d) e", "a e"),
        ("  여러   칸의    공백  ", "여러 칸의 공백"),
        ("탭\t과\n줄바꿈", "탭 과 줄바꿈"),
        ("c/ n/ (음)", ""),
        ("+ * /", ""),
        ("KTX/ 타고 갔어", "KTX 타고 갔어"),  # capital letters of a word are not tags
        ("abc/ def", "abc def"),  # nor the last letter of a Latin word
        ("닫히지 않은 (괄호", "닫히지 않은 괄호"),
        ("2/3 정도", "2 3 정도"),
        ("", ""),
    ],
)
def test_clean_transcript(raw: str, clean: str) -> None:
    assert clean_transcript(raw) == clean


def test_disqust_is_disgust() -> None:
    assert canonical_label("disqust") == canonical_label("disgust") == "disgust"
    assert canonical_label(" Neutral ") == "neutral"
    assert canonical_label("joy") is None


def test_parse_segment_id() -> None:
    p = parse_segment_id("Sess07_script03_User014M_012")
    assert (p.session, p.script, p.speaker, p.gender, p.number) == (7, 3, "User014M", "M", 12)
    for bad in ("Sess7_script03_User014M_012", "Sess07_script03_User014X_012", "x", ""):
        assert parse_segment_id(bad) is None


# ---------------------------------------------------------------------------- demo corpus


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "KEMDy20_v1_1"
    write_demo_corpus(root, sessions=4, utterances_per_script=3, seed=3, empty_wavs=2)
    return root


def _csv_rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def test_reads_demo_corpus(small_demo) -> None:
    read = read_corpus(small_demo)
    u = read.utterances
    assert list(u.columns) == list(COLUMNS)
    # 4 sessions x 2 speakers x 6 scripts x 3 utterances, less the 2 empty wavs.
    assert len(u) == 144 - 2
    assert [f.kind for f in read.faults] == ["empty_wav", "empty_wav"]
    assert list(u["segment_id"]) == sorted(u["segment_id"])
    assert u["segment_id"].is_unique
    assert set(u["session"]) == {1, 2, 3, 4}
    assert set(u["speaker"]) == {f"User{i:03d}{'F' if i % 2 else 'M'}" for i in range(1, 9)}
    assert u["session"].dtype == np.int64 and u["multi_label"].dtype == bool

    # One known segment, checked against the raw files.
    rows = _csv_rows(small_demo / "annotation" / "Sess02_eval.csv")
    cells = rows[2]  # the first data row is line 3
    seg = cells[3]
    got = u.set_index("segment_id").loc[seg]
    parts = parse_segment_id(seg)
    assert got["session"] == 2 and got["script"] == parts.script == 1
    assert got["speaker"] == parts.speaker and got["gender"] == parts.speaker[-1]
    assert got["csv_file"] == "annotation/Sess02_eval.csv" and got["csv_row"] == 3
    assert got["valence"] == float(cells[5]) and got["arousal"] == float(cells[6])
    assert got["labels"] == ";".join(canonical_label(x) for x in cells[4].split(";"))
    txt = small_demo / "wav" / "Session02" / f"{seg}.txt"
    assert got["raw_text"] == txt.read_bytes().decode("cp949").strip()
    assert got["text"] == clean_transcript(got["raw_text"]) and got["text"]
    assert got["wav_path"] == str((small_demo / "wav" / "Session02" / f"{seg}.wav").resolve())


def test_tie_rows_keep_all_labels(small_demo) -> None:
    u = read_corpus(small_demo).utterances.set_index("segment_id")
    ties = 0
    for path in sorted((small_demo / "annotation").glob("*.csv")):
        for cells in _csv_rows(path)[2:]:
            if cells[3] not in u.index:
                continue
            row = u.loc[cells[3]]
            names = [canonical_label(x) for x in cells[4].split(";")]
            assert row["labels"] == ";".join(names)
            assert row["label"] == names[0]
            assert bool(row["multi_label"]) == (len(names) > 1)
            ties += len(names) > 1
    assert ties >= 4


# ---------------------------------------------------------------------------- faults

HEADER = [
    ["Numb", "Wav", " ", "Segment ID", "Total Evaluation", " ", " "] + ["Eval", " ", " "] * 10,
    [" ", "start", "end", " ", "Emotion", "Valence", "Arousal"] + ["Emotion", "V", "A"] * 10,
]


def _row(seg: str, emotion: str = "neutral", valence: str = "3.0", n: int = 37) -> list[str]:
    cells = ["1", "0.0", "1.0", seg, emotion, valence, "3.1"] + ["neutral", "3", "3"] * 10
    return cells[:n]


def _utterance(root, seg, *, text="오늘 회의 있어", wav="tone"):
    folder = root / "wav" / f"Session{int(seg[4:6]):02d}"
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        data = text if isinstance(text, bytes) else (text + "\n").encode("cp949")
        (folder / f"{seg}.txt").write_bytes(data)
    if wav == "tone":
        write_pcm16(folder / f"{seg}.wav", 0.3 * np.sin(np.arange(8000) * 0.1))
    elif wav == "zero_length":
        write_pcm16(folder / f"{seg}.wav", np.zeros(0))
    elif wav == "zeros":
        write_pcm16(folder / f"{seg}.wav", np.zeros(8000))


def _write_csv(root, session, rows):
    ann = root / "annotation"
    ann.mkdir(parents=True, exist_ok=True)
    lines = [",".join(r) for r in HEADER + rows]
    (ann / f"Sess{session:02d}_eval.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


S = "Sess01_script01_User001F_{:03d}"


@pytest.fixture
def faulty(tmp_path):
    """Session 1: line 3 is good, every later line holds one fault (line -> kind)."""
    root = tmp_path / "corpus"
    rows, expected = [], {}

    def add(kind, row, **utt):
        rows.append(row)
        if kind:
            expected[len(rows) + 2] = kind
        if utt.get("make", True):
            utt.pop("make", None)
            _utterance(root, row[3] if len(row) > 3 else S.format(99), **utt)

    add(None, _row(S.format(1)))
    add("missing_wav", _row(S.format(2)), wav=None)
    add("empty_wav", _row(S.format(3)), wav="zero_length")
    add("empty_wav", _row(S.format(4)), wav="zeros")
    add("missing_transcript", _row(S.format(5)), text=None)
    add("undecodable_transcript", _row(S.format(6)), text=b"\x80\x80 bad\n")
    add("empty_transcript", _row(S.format(7)), text="c/ n/ (음)")
    add("unknown_label", _row(S.format(8), emotion="joy"))
    add("malformed_row", _row(S.format(9), n=36))
    add("malformed_row", _row("Sess01_scrpt01_User001F_010"), make=False)
    add("malformed_row", _row(S.format(11), valence="n/a"))
    add("duplicate_segment", _row(S.format(1)), make=False)
    add(None, _row(S.format(12), emotion="happy;neutral"))
    add(None, _row(S.format(13), emotion="disqust"))
    _write_csv(root, 1, rows)
    return root, expected


def test_faults_are_reported_with_file_and_line(faulty) -> None:
    root, expected = faulty
    read = read_corpus(root)
    got = {f.row: f.kind for f in read.faults}
    assert got == expected
    assert all(f.file == "annotation/Sess01_eval.csv" for f in read.faults)
    assert {f.segment_id for f in read.faults if f.kind == "missing_wav"} == {S.format(2)}
    dup = next(f for f in read.faults if f.kind == "duplicate_segment")
    assert "annotation/Sess01_eval.csv:3" in dup.message
    # Faulty utterances are skipped; the good ones, tie and alias rows are kept.
    u = read.utterances.set_index("segment_id")
    assert list(u.index) == [S.format(1), S.format(12), S.format(13)]
    assert u.loc[S.format(12), "labels"] == "happy;neutral"
    assert u.loc[S.format(12), "label"] == "happy" and u.loc[S.format(12), "multi_label"]
    assert u.loc[S.format(13), "label"] == "disgust"
    assert not u.loc[S.format(1), "multi_label"]

    summary = format_fault_summary(read.faults)
    assert "malformed_row: 3" in summary and "empty_wav: 2" in summary
    assert "annotation/Sess01_eval.csv:4:" in summary


def test_strict_raises_with_file_and_line(faulty) -> None:
    root, _ = faulty
    with pytest.raises(CorpusError) as err:
        read_corpus(root, strict=True)
    msg = str(err.value)
    assert "annotation/Sess01_eval.csv:4: Sess01_script01_User001F_002 [missing_wav]" in msg
    assert "11 problem(s)" in msg and "and 1 more" in msg and "strict" in msg


def test_clean_corpus_reads_strict(tmp_path) -> None:
    _write_csv(tmp_path, 1, [_row(S.format(1))])
    _utterance(tmp_path, S.format(1), text="c/ 안녕 하세요")
    u = read_corpus(tmp_path, strict=True).utterances
    assert u.loc[0, "text"] == "안녕 하세요" and u.loc[0, "raw_text"] == "c/ 안녕 하세요"


def test_missing_header_row_is_reported(tmp_path) -> None:
    ann = tmp_path / "annotation"
    ann.mkdir()
    lines = [",".join(HEADER[0]), ",".join(_row(S.format(1)))]
    (ann / "Sess01_eval.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _utterance(tmp_path, S.format(1))
    read = read_corpus(tmp_path)
    assert [(f.kind, f.row) for f in read.faults] == [("malformed_file", 2)]
    assert len(read.utterances) == 1


def test_missing_annotation_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CorpusError, match="no 'annotation' folder"):
        read_corpus(tmp_path)
    (tmp_path / "annotation").mkdir()
    with pytest.raises(CorpusError, match="no SessNN_eval.csv"):
        read_corpus(tmp_path)


def test_bom_and_crlf_csv(tmp_path) -> None:
    ann = tmp_path / "annotation"
    ann.mkdir()
    lines = [",".join(r) for r in HEADER + [_row(S.format(1)), _row(S.format(2), "sad")]]
    (ann / "Sess01_eval.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    _utterance(tmp_path, S.format(1))
    _utterance(tmp_path, S.format(2))
    u = read_corpus(tmp_path, strict=True).utterances
    assert list(u["csv_row"]) == [3, 4] and list(u["label"]) == ["neutral", "sad"]
