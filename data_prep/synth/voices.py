"""Synthetic speakers: a voice = (engine, voice name, variant, speed, pitch); one voice is one speaker.

Engines (Debian packages ``espeak-ng`` and ``flite``; no network, no model downloads):

- **espeak-ng** — ``name`` is an English language voice (``en-gb``, ``en-us``, ``en-gb-scotland``,
  ``en-029`` ...; MBROLA voices are skipped because their databases are not installed), ``variant``
  one of the files in ``espeak-ng-data/voices/!v`` (``m1``, ``f2``, ``klatt`` ...), ``speed`` in
  words per minute (``-s``), ``pitch`` 0..99 (``-p``). Output is 22050 Hz.
- **flite** — ``name`` is a built-in voice (``slt``, ``awb``, ``kal16``, ``rms``), no variant,
  ``speed`` in percent of the voice's normal rate (``duration_stretch = 100 / speed``), ``pitch`` in
  percent of the voice's default mean F0 (``int_f0_target_mean``). Output is 16 kHz (``kal``: 8 kHz).

A voice's *family* is its accent/timbre group (``en-gb-scotland`` or ``flite-slt``); splits hold out
whole families to make accent mismatch measurable. Speaker ids are sortable, fixed-width and safe
(``espk-en-gb-scotland-f2-s160-p40``, ``flite-slt-s110-p095``) and no speaker id is a prefix of
another, so ``<spk>-<split>-<index>`` utterance ids keep utt2spk and spk2utt in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from asr_kd.errors import AsrKdError

ESPEAK = "espeak-ng"
FLITE = "flite"

# Default mean F0 (Hz) of the flite voices, measured with librosa.pyin (median over a sentence):
# flite exposes no query for it, and a pitch in percent keeps male and female voices in their range.
# Voices not listed (rms ignores int_f0_target_mean; kal is 8 kHz) are used at their default pitch.
FLITE_F0_HZ = {"slt": 171.0, "awb": 129.0, "kal16": 88.0}
# flite voices that are not general-purpose English voices: awb_time is a limited-domain clock voice.
FLITE_SKIP = {"awb_time"}


class TTSUnavailableError(AsrKdError):
    """A TTS engine, voice or variant needed by the synthetic corpus is not installed."""


@dataclasses.dataclass(frozen=True, order=True)
class Voice:
    """One synthetic speaker. Units of ``speed``/``pitch`` depend on ``engine`` (see module doc)."""

    engine: str  # "espeak-ng" or "flite"
    name: str  # espeak language voice ("en-gb-scotland") or flite voice ("slt")
    variant: str  # espeak variant ("f2", "klatt"); "" for none
    speed: int  # espeak: words per minute; flite: percent of normal rate
    pitch: int  # espeak: 0..99; flite: percent of default mean F0

    @property
    def family(self) -> str:
        """Accent/timbre group: the espeak language voice, or ``flite-<voice>``."""
        return self.name if self.engine == ESPEAK else f"flite-{self.name}"

    @property
    def speaker_id(self) -> str:
        if self.engine == ESPEAK:
            variant = f"-{self.variant}" if self.variant else ""
            return f"espk-{self.name}{variant}-s{self.speed:03d}-p{self.pitch:02d}"
        return f"flite-{self.name}-s{self.speed:03d}-p{self.pitch:03d}"

    def command(self, text: str, out_wav: str | Path) -> list[str]:
        """The argv that synthesizes ``text`` into ``out_wav`` (no shell involved)."""
        if self.engine == ESPEAK:
            voice = f"{self.name}+{self.variant}" if self.variant else self.name
            return [ESPEAK, "-v", voice, "-s", str(self.speed), "-p", str(self.pitch), "-w", str(out_wav), text]
        cmd = [FLITE, "-voice", self.name, "--setf", f"duration_stretch={100.0 / self.speed:.4f}"]
        if self.name in FLITE_F0_HZ:
            cmd += ["--setf", f"int_f0_target_mean={FLITE_F0_HZ[self.name] * self.pitch / 100.0:.1f}"]
        return cmd + ["-t", text, "-o", str(out_wav)]

    def to_dict(self) -> dict[str, object]:
        return {"speaker": self.speaker_id, "family": self.family, **dataclasses.asdict(self)}


def _run(cmd: list[str], ok_codes: tuple[int, ...] = (0,)) -> str:
    if shutil.which(cmd[0]) is None:
        raise TTSUnavailableError(f"{cmd[0]} is not installed; install the Debian package ({cmd[0]}) or conda-forge's")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode not in ok_codes:
        raise TTSUnavailableError(f"'{' '.join(cmd)}' failed (exit {proc.returncode}): {proc.stderr.strip()[:300]}")
    return proc.stdout


@functools.lru_cache(maxsize=1)
def espeak_data_dir() -> Path:
    """The espeak-ng data folder, as ``espeak-ng --version`` reports it ("Data at: ...")."""
    match = re.search(r"Data at:\s*(\S+)", _run([ESPEAK, "--version"]))
    if not match:
        raise TTSUnavailableError("cannot find espeak-ng's data folder in 'espeak-ng --version'")
    return Path(match.group(1))


@functools.lru_cache(maxsize=1)
def espeak_english_voices() -> tuple[str, ...]:
    """English espeak-ng language voices installed (``en-gb``, ``en-029`` ...); MBROLA ones excluded."""
    names: set[str] = set()
    for line in _run([ESPEAK, "--voices=en"]).splitlines()[1:]:
        fields = line.split()
        # Pty Language Age/Gender VoiceName File [Other languages]
        if len(fields) < 5 or fields[1] == "variant":
            continue
        if fields[4].startswith("mb/"):  # MBROLA: needs separately installed databases
            continue
        if fields[1].startswith("en"):
            names.add(fields[1])
    return tuple(sorted(names))


@functools.lru_cache(maxsize=1)
def espeak_variants() -> tuple[str, ...]:
    """Variant names under ``espeak-ng-data/voices/!v`` (espeak-ng silently ignores unknown ones)."""
    folder = espeak_data_dir() / "voices" / "!v"
    if not folder.is_dir():
        raise TTSUnavailableError(f"espeak-ng variants folder not found: {folder}")
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


@functools.lru_cache(maxsize=1)
def flite_voices() -> tuple[str, ...]:
    """flite's built-in voices (``flite -lv``), minus limited-domain ones."""
    out = _run([FLITE, "-lv"])
    match = re.search(r"Voices available:(.*)", out)
    if not match:
        raise TTSUnavailableError(f"cannot parse 'flite -lv' output: {out.strip()[:200]}")
    return tuple(sorted(v for v in match.group(1).split() if v not in FLITE_SKIP))


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """Versions of the TTS engines, recorded in the corpus manifest."""
    espeak = _run([ESPEAK, "--version"]).strip().split("  Data at")[0].strip()
    flite_out = _run([FLITE, "--version"], ok_codes=(0, 1))  # flite 2.2 exits 1 after printing its version
    match = re.search(r"version:\s*(\S+)", flite_out)
    return {"espeak-ng": espeak, "flite": match.group(1) if match else flite_out.strip().splitlines()[-1]}


