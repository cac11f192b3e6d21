"""Sequence-level teachers: a tiny random Whisper (save_pretrained) pseudo-labels a data dir; confidence,
WER-against-reference and audio filters drop utterances with listed reasons; the output is a data dir
a student trains CTC on."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers", reason="Hugging Face teachers need the hf extra: pip install 'asr-kd[hf]'")

from factories import asr_kd  # noqa: E402
from hf_factories import make_whisper  # noqa: E402

from asr_kd.data.datadir import DataDir, read_data_dir, write_data_dir  # noqa: E402
from asr_kd.data.units import normalize_text  # noqa: E402
from asr_kd.errors import AsrKdError, ModelDirError  # noqa: E402
from asr_kd.label.seq_teacher import PseudoLabelOptions, WhisperTeacher, pseudo_label  # noqa: E402


def varied_audio(seconds: float = 3.0, sr: int = 16000) -> list[np.ndarray]:
    """Six different 3 s signals (noise, tones, chirps, near silence): the random teacher's confidence
    differs between them (3 s: room for the 32-token transcripts in 40 ms student frames)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    return [0.5 * rng.standard_normal(t.size), 0.3 * np.sin(2 * np.pi * 200 * t), 0.3 * np.sin(2 * np.pi * 3000 * t),
            1e-3 * rng.standard_normal(t.size), 0.3 * np.sin(2 * np.pi * (100 + 800 * t) * t),
            0.2 * np.sign(np.sin(2 * np.pi * 90 * t))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    wav_scp, utt2spk, text = {}, {}, {}
    sentences = ["hello world", "turn on the light", "play some music", "good morning", "call my mother", "open the door"]
    for i, wave in enumerate(varied_audio()):
        utt = f"spk{i % 2}-utt{i:02d}"
        sf.write(root / f"{utt}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        wav_scp[utt], utt2spk[utt], text[utt] = str(root / f"{utt}.wav"), f"spk{i % 2}", sentences[i]
    sf.write(root / "long.wav", (0.1 * np.sin(np.arange(31 * 16000) / 7.0)).astype(np.float32), 16000, subtype="PCM_16")
    wav_scp["zz-long"], utt2spk["zz-long"], text["zz-long"] = str(root / "long.wav"), "zz", "hello world"
    data = write_data_dir(DataDir(wav_scp=wav_scp, utt2spk=utt2spk, text=text), root / "data")
    return {"root": root, "whisper": make_whisper(root / "whisper", seed=0), "data": data}


def read_tsv(path: Path) -> dict[str, list[str]]:
    return {line.split("\t")[0]: line.split("\t")[1:] for line in path.read_text().splitlines() if line}


def test_pseudo_labels_are_the_teachers_normalized_transcripts_with_confidence(setup, tmp_path):
    out = tmp_path / "out"
    summary = pseudo_label(str(setup["whisper"]), str(setup["data"]), str(out), PseudoLabelOptions(max_wer=None, progress=False))
    assert summary.kept == 6 and set(summary.rejects) == {"zz-long"}
    assert summary.rejects["zz-long"].startswith("too_long")
    pseudo = read_data_dir(out)
    teacher = WhisperTeacher(setup["whisper"])
    src = read_data_dir(setup["data"])
    from asr_kd.data.audio import load_audio

    conf = read_tsv(out / "confidence.tsv")
    for utt in pseudo.utt_ids:
        ((raw, c),) = teacher.transcribe([load_audio(src.source(utt))])
        assert pseudo.text[utt] == normalize_text(raw) != ""
        assert float(conf[utt][0]) == pytest.approx(c, abs=1e-4) and 0 < c <= 1
        assert float(conf[utt][1]) > 0  # WER against the reference (random words: wrong)
    assert pseudo.extra["text.ref"] == {u: src.text[u] for u in pseudo.utt_ids}
    assert read_tsv(out / "rejects.tsv")["zz-long"][0].startswith("too_long")


def test_confidence_and_wer_filters_drop_with_reasons(setup, tmp_path):
    first = tmp_path / "first"
    pseudo_label(str(setup["whisper"]), str(setup["data"]), str(first), PseudoLabelOptions(max_wer=None, progress=False))
    conf = {u: float(v[0]) for u, v in read_tsv(first / "confidence.tsv").items()}
    median = statistics.median(conf.values())
    low = {u for u, c in conf.items() if c < median}
    assert 0 < len(low) < len(conf)
    out = pseudo_label(str(setup["whisper"]), str(setup["data"]), str(tmp_path / "conf"),
                       PseudoLabelOptions(max_wer=None, min_confidence=median, progress=False))
    assert {u for u, r in out.rejects.items() if r.startswith("low_confidence")} == low

    # references: the teacher's own transcript for three utterances (WER 0), the true text for the others
    pseudo = read_data_dir(first).text
    src = read_data_dir(setup["data"])
    agree = sorted(pseudo)[:3]
    text = {u: (pseudo[u] if u in agree else t) for u, t in src.text.items()}
    write_data_dir(DataDir(wav_scp=src.wav_scp, utt2spk=src.utt2spk, text=text), tmp_path / "ref_data")
    out = pseudo_label(str(setup["whisper"]), str(tmp_path / "ref_data"), str(tmp_path / "wer"),
                       PseudoLabelOptions(max_wer=10.0, progress=False))
    assert sorted(read_data_dir(tmp_path / "wer").utt_ids) == agree
    assert {u for u, r in out.rejects.items() if r.startswith("wer_above_threshold")} == set(pseudo) - set(agree)


def test_cli_pseudo_label_then_a_student_trains_ctc_on_the_output(setup, tmp_path):
    out = tmp_path / "pseudo"
    r = asr_kd("pseudo-label", "--model", str(setup["whisper"]), "--data", str(setup["data"]), "--out", str(out),
               "--max-wer", "-1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "pseudo-labeled 6 utterances, 1 rejected (too_long 1)" in r.stdout
    from factories import tiny_train_config

    cfg = tiny_train_config(tmp_path / "train.yaml", [str(out)], max_steps=2)
    r = asr_kd("train", "--config", str(cfg), "--out", str(tmp_path / "student"))
    assert r.returncode == 0, r.stderr[-2000:]
    symbols = {line.split()[0] for line in (tmp_path / "student" / "tokens.txt").read_text().splitlines()}
    assert set("".join(read_data_dir(out).text.values()).replace(" ", "")) <= symbols  # units built from the pseudo texts


def test_unsupported_and_pickle_dirs_and_long_windows_are_refused(setup, tmp_path):
    import json

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelDirError, match="BertForMaskedLM is not a supported text teacher"):
        pseudo_label(str(bert), str(setup["data"]), str(tmp_path / "out"), PseudoLabelOptions(progress=False))
    whisper_pickle = tmp_path / "whisper_pickle"
    whisper_pickle.mkdir()
    (whisper_pickle / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"]}))
    (whisper_pickle / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelDirError, match="pytorch_model.bin: refused"):
        pseudo_label(str(whisper_pickle), str(setup["data"]), str(tmp_path / "out"), PseudoLabelOptions(progress=False))
    with pytest.raises(AsrKdError, match="exceeds Whisper's 30 s window"):
        pseudo_label(str(setup["whisper"]), str(setup["data"]), str(tmp_path / "out"),
                     PseudoLabelOptions(max_seconds=60, progress=False))
    assert not (tmp_path / "out").exists()
