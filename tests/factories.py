"""Small, deterministic builders shared by the reliability and security tests (and the benchmarks).

Everything here is seeded and fast on one CPU thread: a tiny teacher model dir with random weights,
data dirs of synthetic tone-sweep wavs (with or without transcripts), bad-audio variants, a tiny
training config and a helper that runs ``asr-kd`` in a subprocess (so a test can SIGKILL it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import yaml

from asr_kd.data.cmvn import GlobalCMVN
from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.data.features import FbankConfig
from asr_kd.data.units import CharTokenizer
from asr_kd.models import PRESETS, build_model, parse_model_config
from asr_kd.models.model_dir import save_model_dir

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "hello world", "the quick brown fox", "jumps over a lazy dog", "turn on the light", "play some music",
    "what time is it", "set a timer", "call my mother", "open the door", "good morning",
]


def make_teacher(out: Path, seed: int = 0, preset: str = "tiny_conformer", texts: list[str] | None = None) -> Path:
    """A model dir with seeded random weights (``PRESETS[preset]``) and character units of ``texts``."""
    torch.manual_seed(seed)
    tok = CharTokenizer.build(texts or SENTENCES)
    cfg = parse_model_config(PRESETS[preset])
    model = build_model(cfg, tok.vocab_size).eval()
    with torch.no_grad():
        model.output.bias.add_(torch.linspace(-1, 1, tok.vocab_size))  # a spread of ranks, not ties
    cmvn = GlobalCMVN(mean=torch.full((80,), -8.0), std=torch.full((80,), 4.0))
    save_model_dir(out, model, cfg, tok, cmvn, FbankConfig())
    return out


def tone(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A deterministic frequency-modulated tone plus a little noise, float32 in [-0.4, 0.4]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    f0 = 120 + 80 * rng.random()
    wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.3 * np.sin(2 * np.pi * 1.5 * t))) + 0.05 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_wav(path: Path, seconds: float, seed: int, sr: int = 16000) -> Path:
    sf.write(path, tone(seconds, seed, sr), sr, subtype="PCM_16")
    return path


def make_data(root: Path, n: int, with_text: bool = False, prefix: str = "", min_s: float = 0.4, step_s: float = 0.15,
              seed: int = 0) -> Path:
    """Data dir ``root/data`` of ``n`` tone wavs (0.4-1.3 s by default), 3 speakers, optional text."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    wav_scp, utt2spk, text = {}, {}, {}
    for i in range(n):
        spk = f"{prefix}spk{i % 3}"
        utt = f"{spk}-utt{i:03d}"
        wav_scp[utt] = str(write_wav(audio / f"{utt}.wav", min_s + step_s * (i % 7), seed=seed + i))
        utt2spk[utt] = spk
        text[utt] = SENTENCES[i % len(SENTENCES)]
    d = root / "data"
    write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk, text=text if with_text else None), d)
    return d


BAD_KINDS = ("missing", "empty", "corrupt", "nan", "rate8k", "toolong")


def add_bad_audio(data_dir: Path, audio_dir: Path, long_seconds: float = 600.0) -> dict[str, str]:
    """Add one utterance of each of ``BAD_KINDS`` to ``data_dir`` (rewritten in place).

    Returns ``{utt: kind}``. ``rate8k`` is a valid 8 kHz file (resampled, so it must be *labeled*);
    ``toolong`` is a valid 16 kHz file of ``long_seconds`` (10 min: beyond any max_seconds we use).
    """
    from asr_kd.data.datadir import read_data_dir

    data = read_data_dir(data_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    bad: dict[str, str] = {}
    wav_scp, utt2spk = dict(data.wav_scp), dict(data.utt2spk)
    text = dict(data.text) if data.text is not None else None

    def add(kind: str, path: Path) -> None:
        utt = f"bad-{kind}"
        wav_scp[utt], utt2spk[utt], bad[utt] = str(path), "bad", kind
        if text is not None:
            text[utt] = "hello world"

    add("missing", audio_dir / "does-not-exist.wav")
    (audio_dir / "empty.wav").write_bytes(b"")
    add("empty", audio_dir / "empty.wav")
    (audio_dir / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    add("corrupt", audio_dir / "corrupt.wav")
    nan = tone(1.0, 99)
    nan[100:200] = np.nan
    sf.write(audio_dir / "nan.wav", nan, 16000, subtype="FLOAT")
    add("nan", audio_dir / "nan.wav")
    sf.write(audio_dir / "rate8k.wav", tone(1.0, 98, sr=8000), 8000, subtype="PCM_16")
    add("rate8k", audio_dir / "rate8k.wav")
    # 10 minutes of low-level noise: PCM_16 at 16 kHz = 19.2 MB, written once per test module
    rng = np.random.default_rng(97)
    sf.write(audio_dir / "toolong.wav", (0.01 * rng.standard_normal(int(long_seconds * 16000))).astype(np.float32), 16000,
             subtype="PCM_16")
    add("toolong", audio_dir / "toolong.wav")
    # utt2dur/segments are not written: durations come from the file headers (a bad file has none)
    write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk, text=text), data_dir)
    return bad


def tiny_train_config(path: Path, train: list[str], *, unlabeled: list[str] | None = None, store: str | None = None,
                      from_model: str | None = None, model: str = "tiny_streaming_conformer", max_steps: int = 8,
                      checkpoint_every: int = 2, max_frames: int = 400, max_seconds: float = 30.0,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write a training YAML for a tiny model that takes seconds on one CPU thread."""
    conf: dict[str, Any] = {
        "model": dict(PRESETS[model]),
        "units": {"kind": "char", **({"from_model": from_model} if from_model else {})},
        "specaug": {"freq_masks": 1, "freq_width": 5, "time_masks": 1},
        "data": {"train": train, "unlabeled": unlabeled or [], "max_seconds": max_seconds, "min_seconds": 0.1,
                 "cmvn_max_utts": 50},
        "batch": {"max_frames": max_frames, "num_workers": 0},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"max_epochs": 50, "max_steps": max_steps, "checkpoint_every_steps": checkpoint_every,
                  "keep_last_checkpoints": 2, "log_every_steps": 1, "seed": 3, "device": "cpu", "threads": 1},
    }
    if store:
        conf["kd"] = {"store": store, "ctc_weight": 0.3, "temperature": 1.0, "unlabeled_per_labeled": 1.0}
    for key, value in (extra or {}).items():
        section, _, name = key.partition(".")
        conf.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled",
           "KALDI_ROOT": "/nonexistent-kaldi-root", "ASR_KD_LOG": "WARNING"}
    env.update(extra)
    return env


def asr_kd(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m asr_kd.cli ARGS`` in a subprocess (one thread) and return the finished process."""
    return subprocess.run([sys.executable, "-m", "asr_kd.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=cli_env(**env))


def asr_kd_popen(*args: str, **env: str) -> subprocess.Popen:
    """Start ``python -m asr_kd.cli ARGS`` without waiting (a test may SIGKILL it)."""
    return subprocess.Popen([sys.executable, "-m", "asr_kd.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=cli_env(**env))


def untrained_copy(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """The same model dir with freshly initialized weights (the 'untrained self')."""
    from asr_kd.models import build_model
    from asr_kd.models.model_dir import load_model_dir, save_model_dir

    loaded = load_model_dir(model_dir)
    torch.manual_seed(seed)
    fresh = build_model(loaded.model_config, loaded.tokenizer.vocab_size)
    save_model_dir(out, fresh, loaded.model_config, loaded.tokenizer, loaded.cmvn, loaded.fbank_config)
    return out
