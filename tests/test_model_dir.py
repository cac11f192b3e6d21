"""Model dirs: round trip, fingerprint, refusal of missing/corrupt/tampered/pickled files."""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from asr_kd.data.cmvn import GlobalCMVN
from asr_kd.data.features import FbankConfig
from asr_kd.data.units import CharTokenizer
from asr_kd.errors import ModelDirError
from asr_kd.models import PRESETS, build_model, parse_model_config
from asr_kd.models.model_dir import REQUIRED, compute_fingerprint, load_model_dir, read_fingerprint, save_model_dir

torch.set_num_threads(1)


def components(kind: str = "tiny_streaming_conformer", seed: int = 0):
    tokenizer = CharTokenizer.build(["the cat sat", "a dog ran"])
    config = parse_model_config(PRESETS[kind])
    torch.manual_seed(seed)
    model = build_model(config, tokenizer.vocab_size).eval()
    cmvn = GlobalCMVN(mean=torch.linspace(-8.0, -2.0, 80), std=torch.linspace(1.0, 3.0, 80))
    return model, config, tokenizer, cmvn, FbankConfig()


def save(tmp_path, kind="tiny_streaming_conformer", seed=0, name="model"):
    model, config, tokenizer, cmvn, fbank = components(kind, seed)
    out = tmp_path / name
    fp = save_model_dir(out, model, config, tokenizer, cmvn, fbank, {"recipe": "test"})
    return out, model, fp


def rewrite_with_fingerprint(model_dir, name: str, data: bytes) -> None:
    """Replace a file and recompute the fingerprint, so only the later checks can catch it."""
    (model_dir / name).write_bytes(data)
    fp = compute_fingerprint((model_dir / "model.pt").read_bytes(), (model_dir / "model.yaml").read_bytes())
    (model_dir / "fingerprint.txt").write_text(fp + "\n")


