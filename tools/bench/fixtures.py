"""Inputs for the benchmarks when the user gives none: a model dir with seeded random weights and a data
dir of synthetic audio. Throughput and sizes do not depend on what the audio says or on trained
weights; distribution-shape figures (KL of top-k) do, and the benchmarks say which model was used.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr_kd.data.cmvn import GlobalCMVN
from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.data.features import FbankConfig
from asr_kd.data.units import CharTokenizer
from asr_kd.models import PRESETS, build_model, parse_model_config
from asr_kd.models.model_dir import save_model_dir

# lower-case letters, digits, space and apostrophe: 38 units + blank, enough for top-32
UNITS_TEXT = [string.ascii_lowercase + string.digits + " '"]
WORDS = ("turn on the light play some music what time is it set a timer for ten minutes call my mother "
         "open the door good morning the quick brown fox jumps over a lazy dog").split()


def random_model_dir(out: Path, preset: str, seed: int = 0) -> Path:
    """Save ``PRESETS[preset]`` (or the ``model:`` section of a training config YAML, e.g.
    ``recipes/librispeech/conf/teacher.yaml``) with seeded random weights, character units (39) and a
    fixed CMVN."""
    if (out / "fingerprint.txt").is_file():
        return out
    torch.manual_seed(seed)
    tok = CharTokenizer.build(UNITS_TEXT)
    if preset.endswith((".yaml", ".yml")):
        import yaml

        cfg = parse_model_config(yaml.safe_load(Path(preset).read_text())["model"], source=preset)
    else:
        cfg = parse_model_config(PRESETS[preset])
    model = build_model(cfg, tok.vocab_size).eval()
    cmvn = GlobalCMVN(mean=torch.full((80,), -8.0), std=torch.full((80,), 4.0))
    save_model_dir(out, model, cfg, tok, cmvn, FbankConfig())
    return out


def synthetic_wave(seconds: float, rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """Speech-like test signal: a vibrato tone with harmonics, syllable-rate amplitude modulation, noise."""
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 100 + 120 * rng.random()
    phase = 2 * np.pi * f0 * (t + 0.02 * np.sin(2 * np.pi * 4 * t))
    voiced = sum(np.sin(h * phase) / h for h in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * rng.random()) * t) ** 2
    return (0.1 * voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def synthetic_data(out: Path, n: int, min_s: float = 2.0, max_s: float = 6.0, seed: int = 0, with_text: bool = False) -> Path:
    """Data dir ``out/data`` with ``n`` utterances of ``min_s``-``max_s`` seconds (uniform), 16 kHz PCM."""
    d = out / "data"
    if (d / "wav.scp").is_file():
        return d
    rng = np.random.default_rng(seed)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk, text, utt2dur = {}, {}, {}, {}
    for i in range(n):
        spk = f"spk{i % 8}"
        utt = f"{spk}-{i:05d}"
        seconds = float(rng.uniform(min_s, max_s))
        wave = synthetic_wave(seconds, rng)
        path = audio / f"{utt}.wav"
        sf.write(path, wave, 16000, subtype="PCM_16")
        wav_scp[utt], utt2spk[utt], utt2dur[utt] = str(path), spk, wave.size / 16000
        text[utt] = " ".join(rng.choice(WORDS, size=max(1, int(seconds * 2))))
    write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk, text=text if with_text else None, utt2dur=utt2dur), d)
    return d
