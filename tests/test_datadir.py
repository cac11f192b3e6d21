"""Data dirs: round trip, every validation error with file and line, combine, subset, split by speaker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from asr_kd.data.datadir import (
    DataDir,
    Segment,
    combine_data_dirs,
    read_data_dir,
    split_by_speaker,
    write_data_dir,
)
from asr_kd.errors import DataDirError


def make_dir(root: Path, files: dict[str, str]) -> Path:
    """Write raw file contents (exactly as given) into a new data dir."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_text(content, encoding="utf-8")
    return root


def basic(tmp_path: Path, n: int = 3, speakers: int = 1) -> dict[str, str]:
    """A valid labeled dir's files: utterances u1..un of speakers s1..s<speakers>, audio files absent."""
    utts = [f"u{i}" for i in range(1, n + 1)]
    spk = {u: f"s{i % speakers + 1}" for i, u in enumerate(utts)}
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(spk[u], []).append(u)
    return {
        "wav.scp": "".join(f"{u} {tmp_path}/{u}.wav\n" for u in utts),
        "text": "".join(f"{u} hello world {u}\n" for u in utts),
        "utt2spk": "".join(f"{u} {spk[u]}\n" for u in utts),
        "spk2utt": "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())),
    }


def expect_error(path: Path, file: str, line: int | None, pattern: str) -> DataDirError:
    with pytest.raises(DataDirError) as info:
        read_data_dir(path)
    msg = str(info.value)
    where = f"{path / file}:{line}: " if line is not None else f"{path / file}: "
    assert msg.startswith(where), msg
    assert re.search(pattern, msg), msg
    assert info.value.line == line
    return info.value


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_with_segments_durations_and_extra_files(tmp_path):
    data = DataDir(
        wav_scp={"recA": "/audio/a.flac", "recB": "/audio/b.wav"},
        utt2spk={"spk1-a1": "spk1", "spk1-a2": "spk1", "spk2-b1": "spk2"},
        segments={"spk1-a1": Segment("recA", 0.0, 1.25), "spk1-a2": Segment("recA", 1.25, 3.5),
                  "spk2-b1": Segment("recB", 0.5, 2.0)},
        text={"spk1-a1": "the cat", "spk1-a2": "sat on", "spk2-b1": "the mat"},
        utt2dur={"spk1-a1": 1.25, "spk1-a2": 2.25, "spk2-b1": 1.5},
        extra={"text.ref": {"spk1-a1": "The Cat", "spk1-a2": "sat on", "spk2-b1": "the mat."}},
    )
    out = write_data_dir(data, tmp_path / "d")
    assert (out / "spk2utt").read_text() == "spk1 spk1-a1 spk1-a2\nspk2 spk2-b1\n"
    back = read_data_dir(out)
    assert back.wav_scp == data.wav_scp and back.utt2spk == data.utt2spk
    assert back.segments == data.segments and back.text == data.text and back.utt2dur == data.utt2dur
    assert back.extra == data.extra
    assert back.utt_ids == ["spk1-a1", "spk1-a2", "spk2-b1"]
    src = back.source("spk1-a2")
    assert (src.path, src.start, src.end) == ("/audio/a.flac", 1.25, 3.5)
    assert back.total_seconds() == pytest.approx(5.0)


def test_unlabeled_dir_has_no_text(tmp_path):
    files = basic(tmp_path)
    del files["text"]
    data = read_data_dir(make_dir(tmp_path / "d", files))
    assert not data.has_text and len(data) == 3


# ------------------------------------------------------------------------------------------ errors


def test_duplicate_id(tmp_path):
    files = basic(tmp_path)
    files["utt2spk"] = "u1 s1\nu2 s1\nu2 s1\nu3 s1\n"
    expect_error(make_dir(tmp_path / "d", files), "utt2spk", 3, r"duplicate id 'u2' \(first on line 2\)")


def test_unsorted(tmp_path):
    files = basic(tmp_path)
    files["wav.scp"] = f"u1 {tmp_path}/u1.wav\nu3 {tmp_path}/u3.wav\nu2 {tmp_path}/u2.wav\n"
    expect_error(make_dir(tmp_path / "d", files), "wav.scp", 3, r"not sorted: 'u2' comes after 'u3'.*LC_ALL=C sort")


def test_missing_audio_only_with_check_audio(tmp_path, write_wav):
    files = basic(tmp_path)
    d = make_dir(tmp_path / "d", files)
    write_wav(tmp_path / "u1.wav")
    write_wav(tmp_path / "u3.wav")
    assert len(read_data_dir(d)) == 3  # not checked by default
    with pytest.raises(DataDirError) as info:
        read_data_dir(d, check_audio=True)
    assert str(info.value).startswith(f"{d / 'wav.scp'}:2: ")
    assert "audio file of 'u2' not found" in str(info.value)


