"""Tiny Hugging Face CTC models for the teacher tests, written with plain ``save_pretrained``.

Each builder makes a seeded, randomly initialized ~40k-parameter model (2 layers, 32 dims) with a
vocabulary like the public English checkpoints' (``<pad>`` blank, ``<s>``, ``</s>``, ``<unk>``, ``|``,
upper-case letters, ``'``) and saves model + processor (feature extractor + CTC tokenizer) to a dir.
The output layer is scaled up so that frames are decisive (a near-uniform random teacher would make
any two outputs look alike).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LETTERS = "ETAONISRHDLUCMFWYGPBVKXQJZ'"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)


def english_vocab(symbols: str = LETTERS) -> dict[str, int]:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for c in symbols:
        vocab[c] = len(vocab)
    return vocab


def save_processor(out: Path, vocab: dict[str, int], layer_norm: bool) -> None:
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    out.mkdir(parents=True, exist_ok=True)
    vocab_path = out / "vocab.json"
    vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    tok = Wav2Vec2CTCTokenizer(str(vocab_path), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=layer_norm)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(out))


def make_hf_ctc(out: Path, arch: str = "Wav2Vec2ForCTC", seed: int = 0, layer_norm: bool = True,
                vocab: dict[str, int] | None = None, scale: float = 30.0) -> Path:
    """Save a tiny random ``arch`` (Wav2Vec2ForCTC, HubertForCTC or WavLMForCTC) + processor at ``out``.

    ``layer_norm``: layer-norm conv front end with an attention mask (large checkpoints' setup) vs the
    group-norm front end run without one (base checkpoints)."""
    import transformers

    vocab = vocab or english_vocab()
    cfg_cls = {"Wav2Vec2ForCTC": transformers.Wav2Vec2Config, "HubertForCTC": transformers.HubertConfig,
               "WavLMForCTC": transformers.WavLMConfig}[arch]
    extra = dict(feat_extract_norm="layer", do_stable_layer_norm=True) if layer_norm else {}
    cfg = cfg_cls(**TINY, **extra, vocab_size=len(vocab), pad_token_id=vocab["<pad>"])
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
        model.lm_head.bias.copy_(torch.linspace(-1, 1, len(vocab)))  # a spread of ranks, not ties
    model.save_pretrained(str(out))
    save_processor(out, vocab, layer_norm)
    return out
