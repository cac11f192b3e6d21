"""SpeechBrain EncoderASR CTC teachers (local dirs): labeling through the real Ray pipeline equals
SpeechBrain's own ``encode_batch`` output after the documented unit mapping and frame conversion;
ensembles with our Conformer; CLI and ``targets stats --teacher``; safe loading (weights_only, no
fetch, no writes, hparams tag allowlist); bad input (missing checkpoint, not CTC, BPE pieces, other
sample rates)."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import SENTENCES, asr_kd, make_data, make_teacher
from sb_factories import make_sb_ctc

from asr_kd.data.datadir import read_data_dir
from asr_kd.data.units import load_tokenizer
from asr_kd.errors import ModelDirError, UnitsError
from asr_kd.label.pipeline import LabelOptions, label, label_local
from asr_kd.label.teacher import TeacherEnsemble, teacher_kind
from asr_kd.targets.reader import StoreReader


@pytest.fixture(scope="module")
def sb(tmp_path_factory):
    root = tmp_path_factory.mktemp("sb")
    return {
        "char40": make_sb_ctc(root / "char40", seed=1),  # 40 ms frames: stored 1:1
        "char20": make_sb_ctc(root / "char20", seed=2, pool=2),  # 20 ms frames: 2 per stored frame
        # the student lacks some of the teacher's letters: their mass is unmapped and measured
        "student": make_teacher(root / "student", seed=0, texts=SENTENCES[5:]),
        "data": make_data(root / "corpus", 6),
    }


# ------------------------------------------------------------------------------------------ reference


_REFERENCE_MODELS: dict[str, object] = {}


def speechbrain_model(model_dir: Path, savedir: Path):
    """SpeechBrain's own loader (``EncoderASR.from_hparams``), independent of asr_kd.label.sb_teacher."""
    from speechbrain.inference.ASR import EncoderASR

    key = str(model_dir)
    if key not in _REFERENCE_MODELS:
        _REFERENCE_MODELS[key] = EncoderASR.from_hparams(source=str(model_dir), savedir=str(savedir / model_dir.name))
    return _REFERENCE_MODELS[key]


