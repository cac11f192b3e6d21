"""Audio loading: segments, resampling, flac, pipes and every typed error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asr_kd.data.audio import AudioSegmentError, audio_duration, load_audio, load_utterance
from asr_kd.data.datadir import AudioSource, DataDir, Segment
from asr_kd.errors import (
    AudioChannelError,
    AudioEmptyError,
    AudioError,
    AudioMissingError,
    AudioNonFiniteError,
    AudioRateError,
    AudioTooLongError,
    AudioUnreadableError,
)


def ramp_wav(path, n: int, rate: int = 16000):
    """int16 file whose sample i has value i (mod 32768), so sample positions can be read back."""
    sf.write(str(path), (np.arange(n) % 32768).astype(np.int16), rate, subtype="PCM_16")
    return path


def dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(wave.numel(), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * rate / wave.numel()


def test_whole_file_is_float32_in_range(tmp_path, write_wav):
    path = write_wav(tmp_path / "a.wav", seconds=0.5)
    wave = load_audio(AudioSource("a", str(path)))
    ref, _ = sf.read(str(path), dtype="float32")
    assert wave.dtype == torch.float32 and wave.dim() == 1 and wave.numel() == 8000
    assert torch.equal(wave, torch.from_numpy(ref))
    assert float(wave.abs().max()) <= 1.0
    assert audio_duration(str(path)) == pytest.approx(0.5)


@pytest.mark.parametrize("subtype, ext", [("PCM_16", "wav"), ("PCM_16", "flac"), ("PCM_24", "flac"), ("FLOAT", "wav")])
def test_decoding_is_bit_identical_to_libsndfile_float_conversion(tmp_path, subtype, ext):
    """16-bit PCM is decoded as int16 and scaled by 2^-15 here (faster): the floats must be libsndfile's own,
    for the whole file and for a segment; other subtypes go through libsndfile's conversion."""
    rng = np.random.default_rng(0)
    samples = rng.integers(-32768, 32768, 24000).astype(np.int16)
    samples[:3] = (-32768, 32767, 0)
    path = tmp_path / f"x.{ext}"
    sf.write(str(path), samples.astype(np.float32) / 32768 if subtype == "FLOAT" else samples, 16000, subtype=subtype)
    ref, _ = sf.read(str(path), dtype="float32")
    wave = load_audio(AudioSource("x", str(path)))
    assert wave.dtype == torch.float32 and torch.equal(wave, torch.from_numpy(ref))
    seg = load_audio(AudioSource("s", str(path), start=0.25, end=1.0))
    assert torch.equal(seg, torch.from_numpy(ref[4000:16000]))


def test_segments_read_exact_sample_ranges(tmp_path):
    path = ramp_wav(tmp_path / "r.wav", 32000)
    wave = load_audio(AudioSource("seg", str(path), start=0.25, end=0.75))
    assert wave.numel() == 8000
    ints = torch.round(wave * 32768).long()
    assert torch.equal(ints, torch.arange(4000, 12000))
    tail = load_audio(AudioSource("tail", str(path), start=1.5))  # end=None: to the end of the file
    assert torch.equal(torch.round(tail * 32768).long(), torch.arange(24000, 32000))
    # a segment may end up to 0.5 s after the file (Kaldi's max-overshoot); the excess is dropped
    over = load_audio(AudioSource("over", str(path), start=1.9, end=2.3))
    assert torch.equal(torch.round(over * 32768).long(), torch.arange(30400, 32000))


def test_load_utterance_uses_segments_of_a_data_dir(tmp_path):
    path = ramp_wav(tmp_path / "r.wav", 16000)
    data = DataDir(wav_scp={"rec": str(path)}, utt2spk={"x": "s"}, segments={"x": Segment("rec", 0.5, 0.625)})
    wave = load_utterance(data, "x")
    assert torch.equal(torch.round(wave * 32768).long(), torch.arange(8000, 10000))


@pytest.mark.parametrize("rate", [8000, 22050])
def test_resampling_keeps_duration_and_frequency(tmp_path, rate):
    t = np.arange(rate) / rate  # 1 s
    sf.write(str(tmp_path / "s.wav"), (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32), rate, subtype="FLOAT")
    wave = load_audio(AudioSource("s", str(tmp_path / "s.wav")), sample_rate=16000)
    assert wave.numel() == 16000
    assert dominant_hz(wave, 16000) == pytest.approx(1000.0, abs=2.0)
    assert float(wave[1000:-1000].abs().max()) == pytest.approx(0.5, abs=0.02)  # amplitude kept
    with pytest.raises(AudioRateError, match=rf"sample rate is {rate} Hz, expected 16000 Hz"):
        load_audio(AudioSource("s", str(tmp_path / "s.wav")), allow_resample=False)


