"""Tiny SpeechBrain ``EncoderASR`` CTC model directories for the teacher tests.

``make_sb_ctc`` writes what a SpeechBrain recipe publishes for a CTC model: ``hyperparams.yaml``
(``modules: {encoder}``, ``tokenizer``, ``decoding_function``, ``pretrainer`` with its loadables) and
the checkpoints ``asr.ckpt`` (the encoder's state dict), ``normalizer.ckpt`` (global input
normalization statistics) and ``tokenizer.ckpt`` (a sentencepiece model trained here on a few
sentences). The encoder: 20-dim SpeechBrain fbank (25 ms windows, 10 ms hop, centered frames), global
mean/variance normalization, a linear layer, max pooling by 4 (40 ms output frames; ``pool=2``: 20 ms), the CTC output
layer and a log-softmax; seeded random weights, the output layer scaled up so that frames are decisive.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

SB_SENTENCES = ["hello world", "the quick brown fox", "jumps over a lazy dog", "turn on the light", "play some music",
                "what time is it", "set a timer", "call my mother", "open the door", "good morning"]

HPARAMS = """\
# tiny SpeechBrain EncoderASR CTC model (tests/sb_factories.py)
sample_rate: {sample_rate}
n_mels: 20
output_neurons: {vocab}
blank_index: 0

compute_features: !new:speechbrain.lobes.features.Fbank
    sample_rate: !ref <sample_rate>
    n_mels: !ref <n_mels>

normalize: !new:speechbrain.processing.features.InputNormalization
    norm_type: global

enc: !new:speechbrain.nnet.linear.Linear
    input_size: !ref <n_mels>
    n_neurons: 32

pool: !new:speechbrain.nnet.pooling.Pooling1d
    pool_type: max
    kernel_size: {pool}

ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 32
    n_neurons: !ref <output_neurons>

{output_layer}

encoder: !new:speechbrain.nnet.containers.LengthsCapableSequential
    - !ref <compute_features>
    - !ref <normalize>
    - !ref <enc>
    - !ref <pool>
    - !ref <ctc_lin>
    - !ref <log_softmax>

asr_model: !new:torch.nn.ModuleList
    - [!ref <enc>, !ref <ctc_lin>]

tokenizer: !new:sentencepiece.SentencePieceProcessor

decoding_function: !name:speechbrain.decoders.ctc_greedy_decode
    blank_id: !ref <blank_index>

modules:
    encoder: !ref <encoder>

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        asr: !ref <asr_model>
        normalizer: !ref <normalize>
        tokenizer: !ref <tokenizer>
{paths}"""

LOG_SOFTMAX = "log_softmax: !new:speechbrain.nnet.activations.Softmax\n    apply_log: True"
NO_LOG_SOFTMAX = "log_softmax: !new:torch.nn.Identity"  # logits out: not CTC log-probabilities


def train_sentencepiece(model_type: str = "char", vocab_size: int = 0, texts: list[str] | None = None) -> bytes:
    """A sentencepiece model (bytes) on ``texts``: SpeechBrain's setup, id 0 = ``<unk>`` (shared with the CTC blank)."""
    import sentencepiece as spm

    texts = texts or SB_SENTENCES
    buf = io.BytesIO()
    kwargs = dict(vocab_size=vocab_size) if vocab_size else dict(vocab_size=len(set("".join(texts))) + 1,
                                                                    hard_vocab_limit=False)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, model_type=model_type,
                                   character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
                                   minloglevel=2, **kwargs)
    return buf.getvalue()


def make_sb_ctc(out: Path, seed: int = 0, model_type: str = "char", vocab_size: int = 0, sample_rate: int = 16000,
                log_softmax: bool = True, scale: float = 8.0, pool: int = 4, asr_path: str | None = None) -> Path:
    """Write a tiny random SpeechBrain EncoderASR CTC model dir at ``out`` (module docstring).

    ``pool``: output frames per 10 ms fbank frames (4: 40 ms, 2: 20 ms); ``asr_path``: a ``paths:``
    entry for the ``asr`` loadable (e.g. a hub id ``org/repo/asr.ckpt``, as published hparams have);
    ``model_type`` ``bpe`` with ``vocab_size`` gives a multi-character-piece tokenizer."""
    import sentencepiece as spm
    from speechbrain.nnet.linear import Linear

    out.mkdir(parents=True, exist_ok=True)
    sp_bytes = train_sentencepiece(model_type, vocab_size)
    (out / "tokenizer.ckpt").write_bytes(sp_bytes)
    vocab = spm.SentencePieceProcessor(model_proto=sp_bytes).vocab_size()
    (out / "hyperparams.yaml").write_text(HPARAMS.format(sample_rate=sample_rate, vocab=vocab,
                                                         output_layer=LOG_SOFTMAX if log_softmax else NO_LOG_SOFTMAX,
                                                         pool=pool, paths=f"    paths:\n        asr: {asr_path}\n"
                                                         if asr_path else ""),
                                          encoding="utf-8")
    torch.manual_seed(seed)
    enc, ctc_lin = Linear(input_size=20, n_neurons=32), Linear(input_size=32, n_neurons=vocab)
    with torch.no_grad():
        ctc_lin.w.weight.mul_(scale)
        ctc_lin.w.bias.copy_(torch.linspace(-1, 1, vocab))  # a spread of ranks, not ties
    torch.save(torch.nn.ModuleList([enc, ctc_lin]).state_dict(), out / "asr.ckpt")
    stats = {"glob_mean": torch.full((20,), 2.0) + 0.1 * torch.randn(20), "glob_std": torch.full((20,), 3.0),
             "count": 100}
    torch.save(stats, out / "normalizer.ckpt")
    return out
