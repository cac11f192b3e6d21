"""The synthetic TTS corpus: sentences, voices, splits, audio, determinism, resume, rejects."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr_kd.data.datadir import read_data_dir, validate_data_dir
from asr_kd.errors import AsrKdError
from data_prep.synth.generate import SynthCorpusError, generate_corpus, plan_voices
from data_prep.synth.profiles import SPLITS, TINY, SplitSizes, VoiceCounts
from data_prep.synth.sentences import SentenceGenerator, number_words, ordinal_words

pytestmark = pytest.mark.timeout(300)

# a few utterances per split, for the tests that generate several corpora
MICRO = TINY.model_copy(update={
    "name": "micro",
    "sizes": SplitSizes(train_labeled=5, train_unlabeled=6, dev=3, test=4),
    "voices": VoiceCounts(labeled=3, unlabeled_new=1, unlabeled_accent=1, test_seen=1, test_new=1,
                          test_unlabeled_accent=1, test_unseen_accent=1),
    "max_words": 6,
})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny corpus, generated once for the module (2 worker processes)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = generate_corpus(out, TINY, seed=0, jobs=2, progress=False)
    return out, summary


def _wavs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "audio").rglob("*.wav"))}


# ------------------------------------------------------------------------------ sentences


def test_number_words():
    assert number_words(0) == "zero"
    assert number_words(23) == "twenty three"
    assert number_words(105) == "one hundred and five"
    assert number_words(2024) == "two thousand and twenty four"
    assert number_words(999999) == "nine hundred and ninety nine thousand nine hundred and ninety nine"
    assert ordinal_words(21) == "twenty first" and ordinal_words(30) == "thirtieth" and ordinal_words(12) == "twelfth"


def test_vocabulary_is_large_and_closed():
    gen = SentenceGenerator()
    vocab = gen.vocabulary
    assert len(vocab) >= 1000
    assert all(re.fullmatch(r"[a-z']+", w) for w in vocab)
    used: set[str] = set()
    for i in range(3000):
        s = gen.sentence(np.random.default_rng([5, i]))
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", s), s  # normalized: no digits, no punctuation, single spaces
        words = s.split()
        assert set(words) <= vocab, set(words) - vocab
        used.update(words)
    # the word lists are really used, not just counted
    assert len(used) >= 600
    for domain_word in ("alarm", "timer", "weather", "play", "call", "navigate", "shopping", "thermostat", "calendar"):
        assert domain_word in used


def test_sentence_is_a_function_of_the_rng():
    gen = SentenceGenerator()
    a = [gen.sentence(np.random.default_rng([1, i])) for i in range(50)]
    b = [gen.sentence(np.random.default_rng([1, i])) for i in range(50)]
    c = [gen.sentence(np.random.default_rng([2, i])) for i in range(50)]
    assert a == b and a != c


# ------------------------------------------------------------------------------ corpus structure


def test_counts_and_valid_data_dirs(tiny):
    out, summary = tiny
    for split in SPLITS:
        data = validate_data_dir(out / split)
        assert len(data) == getattr(TINY.sizes, split), split
        assert summary.utterances[split] == len(data)
        # utterance ids start with their speaker id (utt2spk and spk2utt sort alike)
        assert all(u.startswith(data.utt2spk[u] + "-" + split + "-") for u in data.utt_ids)
    assert summary.rejects == 0 and not (out / "rejects.tsv").exists()
    assert (out / ".done").is_file()


def test_unlabeled_has_no_text_but_text_ref(tiny):
    out, _ = tiny
    unl = read_data_dir(out / "train_unlabeled")
    assert not (out / "train_unlabeled" / "text").exists() and unl.text is None
    ref = unl.extra["text.ref"]
    assert sorted(ref) == unl.utt_ids and all(ref.values())
    for split in ("train_labeled", "dev", "test"):
        assert read_data_dir(out / split).text is not None


def test_audio_format_and_durations(tiny):
    out, _ = tiny
    for split in SPLITS:
        data = read_data_dir(out / split)
        for utt in data.utt_ids:
            info = sf.info(data.wav_scp[utt])
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            seconds = info.frames / info.samplerate
            assert abs(seconds - data.utt2dur[utt]) < 1e-3
            assert 0.5 < seconds < 12.0, (utt, seconds)
    # the audio is not silence and not clipped
    x, _ = sf.read(next(iter(read_data_dir(out / "dev").wav_scp.values())))
    assert 0.005 < np.sqrt(np.mean(x ** 2)) and np.max(np.abs(x)) < 0.9


def test_longer_sentences_give_longer_audio(tiny):
    out, _ = tiny
    data = read_data_dir(out / "train_labeled")
    words = np.array([len(data.text[u].split()) for u in data.utt_ids])
    durs = np.array([data.utt2dur[u] for u in data.utt_ids])
    assert np.corrcoef(words, durs)[0, 1] > 0.5  # the audio says the transcript, not something else


def test_held_out_voices_and_accents(tiny):
    out, _ = tiny
    manifest = json.loads((out / "synth_manifest.json").read_text())
    family = {v["speaker"]: v["family"] for split in SPLITS for v in manifest["voices"][split]}
    spk = {split: set(read_data_dir(out / split).utt2spk.values()) for split in SPLITS}
    fams = {split: {family[s] for s in spk[split]} for split in SPLITS}
    cond = manifest["test_conditions"]
    assert set(cond) == spk["test"]
    assert set(cond.values()) == {"seen_voice", "new_voice", "unlabeled_accent", "unseen_accent"}
    unseen = {s for s, c in cond.items() if c == "unseen_accent"}
    unl_accent = {s for s, c in cond.items() if c == "unlabeled_accent"}
    # unseen accents (en-029, flite-rms) never occur in training or dev
    unseen_fams = {family[s] for s in unseen}
    assert unseen_fams <= set(TINY.unseen_families) and unseen_fams
    for split in ("train_labeled", "train_unlabeled", "dev"):
        assert not unseen_fams & fams[split]
    # the unlabeled-only accent is heard in train_unlabeled but not in train_labeled/dev
    assert {family[s] for s in unl_accent} <= fams["train_unlabeled"] - fams["train_labeled"] - fams["dev"]
    # train_unlabeled has every labeled voice plus voices train_labeled lacks
    assert spk["train_labeled"] < spk["train_unlabeled"]
    assert spk["dev"] <= spk["train_labeled"]
    # new test voices are unseen speakers of seen accents; seen ones are labeled speakers
    for s, c in cond.items():
        if c == "seen_voice":
            assert s in spk["train_labeled"]
        else:
            assert s not in spk["train_labeled"] | spk["train_unlabeled"]
        if c == "new_voice":
            assert family[s] in fams["train_labeled"]
    assert manifest["tools"]["espeak-ng"] and manifest["tools"]["flite"]
    assert manifest["utterances"]["train_labeled"] == TINY.sizes.train_labeled
    assert manifest["hours"]["train_unlabeled"] > manifest["hours"]["train_labeled"]


def test_speaker_ids_are_safe_and_never_prefixes():
    plan = plan_voices(TINY.model_copy(update={"voices": VoiceCounts(labeled=60, unlabeled_new=20, unlabeled_accent=10,
                                                                        test_seen=5, test_new=10, test_unlabeled_accent=5,
                                                                        test_unseen_accent=10)}), seed=3)
    ids = sorted({v.speaker_id for split in SPLITS for v in plan.split_voices(split)})
    assert len(ids) == 60 + 20 + 10 + 10 + 5 + 10
    assert all(re.fullmatch(r"[a-z0-9-]+", s) for s in ids)
    assert not any(b.startswith(a) for a, b in zip(ids, ids[1:]))
    engines = {s.split("-")[0] for s in ids}
    assert engines == {"espk", "flite"}


# ------------------------------------------------------------------------------ determinism and resume


def test_same_seed_same_bytes_any_jobs_other_seed_differs(tmp_path):
    a = generate_corpus(tmp_path / "a", MICRO, seed=7, jobs=1, progress=False)
    generate_corpus(tmp_path / "b", MICRO, seed=7, jobs=2, progress=False)
    generate_corpus(tmp_path / "c", MICRO, seed=8, jobs=2, progress=False)
    wa, wb, wc = _wavs(tmp_path / "a"), _wavs(tmp_path / "b"), _wavs(tmp_path / "c")
    assert len(wa) == sum(a.utterances.values()) == 18
    assert wa == wb
    for split in SPLITS:
        ta = (tmp_path / "a" / split / ("text.ref" if split == "train_unlabeled" else "text")).read_text()
        assert ta == (tmp_path / "b" / split / ("text.ref" if split == "train_unlabeled" else "text")).read_text()
    assert wa.keys() != wc.keys() or wa != wc
    assert not set(wa.values()) & set(wc.values())


def test_resume_regenerates_only_missing_or_broken(tmp_path):
    out = tmp_path / "data"
    first = generate_corpus(out, MICRO, seed=1, jobs=1, progress=False)
    assert (first.generated, first.skipped) == (18, 0)
    before = _wavs(out)
    wavs = sorted((out / "audio").rglob("*.wav"))
    deleted, truncated, kept = wavs[0], wavs[5], wavs[9]
    deleted.unlink()
    truncated.write_bytes(truncated.read_bytes()[:20])  # a torn header
    os.utime(kept, (1_000_000_000, 1_000_000_000))
    with open(out / "audio" / "ledger.tsv", "a") as fh:
        fh.write("torn-by-a-crash\t12ab")  # no newline: the next entries must still be read back
    second = generate_corpus(out, MICRO, seed=1, jobs=1, progress=False)
    assert (second.generated, second.skipped) == (2, 16)
    assert kept.stat()[stat.ST_MTIME] == 1_000_000_000  # untouched
    assert _wavs(out) == before  # the regenerated files are byte-identical
    third = generate_corpus(out, MICRO, seed=1, jobs=1, progress=False)
    assert (third.generated, third.skipped) == (0, 18)


def test_other_profile_in_same_folder_is_refused(tmp_path):
    out = tmp_path / "data"
    generate_corpus(out, MICRO, seed=1, jobs=1, progress=False)
    with pytest.raises(SynthCorpusError, match="another profile/seed"):
        generate_corpus(out, MICRO, seed=2, jobs=1, progress=False)


def test_failing_tts_is_retried_then_listed_in_rejects(tmp_path, monkeypatch):
    """An espeak-ng that fails for sentences with 'the' is retried once, then the utterance is a reject."""
    real = __import__("shutil").which("espeak-ng")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bindir / "espeak-ng"
    fake.write_text(
        "#!/bin/sh\n"
        "for a in \"$@\"; do last=\"$a\"; done\n"
        f"case \" $last \" in *\" the \"*) echo x >> {calls}; echo 'synthetic failure' >&2; exit 3;; esac\n"
        f"exec {real} \"$@\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    micro = MICRO.model_copy(update={"train_families": ["en-gb", "en-us"], "unseen_families": ["en-029"],
                                     "augment": MICRO.augment.model_copy(update={"noise_prob": 0.0})})
    summary = generate_corpus(tmp_path / "data", micro, seed=4, jobs=1, progress=False)
    lines = (tmp_path / "data" / "rejects.tsv").read_text().splitlines()
    assert lines[0] == "utt_id\tsplit\tspeaker\treason"
    rejected = {line.split("\t")[0]: line.split("\t")[3] for line in lines[1:]}
    assert rejected and summary.rejects == len(rejected)
    assert all("tts failed twice" in r and "synthetic failure" in r for r in rejected.values())
    assert len(calls.read_text().splitlines()) == 2 * len(rejected)  # one retry each
    kept_total = 0
    for split in SPLITS:
        data = read_data_dir(tmp_path / "data" / split)
        assert not set(data.utt_ids) & set(rejected)
        texts = data.text if data.text is not None else data.extra["text.ref"]
        assert not any(" the " in f" {t} " for t in texts.values())
        kept_total += len(data)
    assert kept_total + len(rejected) == 18


def test_missing_family_is_a_clear_error(tmp_path):
    bad = MICRO.model_copy(update={"unseen_families": ["en-xx-nowhere"]})
    with pytest.raises(AsrKdError, match="en-xx-nowhere"):
        generate_corpus(tmp_path / "d", bad, seed=0, jobs=1, progress=False)


def test_cli_with_a_yaml_profile(tmp_path, capsys):
    from asr_kd.cli import main as cli_main
    from asr_kd.config import dump_config

    dump_config(MICRO, tmp_path / "micro.yaml")
    rc = cli_main(["prepare", "synth", "--profile", str(tmp_path / "micro.yaml"), "--out", str(tmp_path / "data"),
                   "--seed", "3", "--jobs", "1", "--no-progress"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("prepare synth: wrote 4 data dirs") and "rendered 18" in line and "rejects 0" in line
    assert json.loads((tmp_path / "data" / "synth_manifest.json").read_text())["profile"]["name"] == "micro"

    (tmp_path / "bad.yaml").write_text((tmp_path / "micro.yaml").read_text().replace("max_words:", "max_wrds:"))
    rc = cli_main(["prepare", "synth", "--profile", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "d2")])
    assert rc == 2
    assert "max_wrds: unknown key (did you mean 'max_words'?)" in capsys.readouterr().err