def test_text_utterance_absent_from_wav_scp(tmp_path):
    files = basic(tmp_path)
    files["text"] = "u1 a\nu2 b\nu25 c\nu3 d\n"
    expect_error(make_dir(tmp_path / "d", files), "text", 3, r"utterance 'u25' is absent from wav.scp")


def test_missing_transcript(tmp_path):
    files = basic(tmp_path)
    files["text"] = "u1 a\nu3 c\n"
    expect_error(make_dir(tmp_path / "d", files), "text", None, r"1 utterance\(s\) of wav.scp have no transcript, e.g. \['u2'\]")


def test_non_utf8_byte(tmp_path):
    files = basic(tmp_path)
    d = make_dir(tmp_path / "d", files)
    (d / "text").write_bytes(b"u1 hello\nu2 caf\xe9\nu3 x\n")
    expect_error(d, "text", 2, r"not valid UTF-8 \(byte 6\)")


def test_empty_transcript(tmp_path):
    files = basic(tmp_path)
    files["text"] = "u1 a\nu2   \nu3 c\n"
    expect_error(make_dir(tmp_path / "d", files), "text", 2, r"utterance 'u2' has an empty transcript")


def test_empty_line(tmp_path):
    files = basic(tmp_path)
    files["utt2spk"] = "u1 s1\n\nu2 s1\nu3 s1\n"
    expect_error(make_dir(tmp_path / "d", files), "utt2spk", 2, r"empty line")


def test_wrong_field_count(tmp_path):
    files = basic(tmp_path)
    files["utt2spk"] = "u1 s1\nu2 s1 extra\nu3 s1\n"
    expect_error(make_dir(tmp_path / "d", files), "utt2spk", 2, r"\(2 fields\), found 3 fields")


def test_wav_scp_path_with_spaces(tmp_path):
    files = basic(tmp_path)
    files["wav.scp"] = "u1 /a/u1.wav\nu2 /a/my file.wav\nu3 /a/u3.wav\n"
    expect_error(make_dir(tmp_path / "d", files), "wav.scp", 2, r"path contains spaces")


def segmented(tmp_path: Path, segments: str) -> Path:
    return make_dir(tmp_path / "d", {
        "wav.scp": f"recA {tmp_path}/a.wav\n",
        "segments": segments,
        "utt2spk": "a1 s1\na2 s1\n",
    })


def test_segment_end_not_after_start(tmp_path):
    d = segmented(tmp_path, "a1 recA 0.0 1.0\na2 recA 2.0 2.0\n")
    expect_error(d, "segments", 2, r"segment 'a2': need 0 <= start < end, got start=2.0 end=2.0")


def test_segment_unknown_recording(tmp_path):
    d = segmented(tmp_path, "a1 recA 0.0 1.0\na2 recB 1.0 2.0\n")
    expect_error(d, "segments", 2, r"recording 'recB' is absent from wav.scp")


def test_segment_times_not_numbers(tmp_path):
    d = segmented(tmp_path, "a1 recA 0.0 1.0\na2 recA one two\n")
    expect_error(d, "segments", 2, r"start/end must be seconds")


def test_utt2spk_spk2utt_mismatch(tmp_path):
    files = basic(tmp_path, speakers=2)  # s1: u1 u3, s2: u2
    files["spk2utt"] = "s1 u1\ns2 u2 u3\n"
    expect_error(make_dir(tmp_path / "d", files), "spk2utt", 1, r"speaker 's1' does not match utt2spk")


def test_utt2spk_missing_an_utterance(tmp_path):
    files = basic(tmp_path)
    files["utt2spk"] = "u1 s1\nu2 s1\n"
    files.pop("spk2utt")
    expect_error(make_dir(tmp_path / "d", files), "utt2spk", None, r"have no line here, e.g. \['u3'\]")


def test_bad_utt2dur(tmp_path):
    files = basic(tmp_path)
    files["utt2dur"] = "u1 1.0\nu2 0\nu3 2.0\n"
    expect_error(make_dir(tmp_path / "d", files), "utt2dur", 2, r"duration must be > 0")


def test_pipe_refused_by_default(tmp_path):
    files = basic(tmp_path)
    files["wav.scp"] = f"u1 {tmp_path}/u1.wav\nu2 sox {tmp_path}/x.wav -t wav - |\nu3 {tmp_path}/u3.wav\n"
    d = make_dir(tmp_path / "d", files)
    expect_error(d, "wav.scp", 2, r"recording 'u2' is a pipe command.*--allow-pipes")
    data = read_data_dir(d, allow_pipes=True)
    assert data.source("u2").is_pipe


