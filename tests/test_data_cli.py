"""``asr-kd data``: validate, combine, subset, split, cmvn through ``asr_kd.cli.main``."""

from __future__ import annotations

import json

import pytest

from asr_kd.cli import main
from asr_kd.data.datadir import DataDir, Segment, read_data_dir, write_data_dir


@pytest.fixture
def data_dir(tmp_path, write_wav):
    """6 utterances (0.5-1.0 s) of 3 speakers, labeled, real wav files, no utt2dur."""
    wav, u2s, text = {}, {}, {}
    for i in range(6):
        utt = f"s{i % 3}-u{i}"
        wav[utt] = str(write_wav(tmp_path / f"{utt}.wav", seconds=0.5 + 0.1 * i, seed=i))
        u2s[utt] = f"s{i % 3}"
        text[utt] = f"word {i}"
    return write_data_dir(DataDir(wav_scp=wav, utt2spk=u2s, text=text), tmp_path / "data")


def test_validate_ok_and_durations(data_dir, capsys):
    assert main(["data", "validate", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{data_dir}: OK (6 utts, 0.00125 h, 3 speakers, labeled)" in out  # 4.5 s, from the headers
    assert not (data_dir / "utt2dur").exists()
    assert main(["data", "validate", "--durations", str(data_dir)]) == 0
    assert "wrote utt2dur (6 utts)" in capsys.readouterr().out
    data = read_data_dir(data_dir)
    assert data.utt2dur == {u: pytest.approx(0.5 + 0.1 * int(u[-1]), abs=1e-3) for u in data.utt_ids}
    assert main(["data", "validate", "--no-check-audio", str(data_dir)]) == 0
    assert "OK (6 utts, 0.00125 h, 3 speakers, labeled)" in capsys.readouterr().out  # 4.5 s from utt2dur


def test_validate_broken_dir_exit_1_with_file_and_line(data_dir, tmp_path, capsys):
    lines = (data_dir / "text").read_text().splitlines()
    lines[2] = lines[2].split()[0] + "   "
    (data_dir / "text").write_text("\n".join(lines) + "\n")
    good = write_data_dir(DataDir(wav_scp={"x": str(tmp_path / "s0-u0.wav")}, utt2spk={"x": "x"}), tmp_path / "good")
    assert main(["data", "validate", str(good), str(data_dir)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: OK (1 utts" in captured.out and "unlabeled" in captured.out
    assert f"{data_dir / 'text'}:3: utterance 's1-u1' has an empty transcript" in captured.err


def test_validate_reports_unreadable_and_missing_audio(data_dir, capsys):
    (data_dir.parent / "s1-u1.wav").write_bytes(b"junk")
    assert main(["data", "validate", "--no-check-audio", str(data_dir)]) == 0  # files not opened
    capsys.readouterr()
    assert main(["data", "validate", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "1 audio problem(s)" in err and f"{data_dir / 'wav.scp'}:3: recording 's1-u1': unreadable" in err
    (data_dir.parent / "s2-u5.wav").unlink()
    assert main(["data", "validate", str(data_dir)]) == 1
    assert f"{data_dir / 'wav.scp'}:6: audio file of 's2-u5' not found" in capsys.readouterr().err


def test_validate_checks_segments_against_the_recording(tmp_path, write_wav, capsys):
    rec = write_wav(tmp_path / "rec.wav", seconds=2.0)
    d = write_data_dir(DataDir(wav_scp={"rec": str(rec)}, utt2spk={"a": "s", "b": "s"},
                               segments={"a": Segment("rec", 0.0, 1.0), "b": Segment("rec", 1.0, 3.0)}), tmp_path / "seg")
    assert main(["data", "validate", str(d)]) == 1
    assert f"{d / 'segments'}:2: segment 'b' ends at 3.0 s but recording 'rec' is only 2.000 s long" in capsys.readouterr().err
    assert main(["data", "validate", "--no-check-audio", str(d)]) == 0
    assert "OK (2 utts, 0.0008333 h, 1 speakers, unlabeled)" in capsys.readouterr().out  # from segments


def test_combine_subset_split(data_dir, tmp_path, capsys, write_wav):
    other = write_data_dir(DataDir(wav_scp={"t-1": str(write_wav(tmp_path / "t1.wav"))}, utt2spk={"t-1": "t"},
                                   text={"t-1": "hi"}), tmp_path / "other")
    assert main(["data", "combine", "--out", str(tmp_path / "all"), str(data_dir), str(other)]) == 0
    assert read_data_dir(tmp_path / "all").utt_ids == sorted(read_data_dir(data_dir).utt_ids + ["t-1"])
    assert main(["data", "combine", "--out", str(tmp_path / "all"), str(data_dir), str(other)]) == 2  # exists
    assert "pass --force" in capsys.readouterr().err
    assert main(["data", "combine", "--out", str(tmp_path / "dup"), str(data_dir), str(data_dir)]) == 2
    assert "occurs in more than one data dir" in capsys.readouterr().err

    assert main(["data", "subset", "--out", str(tmp_path / "first"), "--first", "2", str(data_dir)]) == 0
    assert read_data_dir(tmp_path / "first").utt_ids == ["s0-u0", "s0-u3"]
    (tmp_path / "list").write_text("s2-u5\ns1-u1 extra fields ignored\n")
    assert main(["data", "subset", "--out", str(tmp_path / "listed"), "--utt-list", str(tmp_path / "list"), str(data_dir)]) == 0
    assert read_data_dir(tmp_path / "listed").utt_ids == ["s1-u1", "s2-u5"]
    for name in ("r1", "r2"):
        assert main(["data", "subset", "--out", str(tmp_path / name), "--random", "3", "--seed", "7", str(data_dir)]) == 0
    assert read_data_dir(tmp_path / "r1").utt_ids == read_data_dir(tmp_path / "r2").utt_ids
    assert len(read_data_dir(tmp_path / "r1")) == 3
    (tmp_path / "bad").write_text("nope\n")
    assert main(["data", "subset", "--out", str(tmp_path / "x"), "--utt-list", str(tmp_path / "bad"), str(data_dir)]) == 2
    assert "not in the data dir" in capsys.readouterr().err

    out_a, out_b = tmp_path / "train", tmp_path / "dev"
    assert main(["data", "split", "--out-dirs", str(out_a), str(out_b), "--fractions", "0.67", "0.33",
                 "--seed", "1", str(data_dir)]) == 0
    a, b = read_data_dir(out_a), read_data_dir(out_b)
    assert (len(a), len(b)) == (4, 2) and not set(a.spk2utt) & set(b.spk2utt)
    assert main(["data", "split", "--out-dirs", str(tmp_path / "q"), "--fractions", "0.5", "0.5", str(data_dir)]) == 2
    assert "one fraction per dir" in capsys.readouterr().err


def test_cmvn(data_dir, tmp_path, capsys):
    out = tmp_path / "stats" / "cmvn.json"
    assert main(["data", "cmvn", "--out", str(out), str(data_dir)]) == 0
    stats = json.loads(out.read_text())
    # 0.5..1.0 s -> 48, 58, 68, 78, 88, 98 frames
    assert stats["frames"] == 438 and stats["num_mel_bins"] == 80 and len(stats["mean"]) == 80
    assert "CMVN over 438 frames" in capsys.readouterr().out
    assert main(["data", "cmvn", "--out", str(out), "--max-utts", "2", "--num-mel-bins", "40", str(data_dir)]) == 0
    stats = json.loads(out.read_text())
    assert stats["num_mel_bins"] == 40 and stats["frames"] < 438
