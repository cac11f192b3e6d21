"""prepare librispeech / librilight / folder on tiny fixture trees in the real layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.cli import main as cli_main
from asr_kd.data.datadir import read_data_dir, validate_data_dir
from data_prep.common import PrepareError
from data_prep.folder import prepare_folder
from data_prep.librilight import SegmentOptions, segment_signal
from data_prep.librispeech import prepare_librispeech
from data_prep.synth.tts import synthesize
from data_prep.synth.voices import Voice

SR = 16000


def _tone(seconds: float, freq: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ------------------------------------------------------------------------------ LibriSpeech


def _librispeech_tree(root: Path) -> Path:
    """ROOT/LibriSpeech/dev-clean/<spk>/<chap>/ with transcripts in upper case, as distributed."""
    sub = root / "LibriSpeech" / "dev-clean"
    chapters = {("84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"],
                ("1272", "128104"): ["MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", "HE HAS GRAVE DOUBTS WHETHER SIR FREDERICK LEIGHTON'S WORK"]}
    for (spk, chap), texts in chapters.items():
        d = sub / spk / chap
        d.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt = f"{spk}-{chap}-{i:04d}"
            sf.write(d / f"{utt}.flac", _tone(1.0 + 0.5 * i), SR, subtype="PCM_16")
            lines.append(f"{utt} {text}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    # a transcript line whose flac is missing, and a flac without a transcript line
    d = sub / "84" / "121123"
    with open(d / "84-121123.trans.txt", "a") as fh:
        fh.write("84-121123-0005 THIS ONE HAS NO AUDIO\n")
    sf.write(d / "84-121123-0009.flac", _tone(0.7), SR, subtype="PCM_16")
    return root


def test_librispeech(tmp_path):
    root = _librispeech_tree(tmp_path / "corpora")
    results, line = prepare_librispeech(root, ["dev-clean"], tmp_path / "data", progress=False)
    data = validate_data_dir(tmp_path / "data" / "dev_clean")
    assert data.utt_ids == ["1272-128104-0000", "1272-128104-0001", "84-121123-0000", "84-121123-0001"]
    assert data.utt2spk["84-121123-0001"] == "84" and data.utt2spk["1272-128104-0000"] == "1272"
    assert data.text["1272-128104-0001"] == "he has grave doubts whether sir frederick leighton's work"
    assert data.utt2dur["84-121123-0001"] == pytest.approx(1.5, abs=1e-3)
    assert all(Path(p).is_absolute() and p.endswith(".flac") for p in data.wav_scp.values())
    rejects = (tmp_path / "data" / "dev_clean" / "rejects.tsv").read_text()
    assert "84-121123-0005" in rejects and "not found" in rejects
    assert "84-121123-0009.flac" in rejects and "no transcript" in rejects
    assert results[0].rejects == 2 and "4 utterances" in line and "2 rejects" in line


def test_librispeech_unlabeled_keeps_text_ref_and_cli(tmp_path, capsys):
    root = _librispeech_tree(tmp_path / "corpora")
    rc = cli_main(["prepare", "librispeech", "--corpus-dir", str(root / "LibriSpeech"), "--subsets", "dev-clean",
                   "--out", str(tmp_path / "data"), "--unlabeled", "--no-progress"])
    assert rc == 0
    assert "prepare librispeech: wrote 1 data dir(s)" in capsys.readouterr().out
    out = tmp_path / "data" / "dev_clean"
    assert not (out / "text").exists()
    data = read_data_dir(out)
    assert data.text is None and data.extra["text.ref"]["84-121123-0000"] == "go do you hear"


def test_librispeech_missing_subset_is_a_clear_error(tmp_path):
    root = _librispeech_tree(tmp_path / "corpora")
    with pytest.raises(PrepareError, match="train-clean-100.*openslr"):
        prepare_librispeech(root, ["train-clean-100"], tmp_path / "data", progress=False)


# ------------------------------------------------------------------------------ LibriLight


@pytest.fixture(scope="module")
def speech_bursts():
    """Four espeak-ng utterances at 16 kHz (real speech, with its own short pauses)."""
    voice = Voice("espeak-ng", "en-us", "m3", 170, 50)
    texts = ["the quick brown fox jumps over the lazy dog", "set an alarm for seven thirty",
             "what is the weather like in london tomorrow", "please play some jazz music in the kitchen"]
    out = []
    for t in texts:
        x = synthesize(voice, t, SR)
        x = x[np.flatnonzero(np.abs(x) > 0.01)[0]: np.flatnonzero(np.abs(x) > 0.01)[-1]]  # tight
        out.append(x / np.max(np.abs(x)) * 0.5)
    return out


def _long_recording(bursts: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """silence, bursts separated by pauses, then a >12 s stretch of back-to-back speech; faint noise."""
    parts, spans, t = [], [], 0.0

    def add(x: np.ndarray, speech: bool) -> None:
        nonlocal t
        if speech:
            spans.append((t, t + len(x) / SR))
        parts.append(x)
        t += len(x) / SR

    add(np.zeros(int(1.5 * SR), np.float32), False)
    for i, b in enumerate(bursts):
        add(b, True)
        add(np.zeros(int((0.8 if i % 2 else 4.0) * SR), np.float32), False)
    long = np.concatenate([np.concatenate([b, np.zeros(int(0.05 * SR), np.float32)]) for b in bursts * 2])
    add(long, True)
    add(np.zeros(int(2.0 * SR), np.float32), False)
    y = np.concatenate(parts)
    y = y + 0.0005 * rng.standard_normal(len(y)).astype(np.float32)  # about -66 dBFS floor
    return y.astype(np.float32), spans


def test_segment_signal_bounds_and_coverage(speech_bursts):
    y, spans = _long_recording(speech_bursts, np.random.default_rng(0))
    opts = SegmentOptions(max_seconds=6.0, min_seconds=1.0, top_db=30.0, max_pause=1.0)
    kept, short = segment_signal(y, SR, opts)
    dur = len(y) / SR
    assert kept
    prev_end = 0.0
    for s, e in kept:
        assert 0.0 <= s < e <= dur + 1e-9
        assert opts.min_seconds - 1e-9 <= e - s <= opts.max_seconds + 1e-9
        assert s >= prev_end - 1e-9  # sorted, no overlap
        prev_end = e
    # the middle of every speech span is inside some segment (no speech lost)
    for a, b in spans:
        for point in np.linspace(a + 0.2, b - 0.2, 9):
            assert any(s <= point <= e for s, e in kept), (a, b, point)
    # leading silence and the 4 s pauses are not inside segments
    assert kept[0][0] > 1.0
    long_a, long_b = spans[-1]
    assert long_b - long_a > 12.0
    inside_long = [seg for seg in kept if seg[0] >= long_a - 0.2 and seg[1] <= long_b + 0.2]
    assert len(inside_long) >= 3  # the >12 s stretch was cut to <= 6 s pieces


def test_librilight_layout_cli_and_rejects(tmp_path, speech_bursts, capsys):
    rng = np.random.default_rng(1)
    root = tmp_path / "librilight"
    y, _ = _long_recording(speech_bursts, rng)
    for spk, book, name, sig in [("100", "sea_fairies_0812_librivox", "01_baum_sea_fairies_64kb", y),
                                 ("100", "sea_fairies_0812_librivox", "02_baum_sea_fairies_64kb", y[: 20 * SR]),
                                 ("2001", "emma_librivox", "emma-chapter 1", y[5 * SR:])]:
        (root / "small" / spk / book).mkdir(parents=True, exist_ok=True)
        sf.write(root / "small" / spk / book / f"{name}.flac", sig, SR, subtype="PCM_16")
    # a silent recording: no speech, listed as a reject
    (root / "small" / "2001" / "silent_book").mkdir(parents=True)
    sf.write(root / "small" / "2001" / "silent_book" / "quiet.flac", np.zeros(3 * SR, np.float32), SR, subtype="PCM_16")
    out = tmp_path / "ll"
    rc = cli_main(["prepare", "librilight", "--corpus-dir", str(root), "--out", str(out), "--max-seconds", "6",
                   "--min-seconds", "1", "--jobs", "1", "--no-progress"])
    assert rc == 0
    assert "prepare librilight: wrote 1 data dir(s)" in capsys.readouterr().out
    data = validate_data_dir(out)
    assert data.segments is not None and data.text is None and not (out / "text").exists()
    assert sorted(data.wav_scp) == ["100-sea_fairies_0812_librivox-01_baum_sea_fairies_64kb",
                                    "100-sea_fairies_0812_librivox-02_baum_sea_fairies_64kb",
                                    "2001-emma_librivox-emma_chapter_1"]
    for utt in data.utt_ids:
        seg = data.segments[utt]
        rec_dur = sf.info(data.wav_scp[seg.recording]).duration
        assert 0 <= seg.start < seg.end <= rec_dur + 1e-6
        assert seg.end - seg.start >= 1.0 - 1e-6 and seg.end - seg.start <= 6.0 + 1e-6
        assert data.utt2dur[utt] == pytest.approx(seg.end - seg.start, abs=1e-3)
        assert utt.startswith(seg.recording + "-") and data.utt2spk[utt] == utt.split("-")[0]
    assert set(data.utt2spk.values()) == {"100", "2001"}
    rejects = (out / "rejects.tsv").read_text()
    assert "quiet.flac" in rejects and "no speech" in rejects


def test_librilight_bad_options():
    with pytest.raises(PrepareError, match="min-seconds"):
        SegmentOptions(max_seconds=1.5, min_seconds=1.0)


# ------------------------------------------------------------------------------ folder


def test_folder_ids_rejects_and_speakers(tmp_path, capsys):
    audio = tmp_path / "audio"
    (audio / "alice" / "day 2").mkdir(parents=True)
    (audio / "bob").mkdir()
    sf.write(audio / "alice" / "day 2" / "take#1.wav", _tone(1.0), SR, subtype="PCM_16")
    sf.write(audio / "alice" / "a.wav", _tone(0.5), SR, subtype="PCM_16")
    sf.write(audio / "alice" / "a.flac", _tone(0.75), SR, subtype="PCM_16")  # same stem: ids must not collide
    sf.write(audio / "bob" / "b.FLAC", _tone(2.0, sr=8000), 8000, subtype="PCM_16")
    (audio / "bob" / "corrupt.wav").write_bytes(b"RIFF\x00\x00not really a wav file at all")
    sf.write(audio / "bob" / "stereo.wav", np.stack([_tone(1.0), _tone(1.0)], axis=1), SR, subtype="PCM_16")
    (audio / "bob" / "notes.txt").write_text("not audio")

    _, line = prepare_folder(audio, tmp_path / "plain", progress=False)
    plain = validate_data_dir(tmp_path / "plain")
    assert len(plain) == 4 and "4 utterances" in line and "2 rejects" in line
    assert "alice-day_2-take_1" in plain.utt_ids and "bob-b" in plain.utt_ids
    a_ids = [u for u in plain.utt_ids if u.startswith("alice-a-")]
    assert len(a_ids) == 2 and len(set(a_ids)) == 2  # a.wav / a.flac disambiguated
    assert all(plain.utt2spk[u] == u for u in plain.utt_ids)  # unknown speakers: one per utterance
    assert plain.utt2dur["bob-b"] == pytest.approx(2.0, abs=1e-3)
    # a path with a space cannot go into wav.scp: it is reached through a symlink to the original
    link = Path(plain.wav_scp["alice-day_2-take_1"])
    assert " " not in str(link) and link.resolve() == (audio / "alice" / "day 2" / "take#1.wav").resolve()
    assert plain.text is None
    rejects = (tmp_path / "plain" / "rejects.tsv").read_text().splitlines()
    assert rejects[0] == "path\treason"
    reasons = dict(r.split("\t") for r in rejects[1:])
    assert reasons[str(audio / "bob" / "corrupt.wav")].startswith("unreadable")
    assert reasons[str(audio / "bob" / "stereo.wav")].startswith("multi_channel")

    rc = cli_main(["prepare", "folder", "--audio-dir", str(audio), "--out", str(tmp_path / "spk"), "--ext", "wav",
                   "--speaker-from-dir", "--no-progress"])
    assert rc == 0 and "prepare folder" in capsys.readouterr().out
    spk = validate_data_dir(tmp_path / "spk")
    assert sorted(spk.utt_ids) == ["alice-a", "alice-day_2-take_1"]  # --ext wav only: no collision now
    assert spk.spk2utt == {"alice": ["alice-a", "alice-day_2-take_1"]}


def test_folder_without_audio_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli_main(["prepare", "folder", "--audio-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no files with extension" in capsys.readouterr().err