def test_flac_is_lossless(tmp_path, speech):
    ints = np.round(speech(0.3, seed=1) * 32767).astype(np.int16)
    sf.write(str(tmp_path / "a.flac"), ints, 16000, subtype="PCM_16")
    assert sf.info(str(tmp_path / "a.flac")).format == "FLAC"
    wave = load_audio(AudioSource("f", str(tmp_path / "a.flac")))
    assert torch.equal(torch.round(wave * 32768).to(torch.int16), torch.from_numpy(ints))
    seg = load_audio(AudioSource("f", str(tmp_path / "a.flac"), start=0.1, end=0.2))  # seeking in flac
    assert torch.equal(seg, wave[1600:3200])


def test_missing_file(tmp_path):
    with pytest.raises(AudioMissingError) as info:
        load_audio(AudioSource("u1", str(tmp_path / "nope.wav")))
    assert "utterance 'u1'" in str(info.value) and "nope.wav" in str(info.value)
    assert info.value.reason == "missing"


def test_corrupt_bytes(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio")
    with pytest.raises(AudioUnreadableError, match=r"utterance 'u1', file '.*bad.wav': not a readable audio file"):
        load_audio(AudioSource("u1", str(bad)))
    text = tmp_path / "text.flac"
    text.write_text("hello")
    with pytest.raises(AudioUnreadableError):
        audio_duration(str(text))


def test_truncated_file(tmp_path, write_wav):
    path = write_wav(tmp_path / "t.flac", seconds=2.0, seed=3)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.raises(AudioUnreadableError, match="truncated|corrupt"):
        load_audio(AudioSource("t", str(path)))


def test_zero_length_and_segment_past_the_end(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioEmptyError, match="0 samples"):
        load_audio(AudioSource("e", str(empty)))
    path = ramp_wav(tmp_path / "r.wav", 16000)
    with pytest.raises(AudioEmptyError, match="starts at 2.000 s but the recording is only 1.000 s"):
        load_audio(AudioSource("late", str(path), start=2.0, end=3.0))
    with pytest.raises(AudioSegmentError, match="1.000 s after the end") as info:
        load_audio(AudioSource("long", str(path), start=0.5, end=2.0))
    assert isinstance(info.value, AudioEmptyError) and info.value.reason == "segment_out_of_range"


def test_nan_samples(tmp_path):
    x = np.zeros(1600, dtype=np.float32)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(str(tmp_path / "n.wav"), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioNonFiniteError, match="2 of 1600 samples are NaN or inf"):
        load_audio(AudioSource("n", str(tmp_path / "n.wav")))


def test_stereo_refused_with_downmix_advice(tmp_path):
    sf.write(str(tmp_path / "st.wav"), np.zeros((1600, 2), dtype=np.int16), 16000)
    with pytest.raises(AudioChannelError, match=r"2 channels.*sox in.wav -c 1 out.wav"):
        load_audio(AudioSource("st", str(tmp_path / "st.wav")))


def test_too_long_checked_before_reading(tmp_path, write_wav):
    path = write_wav(tmp_path / "l.wav", seconds=3.0)
    with pytest.raises(AudioTooLongError, match="3.00 s is longer than the limit of 2 s"):
        load_audio(AudioSource("l", str(path)), max_seconds=2.0)
    # the limit applies to the segment, not the file
    assert load_audio(AudioSource("l", str(path), 0.0, 1.5), max_seconds=2.0).numel() == 24000


def test_every_error_is_an_audio_error_with_a_reason():
    for cls in (AudioMissingError, AudioUnreadableError, AudioEmptyError, AudioNonFiniteError,
                AudioChannelError, AudioRateError, AudioTooLongError, AudioSegmentError):
        assert issubclass(cls, AudioError) and cls.reason != AudioError.reason


def test_pipes_refused_unless_allowed(tmp_path, write_wav):
    path = write_wav(tmp_path / "p.wav", seconds=0.25)
    entry = f"cat {path} |"
    with pytest.raises(AudioUnreadableError, match="pipe command.*allow_pipes"):
        load_audio(AudioSource("p", entry))
    piped = load_audio(AudioSource("p", entry), allow_pipes=True)
    assert torch.equal(piped, load_audio(AudioSource("p", str(path))))
    # shell syntax (an inner pipe) runs through /bin/sh, as in Kaldi
    shell = load_audio(AudioSource("p", f"cat {path} | cat |", start=0.1, end=0.2), allow_pipes=True)
    assert torch.equal(shell, piped[1600:3200])
    assert audio_duration(entry, allow_pipes=True) == pytest.approx(0.25)
    with pytest.raises(AudioUnreadableError, match="exited with status"):
        load_audio(AudioSource("p", f"cat {tmp_path}/absent.wav |"), allow_pipes=True)
    with pytest.raises(AudioUnreadableError, match="pipe command not found"):
        load_audio(AudioSource("p", "no-such-program-xyz in.wav |"), allow_pipes=True)
