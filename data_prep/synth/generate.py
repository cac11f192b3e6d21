"""Generate the synthetic voice-assistant corpus: plan, render in parallel, write data dirs.

Layout written under ``OUT``::

    OUT/train_labeled/  OUT/train_unlabeled/  OUT/dev/  OUT/test/     Kaldi data dirs
    OUT/audio/<split>/<speaker>/<utt>.wav                             16-bit PCM, mono, 16 kHz
    OUT/audio/ledger.tsv        utt, spec hash, samples of every finished wav (the resume record)
    OUT/synth_manifest.json     profile, seed, voices per split, counts, hours, engine versions
    OUT/rejects.tsv             utterances whose synthesis failed twice, with the reason
    OUT/.done                   written last

Determinism: every utterance is planned from its own RNG seeded by ``(tag, seed, split, index)``: text,
voice, silences, noise type/SNR, babble talkers, reverb and level, plus a seed for the noise samples.
The rendered bytes therefore do not depend on ``jobs`` or on the order workers finish.

Resume: an utterance is skipped when the ledger records the same spec hash and its wav exists with a
valid header and the recorded number of samples; anything else is (re)rendered. Data dirs are
written only at the end, each into a temporary folder that then replaces the old one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from asr_kd.data.datadir import DataDir, write_data_dir
from asr_kd.errors import AsrKdError
from data_prep.synth import augment
from data_prep.synth.profiles import SPLITS, SynthProfile
from data_prep.synth.sentences import SentenceGenerator
from data_prep.synth.tts import TTSFailedError, synthesize
from data_prep.synth.voices import Voice, VoiceRanges, check_families, sample_voices, tool_versions

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when rendering changes, so resumed corpora re-render
SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
# first element of every SeedSequence entropy: keeps the voice RNG and utterance RNGs apart (numpy
# treats trailing zeros of an entropy list as absent, so lists of different lengths can collide)
RNG_TAG_VOICES, RNG_TAG_UTT = 1, 2


class SynthCorpusError(AsrKdError):
    """The output folder holds a different synthetic corpus, or the corpus cannot be generated."""


# ------------------------------------------------------------------------------------ voices


@dataclasses.dataclass(frozen=True)
class VoicePlan:
    """Voices of every group (see ``profiles.VoiceCounts``), drawn once per seed."""

    labeled: tuple[Voice, ...]
    unlabeled_new: tuple[Voice, ...]
    unlabeled_accent: tuple[Voice, ...]
    test_seen: tuple[Voice, ...]
    test_new: tuple[Voice, ...]
    test_unlabeled_accent: tuple[Voice, ...]
    test_unseen_accent: tuple[Voice, ...]

    def split_voices(self, split: str) -> tuple[Voice, ...]:
        """Voices of a split, sorted by speaker id."""
        groups = {
            "train_labeled": self.labeled,
            "dev": self.labeled,
            "train_unlabeled": self.labeled + self.unlabeled_new + self.unlabeled_accent,
            "test": self.test_seen + self.test_new + self.test_unlabeled_accent + self.test_unseen_accent,
        }[split]
        return tuple(sorted(groups, key=lambda v: v.speaker_id))

    def test_conditions(self) -> dict[str, str]:
        """Test speaker id -> ``seen_voice`` | ``new_voice`` | ``unlabeled_accent`` | ``unseen_accent``."""
        out: dict[str, str] = {}
        for cond, voices in (("seen_voice", self.test_seen), ("new_voice", self.test_new),
                             ("unlabeled_accent", self.test_unlabeled_accent), ("unseen_accent", self.test_unseen_accent)):
            out.update({v.speaker_id: cond for v in voices})
        return dict(sorted(out.items()))


def plan_voices(profile: SynthProfile, seed: int) -> VoicePlan:
    """Draw every voice group from ``seed``; speaker ids are unique across groups.

    ``labeled`` cycles over ``train_families`` (in a seeded order); ``unlabeled_new`` continues the cycle so families
    that the labeled voices did not reach are heard in train_unlabeled; ``test_new`` uses only
    families present in train_labeled (seen accent, new speaker).
    """
    rng = np.random.default_rng([RNG_TAG_VOICES, seed])
    ranges = VoiceRanges(tuple(profile.espeak_variants), profile.espeak_speed, profile.espeak_pitch,
                         profile.flite_speed, profile.flite_pitch)
    counts = profile.voices
    taken: set[str] = set()
    # seeded family order, so a profile with fewer labeled voices than families still mixes engines
    fams = [profile.train_families[i] for i in rng.permutation(len(profile.train_families))]
    labeled = sample_voices(fams, counts.labeled, rng, ranges, taken)
    k = counts.labeled % len(fams)
    unlabeled_new = sample_voices(fams[k:] + fams[:k], counts.unlabeled_new, rng, ranges, taken)
    unlabeled_accent = sample_voices(list(profile.unlabeled_only_families), counts.unlabeled_accent, rng, ranges, taken)
    seen_fams = [f for f in fams if f in {v.family for v in labeled}]
    test_new = sample_voices(seen_fams, counts.test_new, rng, ranges, taken)
    test_unl = sample_voices(list(profile.unlabeled_only_families), counts.test_unlabeled_accent, rng, ranges, taken)
    test_unseen = sample_voices(list(profile.unseen_families), counts.test_unseen_accent, rng, ranges, taken)
    order = rng.permutation(len(labeled))
    test_seen = [labeled[i] for i in sorted(order[: counts.test_seen])]
    return VoicePlan(tuple(labeled), tuple(unlabeled_new), tuple(unlabeled_accent), tuple(test_seen),
                     tuple(test_new), tuple(test_unl), tuple(test_unseen))


# ------------------------------------------------------------------------------------ utterances


@dataclasses.dataclass(frozen=True)
class UttSpec:
    """Everything that determines one utterance's audio (times in seconds, levels in dB)."""

    utt_id: str
    split: str
    index: int
    voice: Voice
    text: str
    sample_rate: int  # Hz
    lead_s: float  # silence before speech
    tail_s: float  # silence after speech
    rt60: float  # 0.0 = no reverberation
    noise: str  # "none", "white", "pink", "brown" or "babble"
    snr_db: float
    babble: tuple[tuple[Voice, str], ...]  # (voice, sentence) of each babble talker
    level_dbfs: float
    noise_seed: int

    @property
    def speaker(self) -> str:
        return self.voice.speaker_id

    def to_json(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["babble"] = [[dataclasses.asdict(v), t] for v, t in self.babble]
        return d

    @property
    def spec_hash(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **self.to_json()}, sort_keys=True)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]

    def wav_path(self, out_dir: Path) -> Path:
        return out_dir / "audio" / self.split / self.speaker / f"{self.utt_id}.wav"


