"""Acoustic models: shapes, lengths, batch independence, sizes, latency, config validation."""

from __future__ import annotations

import pytest
import torch

from asr_kd.errors import ConfigError
from asr_kd.models import PRESETS, ConformerCTC, LstmCTC, build_model, parse_model_config

torch.set_num_threads(1)
VOCAB = 12
KINDS = ["tiny_conformer", "tiny_streaming_conformer", "tiny_lstm"]


def make(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(parse_model_config({**PRESETS[name], **overrides}), VOCAB).eval()


@pytest.mark.parametrize("name", KINDS)
def test_output_shapes_and_lengths(name):
    model = make(name)
    feats = torch.randn(3, 61, 80)
    lens = torch.tensor([61, 40, 7])
    with torch.no_grad():
        log_probs, out_lens = model(feats, lens)
    assert out_lens.tolist() == [15, 10, 1]  # T // 4: 4x subsampling, trailing 1-3 frames dropped
    assert log_probs.shape == (3, 15, VOCAB)
    # rows are normalized log-probabilities
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(3, 15), atol=1e-5)
    assert model.frame_shift_ms == 40.0 and model.subsampling == 4


@pytest.mark.parametrize("name", KINDS)
def test_20ms_output_frames_have_the_same_parameters_and_twice_the_frames(name):
    model40, model20 = make(name), make(name, subsampling=2)
    assert model20.num_params() == model40.num_params()  # the second conv keeps its shape, stride 1 in time
    feats = torch.randn(2, 61, 80)
    with torch.no_grad():
        log_probs, out_lens = model20(feats, torch.tensor([61, 7]))
    assert out_lens.tolist() == [30, 3] and log_probs.shape == (2, 30, VOCAB)  # T // 2
    assert model20.frame_shift_ms == 20.0
    if model20.is_streaming:
        assert model20.algorithmic_latency_ms == model20.chunk_size * 20 + 15


@pytest.mark.parametrize("name", KINDS)
def test_shorter_than_one_output_frame(name):
    model = make(name)
    with torch.no_grad():
        log_probs, out_lens = model(torch.randn(2, 3, 80), torch.tensor([3, 2]))
    assert log_probs.shape == (2, 0, VOCAB) and out_lens.tolist() == [0, 0]


@pytest.mark.parametrize("name", KINDS)
def test_batch_padding_does_not_change_outputs(name):
    """An utterance decodes the same alone or padded in a batch with a longer one (the conformer
    convolution module zeroes padded frames; SpeechBrain's own forward would not)."""
    model = make(name)
    torch.manual_seed(1)
    long, short = torch.randn(1, 93, 80), torch.randn(1, 38, 80)
    batch = torch.zeros(2, 93, 80)
    batch[0], batch[1, :38] = long[0], short[0]
    batch[1, 38:] = 5.0  # loud garbage in the padding
    with torch.no_grad():
        lp_batch, lens = model(batch, torch.tensor([93, 38]))
        lp_short, _ = model(short, torch.tensor([38]))
        lp_long, _ = model(long, torch.tensor([93]))
    assert torch.allclose(lp_batch[1, : lens[1]], lp_short[0], atol=1e-5)
    assert torch.allclose(lp_batch[0], lp_long[0], atol=1e-5)


def test_param_counts_scale_with_config():
    base = make("tiny_conformer").num_params()
    assert make("tiny_conformer", d_model=64, d_ffn=128).num_params() > 2 * base
    assert make("tiny_conformer", num_layers=4).num_params() > base
    lstm = make("tiny_lstm").num_params()
    assert make("tiny_lstm", hidden_size=96).num_params() > lstm
    # projection shrinks the LSTM
    assert make("tiny_lstm", hidden_size=96, proj_size=24).num_params() < make("tiny_lstm", hidden_size=96).num_params()
    # sensible presets: tiny for tests, demo students at most 25 % of the demo teacher
    assert 20_000 < base < 100_000
    teacher = make("demo_teacher").num_params()
    assert 2_000_000 <= teacher <= 5_000_000
    assert make("demo_student").num_params() <= 0.25 * teacher
    assert make("demo_lstm").num_params() <= 0.25 * teacher


