"""Batched Kaldi fbank vs torchaudio, frame counts, the prefix property, global CMVN, SpecAugment."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchaudio

from asr_kd.config import validate_config
from asr_kd.data.audio import load_audio
from asr_kd.data.cmvn import CMVNError, GlobalCMVN, compute_global_cmvn
from asr_kd.data.datadir import AudioSource, DataDir, read_data_dir, write_data_dir
from asr_kd.data.features import WAVEFORM_SCALE, Fbank, FbankConfig, compute_fbank
from asr_kd.data.specaug import SpecAugment, SpecAugmentConfig
from asr_kd.errors import ConfigError

LENGTHS = [16000, 12345, 9999, 4001, 400, 399, 0]  # samples: several frame counts, one frame, none


@pytest.fixture(scope="module")
def speech_wave(tmp_path_factory) -> torch.Tensor:
    """Real synthetic speech (espeak-ng, resampled to 16 kHz) when espeak-ng is installed; else a
    speech-like harmonic signal. 1-D float32 in [-1, 1], at least 1 s."""
    tmp = tmp_path_factory.mktemp("speech")
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(tmp / "s.wav"), "the quick brown fox jumps over the lazy dog"],
                       check=True, capture_output=True)
        return load_audio(AudioSource("s", str(tmp / "s.wav")), sample_rate=16000)
    from conftest import speechlike

    return torch.from_numpy(speechlike(2.0, seed=7))


def padded_batch(wave: torch.Tensor, lengths: list[int], dtype=torch.float32) -> torch.Tensor:
    """Utterance b = ``wave`` rotated by 1234*b samples, cut to lengths[b]; padding filled with noise
    (so a frame that read into the padding would show)."""
    batch = torch.randn(len(lengths), max(lengths), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for b, n in enumerate(lengths):
        batch[b, :n] = torch.roll(wave.double(), 1234 * b)[:n]
    return batch.to(dtype)


def kaldi(wave_1d: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    """torchaudio's single-utterance Kaldi fbank on the int16-scaled samples (our documented convention)."""
    return torchaudio.compliance.kaldi.fbank(
        wave_1d[None] * WAVEFORM_SCALE, num_mel_bins=cfg.num_mel_bins, frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms, dither=0.0, preemphasis_coefficient=cfg.preemphasis,
        remove_dc_offset=cfg.remove_dc_offset, window_type=cfg.window, low_freq=cfg.low_freq,
        high_freq=cfg.high_freq, energy_floor=cfg.energy_floor, sample_frequency=cfg.sample_rate,
        snip_edges=cfg.snip_edges, use_energy=False)


# ------------------------------------------------------------------------------------------ fbank