def reference_targets(asr, wave: np.ndarray, student_symbols: list[str], rule: str = "renormalize",
                      conversion: str = "peak", sample_rate: int = 16000, ratio: int = 1):
    """SpeechBrain's ``encode_batch`` for one utterance, mapped and converted by the documented rules
    (written out here independently of asr_kd.label): ``(probs (T40, V_student), unmapped per teacher frame)``.
    ``ratio``: teacher frames per 40 ms stored frame (1 for the 40 ms models, 2 for ``pool=2``)."""
    x = torch.from_numpy(wave).float()
    if sample_rate != 16000:
        import torchaudio

        x = torchaudio.functional.resample(x, 16000, sample_rate)
    with torch.no_grad():
        p = asr.encode_batch(x[None], torch.ones(1))[0].double().exp()  # (T_teacher, V_teacher)
    pieces = [asr.tokenizer.id_to_piece(i) for i in range(asr.tokenizer.vocab_size())]
    sid = {s: i for i, s in enumerate(student_symbols)}
    q = torch.zeros(p.shape[0], len(student_symbols), dtype=torch.float64)
    lost = torch.zeros(p.shape[0], dtype=torch.float64)
    for i, piece in enumerate(pieces):
        target = "<blk>" if i == 0 else piece  # blank_index 0 (sentencepiece's <unk> id); '▁' is our word mark too
        if target in sid:
            q[:, sid[target]] += p[:, i]
        else:
            lost += p[:, i]
    if rule == "renormalize":
        q = q / q.sum(-1, keepdim=True)
    else:
        q[:, 0] += lost
    n_out = (1 + (len(wave) - 400) // 160) // 4  # the student's frames: Kaldi fbank frames // 4
    idx = torch.arange(ratio * n_out).clamp_max(q.shape[0] - 1).view(n_out, ratio)
    groups = q[idx]  # (n_out, ratio, V)
    if conversion == "mean":
        out = groups.mean(1)
    else:
        out = groups[torch.arange(n_out), groups[..., 1:].amax(-1).argmax(-1)]
    return out.float(), lost.float()


def assert_store_matches(store: Path, data_dir: Path, asr, student_symbols, **ref_kwargs) -> float:
    """Every stored utterance equals the reference within float16 error; returns the frame-weighted unmapped mass."""
    reader = StoreReader(store)
    data = read_data_dir(data_dir)
    assert sorted(reader.utt_ids) == sorted(data.utt_ids)
    mass, frames = 0.0, 0
    for utt in reader.utt_ids:
        wave, _ = sf.read(data.source(utt).path, dtype="float32")
        ref, lost = reference_targets(asr, wave, student_symbols, **ref_kwargs)
        ids, probs = reader.get_sparse(utt)
        assert ids.shape[0] == ref.shape[0], f"{utt}: {ids.shape[0]} stored frames, student expects {ref.shape[0]}"
        np.testing.assert_allclose(probs, torch.topk(ref, ids.shape[1], -1).values.numpy(), atol=2e-3, rtol=2e-3, err_msg=utt)
        kept = np.arange(ids.shape[1])[None, :] < reader.get_counts(utt)[:, None]  # beyond a frame's count: padding
        looked_up = np.take_along_axis(ref.numpy(), ids.astype(np.int64), 1)
        np.testing.assert_allclose(looked_up[kept], probs[kept], atol=2e-3, rtol=2e-3, err_msg=utt)
        mass += float(lost.mean()) * ids.shape[0]
        frames += ids.shape[0]
    return mass / frames


def files_of(d: Path) -> dict[str, tuple[bool, int]]:
    return {p.name: (p.is_symlink(), p.stat().st_size) for p in sorted(d.iterdir())}


# ------------------------------------------------------------------------------------------ labeling


def test_sb_ctc_teacher_through_ray_equals_speechbrains_own_output(sb, ray_cluster, tmp_path):
    before = files_of(sb["char40"])
    student = load_tokenizer(sb["student"])
    o = LabelOptions(top_k=6, quantization="float16", shard_size=4, actors=1, progress=False, units_from=str(sb["student"]))
    summary = label([str(sb["char40"])], str(sb["data"]), str(tmp_path / "store"), o)
    assert summary.utterances == 6 and summary.rejects == 0
    asr = speechbrain_model(sb["char40"], tmp_path)
    mass = assert_store_matches(tmp_path / "store", sb["data"], asr, student.symbols)
    meta = StoreReader(tmp_path / "store").meta
    assert meta.frame_shift_ms == 40.0 and meta.units_hash == student.units_hash()
    (t,) = meta.teacher_details
    assert t["kind"] == "sb-ctc" and t["frame_shift_ms"] == 40.0 and t["frame_shift_source"] == "measured"
    assert t["frames_per_stored_frame"] == 1 and t["frame_conversion"] == "none" and t["tokenizer"] == "sentencepiece-char"
    assert t["checkpoints"] == {"asr": "asr.ckpt", "normalizer": "normalizer.ckpt", "tokenizer": "tokenizer.ckpt"}
    missing = sorted(set("".join(SENTENCES)) - set(student.symbols) - {" "})
    assert missing and set(t["unit_map"]["unmapped_symbols"]) == set(missing)
    assert mass > 0.005 and meta.unmapped_mass == pytest.approx(mass, rel=1e-3)
    assert files_of(sb["char40"]) == before  # nothing written into the model dir (no symlinks, no savedir)


@pytest.mark.parametrize("rule,conversion", [("blank", "peak"), ("renormalize", "mean")])
def test_20ms_teacher_is_converted_to_40ms(sb, tmp_path, rule, conversion):
    o = LabelOptions(top_k=6, quantization="float16", progress=False, units_from=str(sb["student"]), unmapped_rule=rule,
                     frame_conversion=conversion)
    label_local([str(sb["char20"])], str(sb["data"]), str(tmp_path / "store"), o)
    asr = speechbrain_model(sb["char20"], tmp_path)
    assert_store_matches(tmp_path / "store", sb["data"], asr, load_tokenizer(sb["student"]).symbols, rule=rule,
                         conversion=conversion, ratio=2)
    (t,) = StoreReader(tmp_path / "store").meta.teacher_details
    assert t["frame_shift_ms"] == 20.0 and t["frames_per_stored_frame"] == 2 and t["frame_conversion"] == conversion


def test_ensemble_of_our_conformer_and_a_speechbrain_teacher_is_their_weighted_average(sb, tmp_path):
    conformer = make_teacher(tmp_path / "conformer", seed=3, texts=SENTENCES[5:])  # same tokens.txt as the student
    o = LabelOptions(top_k=8, quantization="float16", progress=False, weights=[0.3, 0.7])
    label_local([str(conformer), "speechbrain:" + str(sb["char40"])], str(sb["data"]), str(tmp_path / "store"), o)
    native = TeacherEnsemble([str(conformer)], top_k=8)
    reader = StoreReader(tmp_path / "store")
    data = read_data_dir(sb["data"])
    asr = speechbrain_model(sb["char40"], tmp_path)
    symbols = load_tokenizer(conformer).symbols
    for utt in reader.utt_ids:
        wave, _ = sf.read(data.source(utt).path, dtype="float32")
        ours = native.dense([torch.from_numpy(wave)])[0][0]
        theirs, _ = reference_targets(asr, wave, symbols)
        expected = 0.3 * ours[: theirs.shape[0]] + 0.7 * theirs
        ids, probs = reader.get_sparse(utt)
        kept = np.arange(ids.shape[1])[None, :] < reader.get_counts(utt)[:, None]
        looked_up = np.take_along_axis(expected.numpy(), ids.astype(np.int64), 1)
        np.testing.assert_allclose(looked_up[kept], probs[kept], atol=2e-3, err_msg=utt)
    assert [t["kind"] for t in reader.meta.teacher_details] == ["asr-kd", "sb-ctc"]
    assert reader.meta.teacher_weights == pytest.approx([0.3, 0.7])


def test_cli_label_with_the_speechbrain_prefix_then_stats_teacher(sb, tmp_path):
    store = tmp_path / "store"
    r = asr_kd("label", "--model", "speechbrain:" + str(sb["char20"]), "--units-from", str(sb["student"]),
               "--data", str(sb["data"]), "--out", str(store), "--local", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = asr_kd("targets", "stats", str(store), "--json", "--teacher", str(sb["char20"]), "--units-from", str(sb["student"]),
               "--data", str(sb["data"]))
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["kl_nats"] < 0.05 and stats["unit_maps"][0]["frame_conversion"] == "peak"
    assert 0.005 < stats["unmapped_mass"] < 1


# ------------------------------------------------------------------------------------------ detection, loading


def test_detection_by_hyperparams_and_the_prefix(sb, tmp_path):
    assert teacher_kind(str(sb["char40"])) == ("sb-ctc", sb["char40"])
    both = tmp_path / "both"
    shutil.copytree(sb["student"], both)
    for f in sb["char40"].iterdir():
        shutil.copy(f, both / f.name)
    assert teacher_kind(str(both))[0] == "asr-kd"  # model.yaml wins, as with hf:
    assert teacher_kind("speechbrain:" + str(both))[0] == "sb-ctc"
    from asr_kd.label.pipeline import _resolve_spec  # what the Ray actors get: absolute, prefix kept

    assert _resolve_spec("speechbrain:" + str(both)) == "speechbrain:" + str(both.resolve())
    with pytest.raises(ModelDirError, match=r"hyperparams.yaml: missing; speechbrain:DIR needs"):
        teacher_kind("speechbrain:" + str(sb["student"]))
    hub = tmp_path / "hub"  # SpeechBrain's hub repos carry a config.json naming the interface, not an architecture
    shutil.copytree(sb["char40"], hub)
    (hub / "config.json").write_text(json.dumps({"speechbrain_interface": "EncoderASR"}))
    assert teacher_kind(str(hub))[0] == "sb-ctc"


def test_a_hub_path_in_the_pretrainer_is_read_from_the_directory_never_fetched(tmp_path, monkeypatch):
    from asr_kd.label.sb_teacher import SbCtcTeacher

    d = make_sb_ctc(tmp_path / "hubpath", seed=4, asr_path="speechbrain/no-such-repo-asr-kd-test/asr.ckpt")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    # a recipe's beam searcher with a hub KenLM model: accepted as CTC, never set up (only encode_batch is used)
    text = (d / "hyperparams.yaml").read_text().replace(
        "decoding_function: !name:speechbrain.decoders.ctc_greedy_decode\n    blank_id: !ref <blank_index>",
        "decoding_function: !name:speechbrain.decoders.ctc.CTCBeamSearcher\n    blank_index: !ref <blank_index>\n"
        "test_beam_search:\n    kenlm_model_path: speechbrain/no-such-repo-asr-kd-test/lm.arpa")
    (d / "hyperparams.yaml").write_text(text)
    t = SbCtcTeacher(d)
    assert t.files["asr"] == d / "asr.ckpt" and t.frame_shift_ms == 40.0 and t.vocab.blank_id == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no savedir, no symlinks written anywhere here


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle below
def test_pickle_checkpoint_is_refused_and_never_unpickled(sb, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(sb["char40"], d)
    marker = tmp_path / "unpickled"

    class Payload:  # would create a file if it were ever unpickled
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"w": Payload()}, d / "asr.ckpt")
    with pytest.raises(ModelDirError, match=r"asr.ckpt: refused: .*weights_only=True.*torch.save\(module.state_dict"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    (d / "asr.ckpt").write_bytes(pickle.dumps(Payload()))  # a plain pickle, not even torch's zip format
    with pytest.raises(ModelDirError, match=r"asr.ckpt: refused"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    assert not marker.exists()


def test_unsafe_hparams_tags_are_refused_before_parsing(sb, tmp_path):
    d = tmp_path / "unsafe"
    shutil.copytree(sb["char40"], d)
    marker = tmp_path / "ran"
    text = (d / "hyperparams.yaml").read_text()
    (d / "hyperparams.yaml").write_text(text + f"boom: !apply:os.system ['touch {marker}']\n")
    with pytest.raises(ModelDirError, match=r"hyperparams.yaml:\d+: refused: '!apply:os.system'"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    (d / "hyperparams.yaml").write_text(text + "fetcher: !name:speechbrain.utils.fetching.fetch\n")
    with pytest.raises(ModelDirError, match=r"refused: '!name:speechbrain.utils.fetching.fetch'"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    # HyperPyYAML's loader would execute this plain-YAML python tag; quoted text that looks like a tag is fine
    (d / "hyperparams.yaml").write_text(text + "note: 'see !apply:os.system'\n"
                                        f"boom: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ModelDirError, match=r"hyperparams.yaml:\d+: refused: '!!python/object/apply:os.system'"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ bad input


def test_missing_checkpoint_is_refused_naming_the_file(sb, tmp_path):
    d = tmp_path / "nockpt"
    shutil.copytree(sb["char40"], d)
    (d / "normalizer.ckpt").unlink()
    with pytest.raises(ModelDirError, match=r"nockpt/normalizer.ckpt: missing: .*loadable 'normalizer'.*asr-kd never downloads"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))


def test_not_an_encoder_asr_ctc_model_is_refused(sb, tmp_path):
    logits = make_sb_ctc(tmp_path / "logits", seed=5, log_softmax=False)
    with pytest.raises(ModelDirError, match=r"not CTC log-probabilities .*log-softmax"):
        TeacherEnsemble([str(logits)], units_from=str(sb["student"]))
    noenc = tmp_path / "noenc"
    shutil.copytree(sb["char40"], noenc)
    text = (noenc / "hyperparams.yaml").read_text().replace("    encoder: !ref <encoder>", "    enc: !ref <encoder>")
    (noenc / "hyperparams.yaml").write_text(text)
    with pytest.raises(ModelDirError, match=r"not a SpeechBrain EncoderASR CTC model: 'modules' must hold an 'encoder'"):
        TeacherEnsemble([str(noenc)], units_from=str(sb["student"]))
    s2s = tmp_path / "s2s"
    shutil.copytree(sb["char40"], s2s)
    text = (s2s / "hyperparams.yaml").read_text().replace("!name:speechbrain.decoders.ctc_greedy_decode",
                                                          "!name:speechbrain.decoders.seq2seq.S2SGreedySearcher")
    (s2s / "hyperparams.yaml").write_text(text)
    with pytest.raises(ModelDirError, match=r"S2SGreedySearcher.* is not a CTC decoder"):
        TeacherEnsemble([str(s2s)], units_from=str(sb["student"]))


def test_bpe_teacher_is_refused_pointing_to_pseudo_label_which_takes_it(sb, tmp_path):
    d = make_sb_ctc(tmp_path / "bpe", seed=6, model_type="bpe", vocab_size=60)
    with pytest.raises(UnitsError, match=r"multi-character pieces .*characters.*asr-kd pseudo-label"):
        TeacherEnsemble([str(d)], units_from=str(sb["student"]))
    from asr_kd.label.seq_teacher import PseudoLabelOptions, pseudo_label

    data = make_data(tmp_path / "corpus", 2, min_s=1.0)
    pseudo_label(str(d), str(data), str(tmp_path / "pseudo"), PseudoLabelOptions(max_wer=None, progress=False))
    meta = json.loads((tmp_path / "pseudo" / "meta.json").read_text())
    assert meta["teacher"]["kind"] == "sb-ctc"
    texts = read_data_dir(tmp_path / "pseudo").text or {}
    assert all("\u2581" not in t for t in texts.values())  # the word mark became spaces


def test_other_model_rate_gets_resampled_audio_and_says_so(sb, tmp_path, caplog):
    d = make_sb_ctc(tmp_path / "sr8k", seed=7, sample_rate=8000)
    ens = TeacherEnsemble([str(d)], units_from=str(sb["student"]), top_k=6)
    data = read_data_dir(sb["data"])
    utt = data.utt_ids[0]
    wave, _ = sf.read(data.source(utt).path, dtype="float32")
    with caplog.at_level(logging.INFO, logger="asr_kd.label.sb_teacher"):
        probs = ens.dense([torch.from_numpy(wave)])[0][0]
    assert any("resampling input audio from 16000 Hz to the model's 8000 Hz" in r.message for r in caplog.records)
    ref, _ = reference_targets(speechbrain_model(d, tmp_path), wave, load_tokenizer(sb["student"]).symbols, sample_rate=8000)
    torch.testing.assert_close(probs, ref, atol=1e-4, rtol=1e-4)
    assert ens.describe()[0]["sample_rate"] == 8000 and ens.describe()[0]["frame_shift_ms"] == 40.0


def test_label_encoder_units_blank_and_word_delimiter():
    """A CTCTextEncoder tokenizer: its blank label is the CTC blank, its space the word boundary."""
    from speechbrain.dataio.encoder import CTCTextEncoder

    from asr_kd.label.sb_teacher import tokenizer_vocab
    from asr_kd.label.unit_map import build_unit_map

    enc = CTCTextEncoder()
    enc.update_from_iterable(["ab c", "ba"], sequence_input=True)
    enc.insert_blank(index=2)
    vocab, kind = tokenizer_vocab(enc, 0, Path("hyperparams.yaml"))
    assert kind == "label-encoder" and vocab.kind == "char"
    assert vocab.symbols[vocab.blank_id] == "<blank>" and vocab.blank_id == 2 and vocab.word_delimiter == " "
    from asr_kd.data.units import CharTokenizer

    um = build_unit_map(vocab, CharTokenizer.build(["ab c"]), teacher_name="t")
    student = CharTokenizer.build(["ab c"]).symbols
    got = {t: (student[s] if s is not None else None) for t, s in zip(vocab.symbols, um.targets)}
    assert got == {"a": "a", "b": "b", " ": "\u2581", "c": "c", "<blank>": "<blk>"}
