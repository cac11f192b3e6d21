"""Hugging Face CTC teachers (Wav2Vec2/Hubert/WavLM ForCTC from local dirs): labeling through the real
Ray pipeline equals the HF model's own output after the documented unit mapping and 20 -> 40 ms frame
conversion; unit mapping (automatic, mapping file, unmapped mass, refusal); bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers", reason="Hugging Face teachers need the hf extra: pip install 'asr-kd[hf]'")

from factories import add_bad_audio, asr_kd, make_data, make_teacher  # noqa: E402
from hf_factories import english_vocab, make_hf_ctc  # noqa: E402

from asr_kd.data.datadir import read_data_dir  # noqa: E402
from asr_kd.data.units import CharTokenizer, load_tokenizer  # noqa: E402
from asr_kd.errors import AsrKdError, ModelDirError, UnitsError  # noqa: E402
from asr_kd.label.frame_rate import convert_frames  # noqa: E402
from asr_kd.label.pipeline import LabelOptions, label, label_local  # noqa: E402
from asr_kd.label.teacher import TeacherEnsemble, teacher_kind  # noqa: E402
from asr_kd.label.unit_map import TeacherVocab, build_unit_map  # noqa: E402
from asr_kd.targets.reader import StoreReader  # noqa: E402


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "w2v": make_hf_ctc(root / "w2v", "Wav2Vec2ForCTC", seed=1, layer_norm=True),
        "hubert": make_hf_ctc(root / "hubert", "HubertForCTC", seed=2, layer_norm=False),
        "wavlm": make_hf_ctc(root / "wavlm", "WavLMForCTC", seed=3, layer_norm=True),
        "student": make_teacher(root / "student", seed=0),  # our model dir: its tokens.txt and framing
        "data": make_data(root / "corpus", 6),
    }


# ------------------------------------------------------------------------------------------ reference


def reference_targets(model_dir: Path, wave: np.ndarray, student_symbols: list[str], rule: str = "renormalize",
                      conversion: str = "peak", mapping: dict[str, str | None] | None = None):
    """The HF model's own output for one utterance, mapped and converted by the documented rules
    (written out here independently of asr_kd.label): ``(probs (T40, V_student), unmapped per 20 ms frame)``."""
    import transformers

    cfg = json.loads((model_dir / "config.json").read_text())
    model = getattr(transformers, cfg["architectures"][0]).from_pretrained(str(model_dir), local_files_only=True).eval()
    x = torch.from_numpy(wave).float()
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        p = torch.softmax(model(x[None]).logits[0].double(), -1)  # (T20, V_teacher)
    vocab = json.loads((model_dir / "vocab.json").read_text())
    special = {"<pad>": "<blk>", "|": "\u2581", "<unk>": "<unk>", "<s>": None, "</s>": None}
    sid = {s: i for i, s in enumerate(student_symbols)}
    q = torch.zeros(p.shape[0], len(student_symbols), dtype=torch.float64)
    lost = torch.zeros(p.shape[0], dtype=torch.float64)
    for sym, i in vocab.items():
        target = mapping[sym] if mapping and sym in mapping else special.get(sym, sym.lower())
        if target is not None and target in sid:
            q[:, sid[target]] += p[:, i]
        else:
            lost += p[:, i]
    if rule == "renormalize":
        q = q / q.sum(-1, keepdim=True)
    else:
        q[:, 0] += lost
    n_out = (1 + (len(wave) - 400) // 160) // 4  # the student's frames: Kaldi fbank frames // 4
    idx = torch.arange(2 * n_out).clamp_max(q.shape[0] - 1).view(n_out, 2)
    pairs = q[idx]  # (n_out, 2, V)
    if conversion == "mean":
        out = pairs.mean(1)
    else:
        nb = pairs[..., 1:].amax(-1)  # largest non-blank probability of each frame of the pair
        out = pairs[torch.arange(n_out), nb.argmax(-1)]
    return out.float(), lost.float()


def assert_store_matches(store: Path, data_dir: Path, model_dir: Path, student_symbols, **ref_kwargs) -> float:
    """Every stored utterance equals the reference within float16 error; returns the frame-weighted unmapped mass."""
    reader = StoreReader(store)
    data = read_data_dir(data_dir)
    assert sorted(reader.utt_ids) == sorted(data.utt_ids)
    mass, frames = 0.0, 0
    for utt in reader.utt_ids:
        wave, sr = sf.read(data.source(utt).path, dtype="float32")
        ref, lost = reference_targets(model_dir, wave, student_symbols, **ref_kwargs)
        ids, probs = reader.get_sparse(utt)
        assert ids.shape[0] == ref.shape[0], f"{utt}: {ids.shape[0]} stored frames, student expects {ref.shape[0]}"
        ref_top = torch.topk(ref, ids.shape[1], -1)
        np.testing.assert_allclose(probs, ref_top.values.numpy(), atol=2e-3, rtol=2e-3, err_msg=utt)
        np.testing.assert_allclose(np.take_along_axis(ref.numpy(), ids.astype(np.int64), 1), probs, atol=2e-3, rtol=2e-3)
        n = lost.shape[0]
        mass += float(lost.sum()) / n * ids.shape[0]
        frames += ids.shape[0]
    return mass / frames


# ------------------------------------------------------------------------------------------ Ray pipeline


@pytest.mark.parametrize("name,rule,conversion", [("w2v", "renormalize", "mean"), ("hubert", "renormalize", "peak"),
                                                  ("wavlm", "blank", "mean")])
def test_hf_ctc_teacher_through_ray_equals_the_models_own_output(hf, ray_cluster, tmp_path, name, rule, conversion):
    student = load_tokenizer(hf["student"])
    o = LabelOptions(top_k=6, quantization="float16", shard_size=4, actors=1, progress=False, units_from=str(hf["student"]),
                     unmapped_rule=rule, frame_conversion=conversion)
    summary = label([str(hf[name])], str(hf["data"]), str(tmp_path / "store"), o)
    assert summary.utterances == 6 and summary.rejects == 0
    mass = assert_store_matches(tmp_path / "store", hf["data"], hf[name], student.symbols, rule=rule, conversion=conversion)
    meta = StoreReader(tmp_path / "store").meta
    assert meta.frame_shift_ms == 40.0 and meta.units_hash == student.units_hash()
    (t,) = meta.teacher_details
    assert t["frame_shift_ms"] == 20.0 and t["frame_conversion"] == conversion and t["unit_map"]["rule"] == rule
    # the student's units lack some teacher letters: that mass is measured (not silently lost)
    missing = sorted(set("abcdefghijklmnopqrstuvwxyz'") - set(student.symbols))
    assert missing and set(t["unit_map"]["unmapped_symbols"]) == {"<s>", "</s>", *(c.upper() for c in missing)}
    assert mass > 0.01 and meta.unmapped_mass == pytest.approx(mass, rel=1e-3)


def test_cli_label_hf_dir_then_verify_and_stats(hf, tmp_path):
    store = tmp_path / "store"
    r = asr_kd("label", "--model", str(hf["w2v"]), "--units-from", str(hf["student"]), "--data", str(hf["data"]),
               "--out", str(store), "--local", "--no-progress", "--frame-conversion", "peak")
    assert r.returncode == 0, r.stderr
    r = asr_kd("targets", "verify", str(store), "--data", str(hf["data"]))
    assert r.returncode == 0, r.stderr
    r = asr_kd("targets", "stats", str(store), "--json", "--teacher", str(hf["w2v"]), "--units-from", str(hf["student"]),
               "--data", str(hf["data"]))
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["kl_nats"] < 0.05  # the recorded conversion (peak) is re-applied; mean would not match
    assert 0.01 < stats["unmapped_mass"] < 1 and stats["unit_maps"][0]["frame_conversion"] == "peak"


def test_stats_teacher_kl_needs_the_recorded_conversion(hf, tmp_path):
    """KL against the store is small with the recorded conversion and large with the other one."""
    from asr_kd.targets.stats import teacher_kl

    o = LabelOptions(top_k=6, quantization="float16", progress=False, units_from=str(hf["student"]), frame_conversion="peak")
    label_local([str(hf["w2v"])], str(hf["data"]), str(tmp_path / "store"), o)
    reader = StoreReader(tmp_path / "store")
    good = teacher_kl(reader, [str(hf["w2v"])], str(hf["data"]), units_from=str(hf["student"]))
    meta_path = tmp_path / "store" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["teacher_details"][0]["frame_conversion"] = "mean"
    meta_path.write_text(json.dumps(meta))
    bad = teacher_kl(StoreReader(tmp_path / "store"), [str(hf["w2v"])], str(hf["data"]), units_from=str(hf["student"]))
    assert good < 0.01 and bad > 5 * good + 0.01


def test_ensemble_of_our_conformer_and_an_hf_teacher_is_their_weighted_average(hf, tmp_path):
    student = hf["student"]
    o = LabelOptions(top_k=8, quantization="float16", progress=False, weights=[0.3, 0.7])
    ens = TeacherEnsemble([str(student), str(hf["w2v"])], weights=[0.3, 0.7], top_k=8)
    label_local([str(student), str(hf["w2v"])], str(hf["data"]), str(tmp_path / "store"), o)
    native = TeacherEnsemble([str(student)], top_k=8)
    reader = StoreReader(tmp_path / "store")
    data = read_data_dir(hf["data"])
    symbols = load_tokenizer(student).symbols
    for utt in reader.utt_ids:
        wave, _ = sf.read(data.source(utt).path, dtype="float32")
        ours = native.dense([torch.from_numpy(wave)])[0][0]
        theirs, _ = reference_targets(hf["w2v"], wave, symbols)
        expected = 0.3 * ours[: theirs.shape[0]] + 0.7 * theirs
        ids, probs = reader.get_sparse(utt)
        np.testing.assert_allclose(np.take_along_axis(expected.numpy(), ids.astype(np.int64), 1), probs, atol=2e-3, err_msg=utt)
    assert [t["kind"] for t in reader.meta.teacher_details] == ["asr-kd", "hf-ctc"]
    assert reader.meta.teacher_fingerprints == ens.fingerprints


# ------------------------------------------------------------------------------------------ frame rate


def test_frame_conversions_mean_and_peak():
    blank, a, b = [1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.4, 0.0, 0.6]
    probs = torch.tensor([[blank, a, b, blank, a]])  # 5 teacher frames (20 ms)
    mean = convert_frames(probs, torch.tensor([5]), torch.tensor([3]), 2, "mean")
    peak = convert_frames(probs, torch.tensor([5]), torch.tensor([3]), 2, "peak")
    torch.testing.assert_close(mean[0], torch.tensor([[0.6, 0.4, 0.0], [0.7, 0.0, 0.3], [0.2, 0.8, 0.0]]))
    torch.testing.assert_close(peak[0], torch.tensor([a, b, a]))  # the last group repeats the last frame


# ------------------------------------------------------------------------------------------ unit mapping


def test_automatic_unit_mapping_folds_case_and_maps_delimiter_pad_and_unk():
    vocab = english_vocab()
    tv = TeacherVocab(symbols=list(vocab), blank_id=0, specials=frozenset({"<s>", "</s>", "<pad>"}))
    student = CharTokenizer.build(["hello world"])
    um = build_unit_map(tv, student, teacher_name="t")
    got = {t: (student.symbols[s] if s is not None else None) for t, s in zip(tv.symbols, um.targets)}
    assert got["<pad>"] == "<blk>" and got["|"] == "\u2581" and got["<unk>"] == "<unk>" and got["H"] == "h"
    assert got["<s>"] is None and got["Z"] is None  # no 'z' in the student's units
    p = torch.zeros(len(vocab))
    p[vocab["H"]], p[vocab["Z"]], p[vocab["<pad>"]] = 0.5, 0.25, 0.25
    mapped, lost = um.apply(p)
    assert float(lost) == pytest.approx(0.25)
    assert float(mapped[student.symbols.index("h")]) == pytest.approx(0.5 / 0.75)  # renormalized
    um.rule = "blank"
    mapped, _ = build_unit_map(tv, student, rule="blank").apply(p)
    assert float(mapped[0]) == pytest.approx(0.5) and float(mapped[student.symbols.index("h")]) == pytest.approx(0.5)


def test_mapping_file_overrides_and_is_recorded(hf, tmp_path):
    mapping = tmp_path / "map.txt"
    mapping.write_text("# teacher student\nE o\nO -\n", encoding="utf-8")
    o = LabelOptions(top_k=6, quantization="float16", progress=False, units_from=str(hf["student"]),
                     unit_map_files=[str(mapping)])
    label_local([str(hf["w2v"])], str(hf["data"]), str(tmp_path / "store"), o)
    symbols = load_tokenizer(hf["student"]).symbols
    assert_store_matches(tmp_path / "store", hf["data"], hf["w2v"], symbols, mapping={"E": "o", "O": None})
    um = StoreReader(tmp_path / "store").meta.teacher_details[0]["unit_map"]
    assert "O" in um["unmapped_symbols"] and um["source"].startswith("auto+file:")
    bad = tmp_path / "bad.txt"
    bad.write_text("E o\nQ\n", encoding="utf-8")
    with pytest.raises(UnitsError, match=r"bad.txt:2: expected"):
        TeacherEnsemble([str(hf["w2v"])], units_from=str(hf["student"]), unit_map_files=[str(bad)])


def test_teacher_with_bpe_pieces_is_refused_pointing_to_the_sequence_level_path(tmp_path):
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2}
    for piece in ["THE", "ING", "ER", "AND", "ED", "OU", "ION", "EN", "IN", "AT", "ST", "RE", "A"]:
        vocab[piece] = len(vocab)
    d = make_hf_ctc(tmp_path / "bpe", vocab=vocab)
    student = make_teacher(tmp_path / "student")
    with pytest.raises(UnitsError, match=r"only 1 of the student's \d+ units get a teacher unit.*asr-kd pseudo-label"):
        TeacherEnsemble([str(d)], units_from=str(student))
    # the path the message names works for it: greedy transcripts in its own pieces, as a data dir
    from asr_kd.label.seq_teacher import PseudoLabelOptions, pseudo_label

    data = make_data(tmp_path / "corpus", 3, min_s=2.0)
    pseudo_label(str(d), str(data), str(tmp_path / "pseudo"), PseudoLabelOptions(max_wer=None, progress=False))
    texts = read_data_dir(tmp_path / "pseudo").text
    pieces = {p.lower() for p in vocab if p[0] != "<" and p != "|"}
    assert texts and all(set(t.replace(" ", "")) <= set("".join(pieces)) and t for t in texts.values())


# ------------------------------------------------------------------------------------------ bad input


def test_directories_that_are_not_supported_teachers_are_refused(hf, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match="not a teacher of a supported kind"):
        teacher_kind(str(empty))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelDirError, match="BertForMaskedLM is not a supported teacher"):
        teacher_kind(str(bert))
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    (whisper / "config.json").write_text(json.dumps({"architectures": ["WhisperForConditionalGeneration"]}))
    with pytest.raises(ModelDirError, match="sequence-level teacher.*asr-kd pseudo-label"):
        teacher_kind(str(whisper))
    # hf: forces the Hugging Face loader even beside model.yaml
    assert teacher_kind("hf:" + str(hf["w2v"]))[0] == "hf-ctc"
    with pytest.raises(AsrKdError, match="--units-from"):
        TeacherEnsemble([str(hf["w2v"])])


def test_missing_vocab_and_pickle_weights_are_refused(hf, tmp_path):
    import shutil

    novocab = tmp_path / "novocab"
    shutil.copytree(hf["w2v"], novocab)
    (novocab / "vocab.json").unlink()
    with pytest.raises(ModelDirError, match=r"vocab.json: missing"):
        TeacherEnsemble([str(novocab)], units_from=str(hf["student"]))
    pickled = tmp_path / "pickled"
    shutil.copytree(hf["w2v"], pickled)
    (pickled / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    # a payload that would create a file if it were ever unpickled
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelDirError, match=r"pytorch_model.bin: refused: weights in a pickle-based format"):
        TeacherEnsemble([str(pickled)], units_from=str(hf["student"]))
    assert not marker.exists()


def test_other_sample_rates_are_resampled_and_logged_too_long_rejected(hf, tmp_path, caplog):
    data = make_data(tmp_path / "corpus", 3)
    bad = add_bad_audio(data, tmp_path / "bad", long_seconds=12.0)
    o = LabelOptions(top_k=6, quantization="float16", progress=False, units_from=str(hf["student"]), max_seconds=10.0)
    with caplog.at_level(logging.WARNING, logger="asr_kd.label.collector"):
        summary = label_local([str(hf["w2v"])], str(data), str(tmp_path / "store"), o)
    reader = StoreReader(tmp_path / "store")
    rejects = reader.rejects()
    assert "bad-rate8k" in reader.utt_ids  # resampled and labeled
    assert any("bad-rate8k" in r.message and "8000 Hz: resampled to 16000 Hz" in r.message for r in caplog.records)
    assert reader.num_frames("bad-rate8k") == (1 + (16000 - 400) // 160) // 4  # 1 s at the student's 16 kHz framing
    assert rejects["bad-toolong"].startswith("too_long")
    assert set(rejects) == {u for u, k in bad.items() if k not in ("rate8k",)}  # nothing else lost
    assert summary.utterances == 3 + 1


def test_missing_transformers_names_the_extra(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['transformers'] = None\n"
            "from asr_kd.label.hf_teacher import import_transformers\n"
            "from asr_kd.errors import AsrKdError\n"
            "try:\n    import_transformers()\nexcept AsrKdError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'asr-kd[hf]'" in out.stdout, out.stderr