def test_frame_count_rule():
    cfg = FbankConfig()
    assert (cfg.window_size, cfg.window_shift, cfg.padded_window_size) == (400, 160, 512)
    assert [cfg.num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    fb = Fbank(cfg)
    assert fb.frame_lengths(torch.tensor(LENGTHS)).tolist() == [cfg.num_frames(n) for n in LENGTHS]


@pytest.mark.parametrize("options", [{}, {"window": "hamming", "num_mel_bins": 40, "low_freq": 64.0,
                                          "high_freq": -400.0, "preemphasis": 0.0, "remove_dc_offset": False},
                                     {"snip_edges": False}])
def test_batched_fbank_equals_torchaudio_per_utterance_float64(speech_wave, options):
    """Same algorithm: in float64 every frame of every utterance of a padded batch matches."""
    cfg = FbankConfig(**options)
    lengths = [n for n in LENGTHS if n > 0]
    batch = padded_batch(speech_wave, lengths, torch.float64)
    feats, feat_lens = Fbank(cfg)(batch, torch.tensor(lengths))
    assert feats.dtype == torch.float32 and feats.shape == (len(lengths), int(feat_lens.max()), cfg.num_mel_bins)
    for b, n in enumerate(lengths):
        assert int(feat_lens[b]) == cfg.num_frames(n)
        if n < cfg.window_size:  # torchaudio refuses input shorter than a window
            continue
        ref = kaldi(batch[b, :n], cfg)
        assert ref.shape[0] == int(feat_lens[b])
        torch.testing.assert_close(feats[b, : feat_lens[b]], ref.float(), atol=1e-4, rtol=0)
        assert torch.all(feats[b, feat_lens[b]:] == 0)  # frames past the end are zero


@pytest.mark.parametrize("bins", [80, 40, 23])
def test_cpu_mel_bands_hold_every_non_zero_weight_of_the_dense_filterbank(bins):
    """The CPU path projects band by band over the rows each band uses: put back in place, the bands are the
    dense matrix (nothing dropped), and they skip most of its zeros."""
    fb = Fbank(FbankConfig(num_mel_bins=bins))
    rebuilt = torch.zeros_like(fb.mel_banks_pairs)
    col = 0
    for i, (first, end) in enumerate(fb.mel_bands):
        band = getattr(fb, f"mel_band_{i}")
        rebuilt[first:end, col: col + band.shape[1]] = band
        col += band.shape[1]
    assert col == bins and torch.equal(rebuilt, fb.mel_banks_pairs)
    assert sum((end - first) * getattr(fb, f"mel_band_{i}").shape[1] for i, (first, end) in enumerate(fb.mel_bands)) \
        < 0.5 * fb.mel_banks_pairs.numel()


def test_batched_fbank_float32_matches_torchaudio_float32(speech_wave):
    """The production path (float32). Log-mel of very quiet bins carries float32 FFT rounding noise of a
    few 1e-4 in torchaudio itself (it is that far from its own float64 result), so the bound is 1e-3;
    the median difference must still be tiny."""
    cfg = FbankConfig()
    batch = padded_batch(speech_wave, LENGTHS)
    feats, feat_lens = Fbank(cfg)(batch, torch.tensor(LENGTHS))
    assert feat_lens.tolist() == [98, 75, 60, 23, 1, 0, 0]
    diffs = []
    for b, n in enumerate(LENGTHS):
        if n >= cfg.window_size:
            ref = kaldi(batch[b, :n], cfg)
            diffs.append((feats[b, : feat_lens[b]] - ref).abs().flatten())
    diffs = torch.cat(diffs)
    assert float(diffs.max()) < 1e-3 and float(diffs.median()) < 1e-5


def test_compute_fbank_and_empty_batches(speech_wave):
    cfg = FbankConfig()
    one = compute_fbank(speech_wave[:8000], cfg)
    assert one.shape == (cfg.num_frames(8000), 80)
    torch.testing.assert_close(one, kaldi(speech_wave[:8000], cfg), atol=1e-3, rtol=0)
    feats, lens = Fbank(cfg)(torch.zeros(2, 300), torch.tensor([300, 10]))
    assert feats.shape == (2, 0, 80) and lens.tolist() == [0, 0]
    with pytest.raises(ValueError, match="lengths must be in"):
        Fbank(cfg)(torch.zeros(1, 100), torch.tensor([101]))


def test_deterministic_without_dither_and_random_with_it(speech_wave):
    x = speech_wave[None, :8000]
    n = torch.tensor([8000])
    a, _ = Fbank()(x, n)
    b, _ = Fbank()(x, n)
    assert torch.equal(a, b)
    c, _ = Fbank(FbankConfig(dither=1.0))(x, n)
    assert not torch.equal(a, c)
    loud = a > 5.0  # bins with speech energy barely move under one int16 step of noise
    assert float((a - c)[loud].abs().median()) < 0.01
    silent = a < -15.0  # digital silence sits at log(float eps); dither lifts it, as in Kaldi
    if silent.any():
        assert float(c[silent].min()) > -15.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prefix_frames_equal_full_frames(speech_wave, dtype):
    """With snip_edges, frames of a prefix = the first frames of the whole (streaming depends on it).
    Equal to float rounding: in float32 BLAS picks another kernel for a 1-row than a many-row matrix
    product, which changes the last bit of some mel energies (1e-6 in the log domain)."""
    fb = Fbank()
    wave = speech_wave.to(dtype)
    full, full_len = fb(wave[None], torch.tensor([wave.numel()]))
    atol = 1e-9 if dtype == torch.float64 else 1e-5
    for cut in (400, 559, 560, 4321, 8000, wave.numel() - 1):
        part, part_len = fb(wave[None, :cut], torch.tensor([cut]))
        assert int(part_len) == fb.config.num_frames(cut)
        torch.testing.assert_close(part[0], full[0, : int(part_len)], atol=atol, rtol=0)
    # and the frames of the prefix do not depend on any sample after it
    changed = wave.clone()
    changed[4321:] = 0.5
    part, n = fb(changed[None], torch.tensor([changed.numel()]))
    k = fb.config.num_frames(4321)
    torch.testing.assert_close(part[0, :k], full[0, :k], atol=atol, rtol=0)
    assert not torch.allclose(part[0, k + 3], full[0, k + 3])


def test_config_is_strict_and_checks_frequencies():
    with pytest.raises(ConfigError, match="num_mel_bin"):
        validate_config({"num_mel_bin": 40}, FbankConfig)
    with pytest.raises(ConfigError, match="low_freq"):
        validate_config({"low_freq": 9000.0}, FbankConfig)
    with pytest.raises(ConfigError, match="window"):
        validate_config({"window": "gaussian"}, FbankConfig)
    assert set(FbankConfig().model_dump()) == {"sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms",
                                               "dither", "preemphasis", "remove_dc_offset", "window", "low_freq",
                                               "high_freq", "energy_floor", "snip_edges"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_fbank_on_gpu_matches_cpu(speech_wave):
    batch = padded_batch(speech_wave, LENGTHS)
    cpu, cpu_len = Fbank()(batch, torch.tensor(LENGTHS))
    gpu, gpu_len = Fbank().cuda()(batch.cuda(), torch.tensor(LENGTHS).cuda())
    assert torch.equal(cpu_len, gpu_len.cpu())
    assert float((cpu - gpu.cpu()).abs().max()) < 1e-3


# ------------------------------------------------------------------------------------------ CMVN


@pytest.fixture
def wav_dir(tmp_path, write_wav):
    wav = {}
    for i in range(6):
        wav[f"u{i}"] = str(write_wav(tmp_path / f"u{i}.wav", seconds=0.5 + 0.1 * i, seed=i))
    write_data_dir(DataDir(wav_scp=wav, utt2spk={u: "s" for u in wav}), tmp_path / "data")
    return read_data_dir(tmp_path / "data")


def test_cmvn_stats_normalize_the_data(wav_dir):
    cfg = FbankConfig()
    cmvn = compute_global_cmvn(wav_dir, cfg, progress=False)
    frames = torch.cat([kaldi(load_audio(wav_dir.source(u)), cfg) for u in wav_dir.utt_ids]).double()
    assert cmvn.frames == frames.shape[0]
    torch.testing.assert_close(cmvn.mean.double(), frames.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(cmvn.std.double(), frames.std(0, unbiased=False), atol=1e-3, rtol=1e-4)
    normalized = cmvn(frames.float())
    assert float(normalized.mean(0).abs().max()) < 1e-3
    assert float((normalized.std(0, unbiased=False) - 1).abs().max()) < 1e-3


def test_cmvn_json_round_trip_and_errors(tmp_path):
    cmvn = GlobalCMVN(torch.linspace(-3, 3, 80), torch.linspace(0.5, 2, 80), frames=1234)
    path = cmvn.save(tmp_path / "cmvn.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"mean", "std", "frames", "num_mel_bins"} and raw["num_mel_bins"] == 80
    back = GlobalCMVN.load(path)
    assert torch.equal(back.mean, cmvn.mean) and torch.equal(back.std, cmvn.std) and back.frames == 1234
    x = torch.randn(2, 5, 80)
    assert torch.equal(back(x), cmvn(x))
    raw["std"][3] = 0.0
    path.write_text(json.dumps(raw))
    with pytest.raises(CMVNError, match=r"cmvn.json: std must be > 0"):
        GlobalCMVN.load(path)
    path.write_text('{"mean": [1.0], "std": [1.0, 2.0], "frames": 3, "num_mel_bins": 1}')
    with pytest.raises(CMVNError, match="num_mel_bins=1"):
        GlobalCMVN.load(path)
    path.write_text("{not json")
    with pytest.raises(CMVNError, match="not valid JSON"):
        GlobalCMVN.load(path)
    assert float(GlobalCMVN(torch.zeros(3), torch.zeros(3)).std.min()) > 0  # floored


def test_cmvn_padding_mask_and_size_check():
    cmvn = GlobalCMVN(torch.full((4,), 2.0), torch.full((4,), 0.5))
    out = cmvn(torch.full((2, 3, 4), 3.0), torch.tensor([3, 1]))
    assert torch.all(out[0] == 2.0) and torch.all(out[1, 0] == 2.0) and torch.all(out[1, 1:] == 0.0)
    with pytest.raises(CMVNError, match="5 bins"):
        cmvn(torch.zeros(1, 1, 5))


def test_cmvn_skips_bad_audio_loudly_and_samples_with_seed(wav_dir, tmp_path, caplog):
    Path(wav_dir.wav_scp["u2"]).write_bytes(b"not audio at all")
    Path(wav_dir.wav_scp["u4"]).unlink()
    with caplog.at_level(logging.WARNING, logger="asr_kd.data.cmvn"):
        cmvn = compute_global_cmvn(wav_dir, FbankConfig(), progress=False)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 2 of 6" in warning and "u2 (unreadable" in warning and "u4 (missing" in warning
    good = [u for u in wav_dir.utt_ids if u not in ("u2", "u4")]
    assert cmvn.frames == sum(FbankConfig().num_frames(load_audio(wav_dir.source(u)).numel()) for u in good)
    a = compute_global_cmvn(wav_dir.subset(good), FbankConfig(), max_utts=2, seed=1, progress=False)
    b = compute_global_cmvn(wav_dir.subset(good), FbankConfig(), max_utts=2, seed=1, progress=False)
    assert torch.equal(a.mean, b.mean) and a.frames < cmvn.frames
    for u in good:
        Path(wav_dir.wav_scp[u]).unlink()
    with pytest.raises(CMVNError, match="no usable audio"):
        compute_global_cmvn(wav_dir, FbankConfig(), progress=False)


# ------------------------------------------------------------------------------------------ SpecAugment


def feats_batch():
    lengths = torch.tensor([200, 120, 37, 1])
    feats = torch.randn(4, 200, 80, generator=torch.Generator().manual_seed(0)) + 5.0  # never 0 by chance
    pad = torch.arange(200)[None, :] >= lengths[:, None]
    feats[pad] = 99.0
    return feats, lengths, pad


def test_specaug_masks_only_within_lengths_and_widths_bounded():
    cfg = SpecAugmentConfig(freq_masks=2, freq_width=27, time_masks=2, time_width_ratio=0.05)
    feats, lengths, pad = feats_batch()
    aug = SpecAugment(cfg, seed=0).train()
    masked_any = False
    for _ in range(20):
        out = aug(feats, lengths)
        assert torch.equal(out[pad], feats[pad])  # padding untouched
        masked = out == 0.0
        assert not masked[pad].any()
        masked_any |= bool(masked.any())
        for b, n in enumerate(lengths.tolist()):
            m = masked[b, :n]
            full_bins = m.all(dim=0)  # bins masked in every frame = frequency masks
            assert int(full_bins.sum()) <= 2 * 27
            time_only = (m & ~full_bins[None, :]).any(dim=1)  # frames masked beyond the frequency masks
            assert int(time_only.sum()) <= 2 * int(0.05 * n)
    assert masked_any


def test_specaug_deterministic_resumable_and_identity_in_eval():
    feats, lengths, _ = feats_batch()
    a, b, c = SpecAugment(seed=5).train(), SpecAugment(seed=5).train(), SpecAugment(seed=6).train()
    out_a = a(feats, lengths)
    assert torch.equal(out_a, b(feats, lengths))
    assert not torch.equal(out_a, c(feats, lengths))
    state = a.generator.get_state()
    nxt = a(feats, lengths)
    a.generator.set_state(state)
    assert torch.equal(a(feats, lengths), nxt)  # checkpoint resume replays the same masks
    assert a.eval()(feats, lengths) is feats


def test_specaug_adaptive_count_and_time_warp():
    feats, lengths, pad = feats_batch()
    cfg = SpecAugmentConfig(freq_masks=0, time_masks=10, adaptive_time_mask_rate=0.02, time_width_ratio=0.05)
    out = SpecAugment(cfg, seed=1).train()(feats, lengths)
    assert not (out[3] == 0).any() and not (out[2] == 0).any()  # floor(0.02 x 37) = 0 masks
    warp = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0, time_warp=5), seed=2).train()
    warped = warp(feats, lengths)
    assert torch.equal(warped[pad], feats[pad]) and not torch.equal(warped, feats)
    assert torch.equal(warped[3], feats[3])  # too short to warp


def test_freq_warp_moves_a_spectral_peak_by_the_drawn_factor_and_keeps_padding():
    lengths = torch.tensor([50, 20])
    feats = torch.zeros(2, 50, 80)
    feats[:, :, 40] = 10.0  # a formant-like ridge at mel bin 40
    feats[1, 20:] = 99.0  # padding
    aug = SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0, freq_warp=0.1), seed=3).train()
    state = aug.generator.get_state()
    factor = 1.0 + (torch.rand(2, generator=torch.Generator().set_state(state), dtype=torch.float64) * 2 - 1) * 0.1
    out = aug(feats, lengths)
    assert torch.equal(out[1, 20:], feats[1, 20:])
    for b in range(2):
        # output bin i reads input bin i * a: the ridge moves to 40 / a (spread over the two nearest bins)
        peak = float((out[b, 0] * torch.arange(80)).sum() / out[b, 0].sum())
        assert peak == pytest.approx(40 / float(factor[b]), abs=0.6)
        assert torch.equal(out[b, 0], out[b, 5])  # the same warp on every frame of an utterance
    assert torch.equal(SpecAugment(SpecAugmentConfig(freq_masks=0, time_masks=0), seed=3).train()(feats, lengths), feats)


def test_fbank_writes_nothing_to_state_dict():
    assert Fbank().state_dict() == {}  # window and mel matrix are derived, never saved in model.pt