def test_missing_dir_and_wav_scp(tmp_path):
    with pytest.raises(DataDirError, match="data dir not found"):
        read_data_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError, match="wav.scp is missing"):
        read_data_dir(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ combine / subset / split


def many_speakers(tmp_path: Path, name: str, speakers: int, per_speaker: int, prefix: str = "") -> DataDir:
    wav, u2s, text = {}, {}, {}
    for s in range(speakers):
        for k in range(per_speaker):
            utt = f"{prefix}spk{s:03d}-{k:02d}"
            wav[utt] = f"/audio/{utt}.wav"
            u2s[utt] = f"{prefix}spk{s:03d}"
            text[utt] = f"word{k}"
    write_data_dir(DataDir(wav_scp=wav, utt2spk=u2s, text=text), tmp_path / name)
    return read_data_dir(tmp_path / name)


def test_combine_and_duplicate_ids_refused(tmp_path):
    a = many_speakers(tmp_path, "a", 2, 3, prefix="a")
    b = many_speakers(tmp_path, "b", 3, 2, prefix="b")
    both = combine_data_dirs([a, b])
    assert both.utt_ids == sorted(a.utt_ids + b.utt_ids)
    assert both.text is not None and len(both.text) == 12
    write_data_dir(both, tmp_path / "ab")
    assert len(read_data_dir(tmp_path / "ab")) == 12
    with pytest.raises(DataDirError, match=r"utterance 'aspk000-00' occurs in more than one data dir"):
        combine_data_dirs([a, a])


def test_combine_drops_text_only_if_a_dir_is_unlabeled(tmp_path):
    a = many_speakers(tmp_path, "a", 1, 2, prefix="a")
    b = many_speakers(tmp_path, "b", 1, 2, prefix="b")
    b.text = None
    assert combine_data_dirs([a, b]).text is None


def test_subset_keeps_everything_consistent(tmp_path):
    a = many_speakers(tmp_path, "a", 3, 4)
    sub = a.subset(["spk001-02", "spk000-00", "spk001-03"])
    assert sub.utt_ids == ["spk000-00", "spk001-02", "spk001-03"]
    assert sub.spk2utt == {"spk000": ["spk000-00"], "spk001": ["spk001-02", "spk001-03"]}
    assert set(sub.text) == set(sub.utt_ids) == set(sub.wav_scp)
    with pytest.raises(DataDirError, match=r"1 utterance\(s\) not in the data dir, e.g. \['nope'\]"):
        a.subset(["spk000-00", "nope"])


def test_subset_with_segments_keeps_only_needed_recordings(tmp_path):
    data = DataDir(wav_scp={"r1": "/a/1.wav", "r2": "/a/2.wav"}, utt2spk={"x1": "s", "x2": "s", "y1": "t"},
                   segments={"x1": Segment("r1", 0, 1), "x2": Segment("r1", 1, 2), "y1": Segment("r2", 0, 1)})
    sub = data.subset(["x2"])
    assert sub.wav_scp == {"r1": "/a/1.wav"} and list(sub.segments) == ["x2"]


def test_split_by_speaker(tmp_path):
    data = many_speakers(tmp_path, "a", 40, 5)
    parts = split_by_speaker(data, [0.8, 0.1, 0.1], seed=3)
    speakers = [set(p.spk2utt) for p in parts]
    assert not (speakers[0] & speakers[1]) and not (speakers[0] & speakers[2]) and not (speakers[1] & speakers[2])
    assert sum(len(p) for p in parts) == len(data)
    assert set().union(*[set(p.utt_ids) for p in parts]) == set(data.utt_ids)
    sizes = [len(p) for p in parts]
    for size, frac in zip(sizes, [0.8, 0.1, 0.1]):
        assert abs(size - frac * len(data)) <= 5  # within one speaker (5 utterances) of the target
    again = split_by_speaker(data, [0.8, 0.1, 0.1], seed=3)
    assert [p.utt_ids for p in again] == [p.utt_ids for p in parts]
    other = split_by_speaker(data, [0.8, 0.1, 0.1], seed=4)
    assert [p.utt_ids for p in other] != [p.utt_ids for p in parts]


def test_split_needs_enough_speakers(tmp_path):
    data = many_speakers(tmp_path, "a", 2, 5)
    with pytest.raises(DataDirError, match="2 speaker"):
        split_by_speaker(data, [0.5, 0.3, 0.2])