def test_latency_reporting():
    teacher = make("tiny_conformer")
    assert not teacher.is_streaming and teacher.algorithmic_latency_ms is None
    student = make("tiny_streaming_conformer", chunk_size=8)
    assert student.is_streaming
    # 8 chunks x 40 ms + 15 ms fbank window lookahead (25 ms window - 10 ms shift); front end: 0 frames
    assert student.algorithmic_latency_ms == 8 * 40 + 15
    student.set_chunking(4)
    assert student.algorithmic_latency_ms == 4 * 40 + 15 and student.chunk_input_frames == 16
    lstm = make("tiny_lstm", chunk_size=1)
    assert lstm.is_streaming and lstm.algorithmic_latency_ms == 55


def test_set_chunking_keeps_left_context_duration():
    student = make("tiny_streaming_conformer", chunk_size=8, left_chunks=4)  # 32 frames of left context
    student.set_chunking(4)
    assert (student.chunk_size, student.left_chunks) == (4, 8)
    state = student.init_state(1, "cpu")
    assert state[1].shape[2] == 32


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="d_modle: unknown key"):
        parse_model_config({"kind": "conformer", "d_modle": 64}, source="conf/teacher.yaml")
    with pytest.raises(ConfigError, match="conf/x.yaml"):
        parse_model_config({"kind": "lstm", "hidden": 64}, source="conf/x.yaml")
    with pytest.raises(ConfigError, match="kind"):
        parse_model_config({"kind": "transformer"})


def test_invalid_streaming_configs_refused():
    with pytest.raises(ConfigError, match="chunk_size"):
        parse_model_config({"kind": "conformer", "streaming": True})
    with pytest.raises(ConfigError, match="streaming: true"):
        parse_model_config({"kind": "conformer", "chunk_size": 8, "left_chunks": 2})
    with pytest.raises(ConfigError, match="divisible"):
        parse_model_config({"kind": "conformer", "d_model": 30, "nhead": 4})
    with pytest.raises(ConfigError, match="chunk_size_min"):
        parse_model_config({"kind": "conformer", "streaming": True, "chunk_size": 8, "left_chunks": 2,
                            "dynamic_chunk_training": True,
                            "dynamic_chunk": {"chunk_size_min": 9, "chunk_size_max": 4}})


def test_build_model_kinds():
    assert isinstance(make("tiny_conformer"), ConformerCTC)
    assert isinstance(make("tiny_lstm"), LstmCTC)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(parse_model_config(PRESETS["tiny_lstm"]), 1)


def test_dynamic_chunk_training_samples_chunks_in_training_only():
    model = make("tiny_streaming_conformer", dynamic_chunk_training=True,
                 dynamic_chunk={"chunkwise_prob": 1.0, "chunk_size_min": 1, "chunk_size_max": 16,
                                "limited_left_context_prob": 1.0, "left_chunks_min": 1, "left_chunks_max": 4})
    model.train()
    torch.manual_seed(0)
    sampled = {(c.chunk_size, c.left_context_size) for c in (model.chunk_config() for _ in range(20))}
    assert len(sampled) > 5  # random chunk sizes and left contexts per batch
    model.eval()
    fixed = model.chunk_config()
    assert (fixed.chunk_size, fixed.left_context_size) == (model.chunk_size, model.left_chunks)


@pytest.mark.parametrize("name", KINDS)
def test_ctc_training_step_gives_finite_gradients(name):
    overrides = {"dropout": 0.1}
    if name == "tiny_streaming_conformer":
        overrides["dynamic_chunk_training"] = True
    model = make(name, **overrides).train()
    feats, lens = torch.randn(2, 80, 80), torch.tensor([80, 60])
    log_probs, out_lens = model(feats, lens)
    targets = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, torch.tensor([4, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
