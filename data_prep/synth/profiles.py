"""Size and condition profiles of the synthetic corpus: ``tiny`` (tests), ``demo`` (CPU demo), ``medium``, ``large``.

A profile is a validated ``SynthProfile``; to tune sizes, copy one with ``profile.model_copy(update=...)``
or load a YAML file with the same keys (``asr-kd prepare synth --profile my_profile.yaml``).
Durations are seconds, speeds/pitches use the units of ``data_prep.synth.voices.Voice``.
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from asr_kd.config import StrictModel, load_config
from asr_kd.errors import ConfigError

SPLITS = ("train_labeled", "train_unlabeled", "dev", "test")


class SplitSizes(StrictModel):
    """Number of utterances per split."""

    train_labeled: int = pydantic.Field(ge=1)
    train_unlabeled: int = pydantic.Field(ge=1)
    dev: int = pydantic.Field(ge=1)
    test: int = pydantic.Field(ge=1)


class VoiceCounts(StrictModel):
    """How many voices (= speakers) each group gets.

    - ``labeled``: voices of ``train_families`` used by train_labeled and dev;
    - ``unlabeled_new``: extra voices of ``train_families`` heard only in train_unlabeled;
    - ``unlabeled_accent``: voices of ``unlabeled_only_families`` heard only in train_unlabeled;
    - ``test_seen``: labeled voices that test reuses (in-domain, seen speakers);
    - ``test_new``: new voices of ``train_families`` (seen accent, unseen speaker);
    - ``test_unlabeled_accent``: new voices of ``unlabeled_only_families`` (accent seen only unlabeled);
    - ``test_unseen_accent``: voices of ``unseen_families`` (accent never heard in training).
    """

    labeled: int = pydantic.Field(ge=1)
    unlabeled_new: int = pydantic.Field(ge=0)
    unlabeled_accent: int = pydantic.Field(ge=0)
    test_seen: int = pydantic.Field(ge=0)
    test_new: int = pydantic.Field(ge=0)
    test_unlabeled_accent: int = pydantic.Field(ge=0)
    test_unseen_accent: int = pydantic.Field(ge=0)


class AugmentConfig(StrictModel):
    """Acoustic conditions added after synthesis (all drawn per utterance from its own RNG)."""

    sample_rate: int = 16000  # Hz of the written wav files
    lead_silence: tuple[float, float] = (0.05, 0.35)  # seconds of silence kept/added before speech
    tail_silence: tuple[float, float] = (0.10, 0.40)  # seconds after speech
    noise_prob: float = pydantic.Field(0.8, ge=0, le=1)  # fraction of utterances with additive noise
    snr_db: tuple[float, float] = (5.0, 30.0)  # uniform SNR range in dB
    noise_types: list[str] = ["white", "pink", "brown", "babble"]
    babble_talkers: tuple[int, int] = (3, 5)  # other synthesized sentences summed for babble
    reverb_prob: float = pydantic.Field(0.3, ge=0, le=1)  # fraction with a synthetic room response
    rt60: tuple[float, float] = (0.15, 0.7)  # seconds, exponential decay of the synthetic RIR
    level_dbfs: tuple[float, float] = (-32.0, -18.0)  # RMS level of the output (peak capped at -1 dBFS)

    @pydantic.field_validator("noise_types")
    @classmethod
    def _known_noise(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {"white", "pink", "brown", "babble"})
        if unknown or not value:
            raise ValueError(f"noise_types must be a non-empty subset of white, pink, brown, babble; got {value}")
        return value


class SynthProfile(StrictModel):
    """Everything that determines the synthetic corpus (with the seed)."""

    name: str
    sizes: SplitSizes
    voices: VoiceCounts
    train_families: list[str] = ["en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc",
                                 "flite-slt", "flite-awb", "flite-kal16"]
    unlabeled_only_families: list[str] = ["en-gb-x-gbcwmd"]
    unseen_families: list[str] = ["en-029", "flite-rms"]
    espeak_variants: list[str] = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                                  "klatt", "klatt2", "klatt3"]
    espeak_speed: tuple[int, int, int] = (140, 200, 10)  # words per minute: min, max, step
    espeak_pitch: tuple[int, int, int] = (25, 75, 5)  # 0..99: min, max, step
    flite_speed: tuple[int, int, int] = (85, 120, 5)  # percent of normal rate: min, max, step
    flite_pitch: tuple[int, int, int] = (85, 115, 5)  # percent of default F0: min, max, step
    max_words: int = pydantic.Field(16, ge=2)  # sentences longer than this are redrawn
    augment: AugmentConfig = AugmentConfig()

    @pydantic.model_validator(mode="after")
    def _disjoint_families(self) -> "SynthProfile":
        groups = {"train_families": self.train_families, "unlabeled_only_families": self.unlabeled_only_families,
                  "unseen_families": self.unseen_families}
        seen: dict[str, str] = {}
        for group, fams in groups.items():
            for fam in fams:
                if fam in seen:
                    raise ValueError(f"family {fam!r} is in both {seen[fam]} and {group}; held-out families must be disjoint")
                seen[fam] = group
        if not self.train_families:
            raise ValueError("train_families is empty")
        if self.voices.test_seen > self.voices.labeled:
            raise ValueError(f"voices.test_seen ({self.voices.test_seen}) > voices.labeled ({self.voices.labeled})")
        if (self.voices.unlabeled_accent or self.voices.test_unlabeled_accent) and not self.unlabeled_only_families:
            raise ValueError("unlabeled_accent voices requested but unlabeled_only_families is empty")
        if self.voices.test_unseen_accent and not self.unseen_families:
            raise ValueError("test_unseen_accent voices requested but unseen_families is empty")
        if not (self.voices.test_seen + self.voices.test_new + self.voices.test_unlabeled_accent + self.voices.test_unseen_accent):
            raise ValueError("the test split needs at least one voice")
        return self


TINY = SynthProfile(
    name="tiny",
    sizes=SplitSizes(train_labeled=60, train_unlabeled=150, dev=30, test=30),
    voices=VoiceCounts(labeled=6, unlabeled_new=3, unlabeled_accent=2, test_seen=2, test_new=2,
                       test_unlabeled_accent=1, test_unseen_accent=2),
    max_words=10,
)
# demo: sized for the whole CPU recipe (teacher, labeling, two students) in ~25 min on 2 cores:
# 4000 labeled utterances are about 3 h of audio, the unlabeled set 1.5x that. (Until 2026-12-02 the
# demo had 1000 labeled and 4000 unlabeled: a teacher that saw 0.75 h was barely better than its
# students. The teacher is data-limited, the students step-limited: with the same teacher steps, 4000
# labeled gave dev WER 30.9 % against 32.7 % with 3000; a KD student of 1500 steps did as well with the
# first 6000 unlabeled utterances as with 10000 (dev 44.10 vs 44.04 %), so the demo synthesizes and
# labels 6000; docs/experiments/demo-tuning-2026-12-02.md.)
DEMO = SynthProfile(
    name="demo",
    sizes=SplitSizes(train_labeled=4000, train_unlabeled=6000, dev=200, test=300),
    voices=VoiceCounts(labeled=24, unlabeled_new=12, unlabeled_accent=6, test_seen=6, test_new=6,
                       test_unlabeled_accent=4, test_unseen_accent=6),
    # milder conditions than the default so a CPU-sized teacher converges within the demo's budget
    augment=AugmentConfig(noise_prob=0.5, snr_db=(10.0, 30.0), reverb_prob=0.15),
)
# medium: the demo's voices and conditions with 2x the labeled and 4x the unlabeled audio (~24 h), for the
# "longer run" between demo and large (hours on 2 cores). Utterance i of a split is the same in every
# profile with these voices, so demo-sized subsets of it are demo utterances (test is identical).
MEDIUM = DEMO.model_copy(update={"name": "medium", "sizes": SplitSizes(train_labeled=8000, train_unlabeled=24000,
                                                                      dev=400, test=300)})
LARGE = SynthProfile(
    name="large",
    sizes=SplitSizes(train_labeled=20000, train_unlabeled=200000, dev=2000, test=2000),
    voices=VoiceCounts(labeled=80, unlabeled_new=80, unlabeled_accent=30, test_seen=12, test_new=12,
                       test_unlabeled_accent=8, test_unseen_accent=12),
    max_words=20,
)
PROFILES: dict[str, SynthProfile] = {p.name: p for p in (TINY, DEMO, MEDIUM, LARGE)}


def get_profile(name_or_path: str) -> SynthProfile:
    """A built-in profile by name, or a YAML file with ``SynthProfile`` keys."""
    if name_or_path in PROFILES:
        return PROFILES[name_or_path]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_config(path, SynthProfile)
    raise ConfigError(f"unknown synth profile {name_or_path!r}: use one of {sorted(PROFILES)} or a YAML file")


def with_sizes(profile: SynthProfile, overrides: list[str]) -> SynthProfile:
    """``profile`` with split sizes replaced by ``SPLIT=N`` strings (``asr-kd prepare synth --size``).
    The name gains the overrides (``demo+train_unlabeled=56000``) so the manifest says what was made."""
    if not overrides:
        return profile
    sizes = profile.sizes.model_dump()
    for item in overrides:
        split, sep, value = item.partition("=")
        if not sep or split not in SPLITS:
            raise ConfigError(f"--size {item!r}: expected SPLIT=N with SPLIT one of {', '.join(SPLITS)}")
        try:
            sizes[split] = int(value)
        except ValueError:
            raise ConfigError(f"--size {item!r}: N must be a whole number of utterances") from None
        if sizes[split] < 1:
            raise ConfigError(f"--size {item!r}: N must be at least 1")
    return profile.model_copy(update={"sizes": SplitSizes(**sizes),
                                      "name": "+".join([profile.name, *overrides])})