def _r(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def plan_split(profile: SynthProfile, seed: int, split: str, voices: tuple[Voice, ...],
               sentences: SentenceGenerator) -> list[UttSpec]:
    """Specs of every utterance of ``split``: utterance ``i`` is spoken by ``voices[i % len(voices)]``
    and everything else is drawn from ``default_rng([RNG_TAG_UTT, seed, split, i])``."""
    n = getattr(profile.sizes, split)
    width = max(5, len(str(n - 1)))
    aug = profile.augment
    specs = []
    for i in range(n):
        rng = np.random.default_rng([RNG_TAG_UTT, seed, SPLIT_INDEX[split], i])
        voice = voices[i % len(voices)]
        text = sentences.sentence(rng)
        for _ in range(100):
            if len(text.split()) <= profile.max_words:
                break
            text = sentences.sentence(rng)
        lead, tail = _r(rng.uniform(*aug.lead_silence)), _r(rng.uniform(*aug.tail_silence))
        rt60 = _r(rng.uniform(*aug.rt60)) if rng.random() < aug.reverb_prob else 0.0
        noise, snr, talkers = "none", 0.0, ()
        if rng.random() < aug.noise_prob:
            noise = aug.noise_types[int(rng.integers(0, len(aug.noise_types)))]
            snr = _r(rng.uniform(*aug.snr_db), 2)
            if noise == "babble":
                n_talk = int(rng.integers(aug.babble_talkers[0], aug.babble_talkers[1] + 1))
                talkers = tuple((voices[int(rng.integers(0, len(voices)))], sentences.sentence(rng)) for _ in range(n_talk))
        level = _r(rng.uniform(*aug.level_dbfs), 2)
        noise_seed = int(rng.integers(0, 2**62))
        specs.append(UttSpec(f"{voice.speaker_id}-{split}-{i:0{width}d}", split, i, voice, text, aug.sample_rate,
                             lead, tail, rt60, noise, snr, talkers, level, noise_seed))
    return specs


# ------------------------------------------------------------------------------------ rendering


@dataclasses.dataclass(frozen=True)
class RenderResult:
    utt_id: str
    num_samples: int  # 0 when rejected
    error: str | None = None


def _synthesize_retry(voice: Voice, text: str, sr: int) -> np.ndarray:
    """Synthesize, retrying once on failure (engines occasionally fail under heavy load)."""
    try:
        return synthesize(voice, text, sr)
    except TTSFailedError:
        return synthesize(voice, text, sr)


def render_audio(spec: UttSpec) -> np.ndarray:
    """The utterance's samples (float32, ``spec.sample_rate`` Hz). Raises ``TTSFailedError``."""
    sr = spec.sample_rate
    x = augment.trim_and_pad(_synthesize_retry(spec.voice, spec.text, sr), sr, spec.lead_s, spec.tail_s)
    rng = np.random.default_rng(spec.noise_seed)
    if spec.rt60 > 0:
        x = augment.reverberate(x, augment.synthetic_rir(sr, spec.rt60, rng))
    if spec.noise == "babble":
        talkers = [_synthesize_retry(v, t, sr) for v, t in spec.babble]
        x = augment.add_noise(x, augment.babble(len(x), talkers, rng), spec.snr_db)
    elif spec.noise != "none":
        x = augment.add_noise(x, augment.colored_noise(len(x), spec.noise, rng), spec.snr_db)
    return augment.set_level(x, spec.level_dbfs)


def render_utterance(spec: UttSpec, out_dir: str) -> RenderResult:
    """Render one utterance into its wav (temp file + rename, so a wav that exists is complete)."""
    path = spec.wav_path(Path(out_dir))
    try:
        audio = render_audio(spec)
    except TTSFailedError as exc:
        return RenderResult(spec.utt_id, 0, f"tts failed twice: {exc}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    sf.write(tmp, audio, spec.sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return RenderResult(spec.utt_id, int(len(audio)))


def _render_batch(specs: list[UttSpec], out_dir: str) -> list[RenderResult]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return [render_utterance(s, out_dir) for s in specs]


# ------------------------------------------------------------------------------------ resume


def read_ledger(path: Path) -> dict[str, tuple[str, int]]:
    """``utt -> (spec hash, samples)`` from the ledger; a torn last line (crash) is ignored."""
    ledger: dict[str, tuple[str, int]] = {}
    if not path.is_file():
        return ledger
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].isdigit():
            ledger[fields[0]] = (fields[1], int(fields[2]))
    return ledger


def _ends_torn(path: Path) -> bool:
    """True if a non-empty file does not end with a newline."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def is_done(spec: UttSpec, out_dir: Path, ledger: dict[str, tuple[str, int]]) -> int:
    """Samples of the finished wav of ``spec``, or 0 if it must be (re)rendered."""
    entry = ledger.get(spec.utt_id)
    if entry is None or entry[0] != spec.spec_hash:
        return 0
    try:
        info = sf.info(str(spec.wav_path(out_dir)))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0
    if info.frames != entry[1] or info.samplerate != spec.sample_rate or info.channels != 1 or info.subtype != "PCM_16":
        return 0
    return entry[1]


# ------------------------------------------------------------------------------------ corpus


@dataclasses.dataclass
class SynthSummary:
    """What ``generate_corpus`` did. Hours are audio hours of the written data dirs."""

    out_dir: Path
    utterances: dict[str, int]
    hours: dict[str, float]
    generated: int  # wavs rendered by this run
    skipped: int  # wavs found finished (resume)
    rejects: int
    seconds: float  # wall time

    def line(self) -> str:
        per = ", ".join(f"{s} {self.utterances[s]}" for s in SPLITS)
        return (f"prepare synth: wrote {len(SPLITS)} data dirs under {self.out_dir} ({per} utterances; "
                f"{sum(self.hours.values()):.2f} h); rendered {self.generated}, reused {self.skipped}, "
                f"rejects {self.rejects}; {self.seconds:.0f} s")


def _request(profile: SynthProfile, seed: int, tools: dict[str, str]) -> dict[str, object]:
    """What determines the corpus bytes: generator version, seed, profile and the TTS engine versions."""
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "tools": tools, "profile": profile.model_dump(mode="json")}


def _check_out_dir(out_dir: Path, request: dict[str, object]) -> None:
    """Refuse to mix two corpora in one folder (their wavs would be mixed in ``audio/``)."""
    req_path = out_dir / "synth_request.json"
    if req_path.is_file():
        try:
            old = json.loads(req_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SynthCorpusError(f"{req_path}: unreadable ({exc}); delete {out_dir} and generate again") from None
        profile_name = request["profile"]["name"]  # type: ignore[index]
        if old != request:
            raise SynthCorpusError(
                f"{out_dir} already holds a synthetic corpus made with another profile/seed/version "
                f"(profile {old.get('profile', {}).get('name')!r}, seed {old.get('seed')}, TTS {old.get('tools')}; "
                f"now: profile {profile_name!r}, seed {request['seed']}, TTS {request['tools']}); "
                "use another --out or delete that folder")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(req_path, request)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _chunks(items: list[UttSpec], size: int) -> Iterator[list[UttSpec]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _render_all(todo: list[UttSpec], out_dir: Path, jobs: int, progress: bool, total: int,
                done_before: int, sample_rate: int) -> Iterable[RenderResult]:
    """Yield results as they finish, with a tqdm bar (utterances, audio hours, ETA)."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done_before, unit="utt", desc="synth", disable=not progress, dynamic_ncols=True)
    rendered_s = 0.0

    def tick(results: list[RenderResult]) -> None:
        nonlocal rendered_s
        rendered_s += sum(r.num_samples for r in results) / sample_rate
        bar.set_postfix_str(f"{rendered_s / 3600.0:.2f} h rendered", refresh=False)
        bar.update(len(results))

    try:
        if jobs <= 1 or len(todo) <= 1:
            for spec in todo:
                res = render_utterance(spec, str(out_dir))
                tick([res])
                yield res
            return
        # spawn, not fork: the parent may hold threads (tqdm, torch) that fork would copy half-locked
        ctx = multiprocessing.get_context("spawn")
        size = max(1, min(16, len(todo) // (jobs * 4)))
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
        try:
            futures = [pool.submit(_render_batch, chunk, str(out_dir)) for chunk in _chunks(todo, size)]
            for fut in concurrent.futures.as_completed(futures):
                results = fut.result()
                tick(results)
                yield from results
        finally:
            # on Ctrl-C or an error, do not wait for the queued batches (finished wavs are kept: resume)
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def generate_corpus(out_dir: str | os.PathLike, profile: SynthProfile, seed: int = 0, jobs: int | None = None,
                    progress: bool = True) -> SynthSummary:
    """Generate (or finish generating) the corpus of ``profile``/``seed`` under ``out_dir``."""
    t0 = time.time()
    out = Path(out_dir).resolve()
    jobs = jobs or os.cpu_count() or 1
    check_families(profile.train_families + profile.unlabeled_only_families + profile.unseen_families,
                   profile.espeak_variants)
    versions = tool_versions()
    request = _request(profile, seed, versions)
    _check_out_dir(out, request)
    (out / ".done").unlink(missing_ok=True)

    voices = plan_voices(profile, seed)
    sentences = SentenceGenerator()
    specs = {split: plan_split(profile, seed, split, voices.split_voices(split), sentences) for split in SPLITS}
    all_specs = [s for split in SPLITS for s in specs[split]]

    ledger_path = out / "audio" / "ledger.tsv"
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    ledger = read_ledger(ledger_path)
    samples: dict[str, int] = {}
    todo = []
    for spec in all_specs:
        n = is_done(spec, out, ledger)
        if n:
            samples[spec.utt_id] = n
        else:
            todo.append(spec)
    skipped = len(samples)
    log.info("synth: %d utterances planned, %d already rendered, %d to render with %d job(s)",
             len(all_specs), skipped, len(todo), jobs)

    by_id = {s.utt_id: s for s in all_specs}
    rejects: dict[str, str] = {}
    with open(ledger_path, "a", encoding="utf-8") as ledger_fh:
        if _ends_torn(ledger_path):
            ledger_fh.write("\n")  # end a line torn by a crash, so the next entry starts cleanly
        for res in _render_all(todo, out, jobs, progress, len(all_specs), skipped, profile.augment.sample_rate):
            if res.error is not None:
                rejects[res.utt_id] = res.error
                continue
            samples[res.utt_id] = res.num_samples
            ledger_fh.write(f"{res.utt_id}\t{by_id[res.utt_id].spec_hash}\t{res.num_samples}\n")
            ledger_fh.flush()

    _write_rejects(out / "rejects.tsv", rejects, by_id)
    utterances, hours = {}, {}
    for split in SPLITS:
        kept = [s for s in specs[split] if s.utt_id in samples]
        _write_split(out, split, kept, samples)
        utterances[split] = len(kept)
        hours[split] = round(sum(samples[s.utt_id] for s in kept) / profile.augment.sample_rate / 3600.0, 4)

    manifest = {
        "profile": profile.model_dump(mode="json"),
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "tools": versions,
        "utterances": utterances,
        "hours": hours,
        "rejects": len(rejects),
        "voices": {split: [v.to_dict() for v in voices.split_voices(split)] for split in SPLITS},
        "test_conditions": voices.test_conditions(),
        "families": {"train": profile.train_families, "unlabeled_only": profile.unlabeled_only_families,
                     "unseen": profile.unseen_families},
    }
    _write_json(out / "synth_manifest.json", manifest)
    summary = SynthSummary(out, utterances, hours, len(todo) - len(rejects), skipped, len(rejects), time.time() - t0)
    (out / ".done").write_text(json.dumps({"request_hash": hashlib.sha1(json.dumps(request, sort_keys=True).encode()).hexdigest(),
                                           "utterances": utterances}) + "\n", encoding="utf-8")
    return summary


def _write_rejects(path: Path, rejects: dict[str, str], by_id: dict[str, UttSpec]) -> None:
    if not rejects:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("utt_id\tsplit\tspeaker\treason\n")
        for utt in sorted(rejects):
            spec = by_id[utt]
            fh.write(f"{utt}\t{spec.split}\t{spec.speaker}\t{' '.join(rejects[utt].split())}\n")
    os.replace(tmp, path)


def _write_split(out: Path, split: str, specs: list[UttSpec], samples: dict[str, int]) -> None:
    """Write the data dir of one split into a temp folder, then swap it in."""
    if not specs:
        raise SynthCorpusError(f"split {split}: every utterance was rejected; see {out / 'rejects.tsv'}")
    text = {s.utt_id: s.text for s in specs}
    data = DataDir(
        wav_scp={s.utt_id: str(s.wav_path(out)) for s in specs},
        utt2spk={s.utt_id: s.speaker for s in specs},
        text=None if split == "train_unlabeled" else text,
        utt2dur={s.utt_id: samples[s.utt_id] / s.sample_rate for s in specs},
        extra={"text.ref": text} if split == "train_unlabeled" else {},
    )
    final = out / split
    tmp = out / f".{split}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write_data_dir(data, tmp)
    if final.exists():
        old = out / f".{split}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