def available_families() -> tuple[str, ...]:
    """Every family that can be synthesized on this machine."""
    return tuple(sorted(espeak_english_voices() + tuple(f"flite-{v}" for v in flite_voices())))


def check_families(families: list[str], variants: list[str]) -> None:
    """Raise ``TTSUnavailableError`` naming any family or espeak variant this machine lacks."""
    have = set(available_families())
    missing = [f for f in families if f not in have]
    if missing:
        raise TTSUnavailableError(f"voice families not installed: {missing}; available: {sorted(have)}")
    missing_var = [v for v in variants if v not in set(espeak_variants())]
    if missing_var:
        raise TTSUnavailableError(f"espeak-ng variants not installed: {missing_var} (see {espeak_data_dir() / 'voices' / '!v'})")


@dataclasses.dataclass(frozen=True)
class VoiceRanges:
    """Sampling ranges (inclusive, with steps) for new voices; units as in ``Voice``."""

    espeak_variants: tuple[str, ...]
    espeak_speed: tuple[int, int, int]  # (min, max, step) words per minute
    espeak_pitch: tuple[int, int, int]  # (min, max, step) 0..99
    flite_speed: tuple[int, int, int]  # (min, max, step) percent of normal rate
    flite_pitch: tuple[int, int, int]  # (min, max, step) percent of default F0


def _draw(rng: np.random.Generator, lo_hi_step: tuple[int, int, int]) -> int:
    lo, hi, step = lo_hi_step
    return int(lo + step * rng.integers(0, (hi - lo) // step + 1))


def random_voice(family: str, rng: np.random.Generator, ranges: VoiceRanges) -> Voice:
    """A voice of ``family`` with variant, speed and pitch drawn from ``ranges``."""
    if family.startswith("flite-"):
        name = family[len("flite-"):]
        pitch = _draw(rng, ranges.flite_pitch) if name in FLITE_F0_HZ else 100
        return Voice(FLITE, name, "", _draw(rng, ranges.flite_speed), pitch)
    variant = ranges.espeak_variants[int(rng.integers(0, len(ranges.espeak_variants)))]
    return Voice(ESPEAK, family, variant, _draw(rng, ranges.espeak_speed), _draw(rng, ranges.espeak_pitch))


def sample_voices(families: list[str], count: int, rng: np.random.Generator, ranges: VoiceRanges,
                  taken: set[str]) -> list[Voice]:
    """``count`` new voices cycling over ``families`` (so each family is covered), none in ``taken``.

    ``taken`` (speaker ids) is updated. Raises ``AsrKdError`` if the ranges cannot give that many
    distinct voices.
    """
    if count and not families:
        raise AsrKdError(f"need {count} voice(s) but the list of voice families is empty")
    voices: list[Voice] = []
    tries = 0
    while len(voices) < count:
        family = families[len(voices) % len(families)]
        voice = random_voice(family, rng, ranges)
        tries += 1
        if voice.speaker_id in taken:
            if tries > 1000 * (count + 1):
                raise AsrKdError(f"cannot draw {count} distinct voices from families {families}: widen the speed/pitch ranges")
            continue
        taken.add(voice.speaker_id)
        voices.append(voice)
    return voices