@pytest.mark.parametrize("kind", ["tiny_conformer", "tiny_streaming_conformer", "tiny_lstm"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    out, model, fp = save(tmp_path, kind)
    loaded = load_model_dir(out)
    assert loaded.fingerprint == fp == read_fingerprint(out) and len(fp) == 16
    assert not loaded.model.training and loaded.frame_shift_ms == 40.0
    assert loaded.model_config == model.config and loaded.meta == {"recipe": "test"}
    feats = torch.randn(2, 50, 80)
    lens = torch.tensor([50, 33])
    with torch.no_grad():
        a, la = model(feats, lens)
        b, lb = loaded.model(feats, lens)
    assert torch.equal(a, b) and torch.equal(la, lb)
    header = yaml.safe_load((out / "model.yaml").read_text())
    assert header["model"]["kind"] == PRESETS[kind]["kind"]
    assert header["frame_shift_ms"] == 40.0 and header["units_hash"] == loaded.tokenizer.units_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left behind


def test_fingerprint_changes_with_weights_and_is_stable(tmp_path):
    _, _, fp0 = save(tmp_path, seed=0, name="a")
    _, _, fp0_again = save(tmp_path, seed=0, name="b")
    _, _, fp1 = save(tmp_path, seed=1, name="c")
    assert fp0 == fp0_again
    assert fp1 != fp0


def test_save_into_existing_dir_replaces_model_files_and_keeps_the_rest(tmp_path):
    # a training run saves the final model into its own dir, beside checkpoints and metrics
    out, _, _ = save(tmp_path, seed=0)
    (out / "metrics.csv").write_text("kept")
    _, _, fp1 = save(tmp_path, seed=1)
    assert (out / "metrics.csv").read_text() == "kept"
    assert load_model_dir(out).fingerprint == fp1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_file_is_named(tmp_path, name):
    out, _, _ = save(tmp_path)
    (out / name).unlink()
    with pytest.raises(ModelDirError, match=name):
        load_model_dir(out)


def test_tampered_weights_fail_the_fingerprint(tmp_path):
    out, _, _ = save(tmp_path)
    data = bytearray((out / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="fingerprint.txt.*does not match"):
        load_model_dir(out)


def test_corrupt_weights_are_refused(tmp_path):
    out, _, _ = save(tmp_path)
    rewrite_with_fingerprint(out, "model.pt", b"not a torch file")
    with pytest.raises(ModelDirError, match="model.pt"):
        load_model_dir(out)


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: proof that code would execute on load."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_checkpoint_is_refused_without_running_code(tmp_path):
    out, model, _ = save(tmp_path)
    marker = tmp_path / "pwned"
    state = dict(model.state_dict())
    state["payload"] = _Payload(str(marker))
    buf = io.BytesIO()
    torch.save(state, buf)
    rewrite_with_fingerprint(out, "model.pt", buf.getvalue())
    with pytest.raises(ModelDirError, match="model.pt: refused"):
        load_model_dir(out)
    assert not marker.exists()


def test_unknown_config_key_in_model_yaml(tmp_path):
    out, _, _ = save(tmp_path)
    header = yaml.safe_load((out / "model.yaml").read_text())
    header["model"]["d_modle"] = 7
    rewrite_with_fingerprint(out, "model.yaml", yaml.safe_dump(header).encode())
    with pytest.raises(ModelDirError, match=r"model.yaml.*d_modle: unknown key"):
        load_model_dir(out)


def test_weights_that_do_not_fit_the_config(tmp_path):
    out, _, _ = save(tmp_path)
    header = yaml.safe_load((out / "model.yaml").read_text())
    header["model"]["num_layers"] = 3
    rewrite_with_fingerprint(out, "model.yaml", yaml.safe_dump(header).encode())
    with pytest.raises(ModelDirError, match="model.pt: weights do not fit"):
        load_model_dir(out)


def test_changed_units_are_refused(tmp_path):
    out, _, _ = save(tmp_path)
    other, *_ = save(tmp_path, name="other")
    CharTokenizer.build(["the cat sat", "a dog ran", "zebra"]).save(other)
    (out / "tokens.txt").write_bytes((other / "tokens.txt").read_bytes())
    with pytest.raises(ModelDirError, match="tokens.txt"):
        load_model_dir(out)


def test_featurize_is_fbank_then_cmvn(tmp_path):
    out, _, _ = save(tmp_path)
    loaded = load_model_dir(out)
    torch.manual_seed(0)
    wave = torch.randn(2, 8000) * 0.1
    lens = torch.tensor([8000, 5000])
    feats, feat_lens = loaded.featurize(wave, lens)
    raw, raw_lens = loaded.fbank(wave, lens)
    assert feat_lens.tolist() == raw_lens.tolist() == [1 + (8000 - 400) // 160, 1 + (5000 - 400) // 160]
    expected = (raw - loaded.cmvn.mean) / loaded.cmvn.std
    assert torch.allclose(feats[0], expected[0], atol=1e-5)


def test_target_delay_of_a_distilled_student_is_added_to_its_reported_latency(tmp_path):
    import json

    from asr_kd.evaluate import evaluate
    from asr_kd.export.evaluate_onnx import load_onnx_for_evaluation
    from asr_kd.export.onnx_export import export_onnx
    from asr_kd.config import load_config
    from asr_kd.label.pipeline import LabelOptions, label_local
    from asr_kd.train.config import TrainConfig
    from asr_kd.train.loop import Trainer
    from factories import make_data, make_teacher, tiny_train_config

    # the student dir comes from a real one-step KD run with kd.target_delay: 2, so meta.json is what
    # training writes (the test used to write the meta.json it then checked; mutation caught: the trainer
    # not recording kd in meta.json -> target_delay_ms 0 and latencies 80 ms short)
    teacher = make_teacher(tmp_path / "teacher")
    labeled = make_data(tmp_path / "lab", 3, with_text=True, min_s=1.2)
    unlabeled = make_data(tmp_path / "unl", 3, prefix="u", min_s=1.2)
    label_local([str(teacher)], str(unlabeled), str(tmp_path / "store"), LabelOptions(top_k=4, progress=False))
    conf = tiny_train_config(tmp_path / "kd.yaml", [str(labeled)], unlabeled=[str(unlabeled)], store=str(tmp_path / "store"),
                             from_model=str(teacher), max_steps=1, extra={"kd.target_delay": 2})
    student = tmp_path / "student"
    Trainer(load_config(conf, TrainConfig), student, progress=False).run()
    assert json.loads((student / "meta.json").read_text())["kd"]["target_delay"] == 2
    chunk = load_model_dir(student).model.chunk_size
    assert load_model_dir(student).target_delay_ms == 80.0
    data = make_data(tmp_path / "d", 2, with_text=True)
    for streaming in (False, True):
        report = evaluate(str(student), str(data), str(tmp_path / f"eval{streaming}"), streaming=streaming, progress=False)
        assert report["latency_ms"] == chunk * 40 + 15 + 80 and report["target_delay_ms"] == 80.0
    res = export_onnx(student, tmp_path / "s.onnx")
    assert res.metadata["target_delay_ms"] == 80.0 and res.metadata["algorithmic_latency_ms"] == chunk * 40 + 15
    fields = load_onnx_for_evaluation(res.path, threads=1).report_fields()
    assert fields["latency_ms"] == chunk * 40 + 15 + 80
