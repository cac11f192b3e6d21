"""``asr-kd data perturb-speed``: Kaldi's 3-way speed perturbation (``utils/data/perturb_data_dir_speed_3way.sh``
conventions: ``sp<factor>-`` on utterance, speaker and recording ids, segment times and ``utt2dur`` divided by
the factor), with the audio rendered to files instead of sox pipes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from asr_kd.cli import main as cli_main
from asr_kd.data.datadir import DataDir, Segment, read_data_dir, write_data_dir
from factories import make_data

SR = 16000


def _sine(path, seconds: float, hz: float) -> str:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR, subtype="PCM_16")
    return str(path)


def _peak_hz(path) -> float:
    x, sr = sf.read(path, dtype="float32")
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


def _perturb(src, out, *extra: str) -> int:
    return cli_main(["data", "perturb-speed", str(src), "--out", str(out), "--jobs", "1", "--no-progress", *extra])


def test_three_way_perturbation_follows_kaldi_conventions(tmp_path, capsys):
    src = make_data(tmp_path / "c", 3, with_text=True)
    (src / "text.ref").write_text("".join(f"{u} ref {i}\n" for i, u in enumerate(read_data_dir(src).utt_ids)))
    orig = read_data_dir(src)
    assert _perturb(src, tmp_path / "sp") == 0
    assert "9 utterances" in capsys.readouterr().out
    out = read_data_dir(tmp_path / "sp")
    for factor in ("0.9", "1.0", "1.1"):
        part = read_data_dir(tmp_path / "sp" / "parts" / f"sp{factor}")
        assert part.utt_ids == [f"sp{factor}-{u}" for u in orig.utt_ids]
        assert set(part.utt2spk.values()) == {f"sp{factor}-{s}" for s in orig.utt2spk.values()}
        for u in orig.utt_ids:
            new = f"sp{factor}-{u}"
            assert out.text[new] == orig.text[u] and out.extra["text.ref"][new] == orig.extra["text.ref"][u]
            seconds = sf.info(orig.wav_scp[u]).duration
            assert out.utt2dur[new] == pytest.approx(seconds / float(factor), abs=2e-3)  # utt2dur / factor
            assert sf.info(out.wav_scp[new]).duration == pytest.approx(seconds / float(factor), abs=1e-3)
    u = orig.utt_ids[0]
    assert out.wav_scp[f"sp1.0-{u}"] == orig.wav_scp[u]  # factor 1.0 is the original audio, not a copy
    assert out.wav_scp[f"sp0.9-{u}"].endswith(".flac") and os.path.isabs(out.wav_scp[f"sp0.9-{u}"])


def test_speed_changes_pitch_with_tempo_like_sox_speed(tmp_path):
    audio = tmp_path / "a"
    audio.mkdir()
    data = DataDir(wav_scp={"u1": _sine(audio / "u1.wav", 1.0, 400.0)}, utt2spk={"u1": "s"}, text={"u1": "hi"})
    write_data_dir(data, tmp_path / "d")
    assert _perturb(tmp_path / "d", tmp_path / "sp", "--factors", "0.9,1.1") == 0
    out = read_data_dir(tmp_path / "sp")
    assert _peak_hz(out.wav_scp["sp0.9-u1"]) == pytest.approx(360.0, abs=2.0)
    assert _peak_hz(out.wav_scp["sp1.1-u1"]) == pytest.approx(440.0, abs=2.0)
    assert sorted(out.utt_ids) == ["sp0.9-u1", "sp1.1-u1"]


def test_segments_are_rescaled_and_recordings_renamed(tmp_path):
    audio = tmp_path / "a"
    audio.mkdir()
    rec = _sine(audio / "rec.wav", 3.0, 300.0)
    data = DataDir(wav_scp={"rec": rec}, utt2spk={"s-a": "s", "s-b": "s"}, text={"s-a": "one", "s-b": "two"},
                   segments={"s-a": Segment("rec", 0.0, 1.2), "s-b": Segment("rec", 1.5, 2.7)})
    write_data_dir(data, tmp_path / "d")
    assert _perturb(tmp_path / "d", tmp_path / "sp", "--factors", "0.9,1.0") == 0
    out = read_data_dir(tmp_path / "sp")
    seg = out.segments["sp0.9-s-b"]
    assert seg.recording == "sp0.9-rec" and seg.start == pytest.approx(1.5 / 0.9, abs=1e-3)
    assert seg.end == pytest.approx(2.7 / 0.9, abs=1e-3)
    assert out.segments["sp1.0-s-a"] == Segment("sp1.0-rec", 0.0, 1.2) and out.wav_scp["sp1.0-rec"] == rec
    assert sf.info(out.wav_scp["sp0.9-rec"]).duration == pytest.approx(3.0 / 0.9, abs=1e-3)


def test_unreadable_recording_is_rejected_with_its_reason_and_the_rest_kept(tmp_path, capsys):
    src = make_data(tmp_path / "c", 3, with_text=True)
    data = read_data_dir(src)
    broken = data.utt_ids[1]
    with open(data.wav_scp[broken], "wb") as fh:
        fh.write(b"RIFF not really a wav")
    assert _perturb(src, tmp_path / "sp", "--factors", "0.9,1.0") == 0
    assert "2 rejected" in capsys.readouterr().out
    out = read_data_dir(tmp_path / "sp")
    # without utt2dur, factor 1.0 reads the header for the duration: the broken file is refused there too
    assert f"sp0.9-{broken}" not in out and f"sp1.0-{broken}" not in out and len(out) == 4
    rejects = (tmp_path / "sp" / "rejects.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rejects] == [f"sp0.9-{broken}", f"sp1.0-{broken}"]
    assert all(r.split("\t")[1] for r in rejects)  # each with its reason


def test_rerun_renders_only_what_is_missing(tmp_path, capsys):
    src = make_data(tmp_path / "c", 3, with_text=True)
    assert _perturb(src, tmp_path / "sp", "--factors", "0.9") == 0
    first = sorted((tmp_path / "sp" / "parts" / "sp0.9" / "audio").iterdir())
    mtimes = [p.stat().st_mtime_ns for p in first]
    first[0].unlink()
    capsys.readouterr()
    assert _perturb(src, tmp_path / "sp", "--factors", "0.9") == 2  # not empty: --force needed
    assert "--force" in capsys.readouterr().err
    assert _perturb(src, tmp_path / "sp", "--factors", "0.9", "--force") == 0
    assert "rendered 1 recordings, reused 2" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in first[1:]] == mtimes[1:]


@pytest.mark.parametrize("factors, message", [("0.9,x", "not a number"), ("0.3", "outside"), ("1.1,1.10", "twice"),
                                              ("", "comma-separated")])
def test_bad_factors_are_a_clear_error(tmp_path, capsys, factors, message):
    src = make_data(tmp_path / "c", 1, with_text=True)
    assert _perturb(src, tmp_path / "sp", "--factors", factors) == 2
    assert message in capsys.readouterr().err
