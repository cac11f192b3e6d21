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


def filterbank_init(model, sample_rate: int = 16000) -> None:
    """Give a two-layer conv feature encoder (e.g. kernel 400 / stride 160, then kernel 2 / stride 2: 20 ms
    frames) a head start: layer 1 = Hann-windowed cosine/sine pairs on a mel-like frequency grid (25 ms
    windows, 10 ms hop, like our fbank), layer 2 = per-channel averaging, so that GELU(layer 1) pooled
    by layer 2 approximates band energies. Training from random conv filters on raw waveform takes far
    longer than a test may run; everything is still trained afterwards."""
    convs = model.wav2vec2.feature_extractor.conv_layers
    c1, c2 = convs[0].conv, convs[1].conv
    channels, k1 = c1.out_channels, c1.kernel_size[0]
    t = torch.arange(k1) / sample_rate
    mel = torch.linspace(2595 * torch.log10(torch.tensor(1 + 100 / 700)), 2595 * torch.log10(torch.tensor(1 + 7000 / 700)),
                         channels // 2)
    freqs = 700 * (10 ** (mel / 2595) - 1)
    window = torch.hann_window(k1, periodic=False)
    with torch.no_grad():
        w = torch.cat([torch.cos(2 * torch.pi * freqs[:, None] * t) * window, torch.sin(2 * torch.pi * freqs[:, None] * t) * window])
        c1.weight.copy_(w[:, None, :] / window.sum() * 4)
        c2.weight.zero_()
        k2 = c2.kernel_size[0]
        for c in range(min(c2.in_channels, c2.out_channels)):
            c2.weight[c, c, :] = 1.0 / k2


def train_hf_ctc(model, utterances: list[tuple[torch.Tensor, str]], vocab: dict[str, int], epochs: int, lr: float = 3e-3,
                 batch_size: int = 16, seed: int = 0) -> list[float]:
    """Plain PyTorch CTC training of an HF ``*ForCTC`` model on ``(normalized waveform, text)`` pairs
    (AdamW, one-cycle LR, padded batches with an attention mask); returns the mean loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * max(len(utterances) // batch_size, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)

    def encode(text: str) -> list[int]:
        return [vocab["|"] if c == " " else vocab.get(c.upper(), vocab["<unk>"]) for c in text]

    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(utterances), generator=g).tolist()
        total = 0.0
        for b in range(0, len(order) - batch_size + 1, batch_size):
            batch = [utterances[i] for i in order[b: b + batch_size]]
            n = max(w.numel() for w, _ in batch)
            x = torch.zeros(len(batch), n)
            mask = torch.zeros(len(batch), n, dtype=torch.long)
            labels = torch.full((len(batch), max(len(t) for _, t in batch)), -100)
            for j, (w, t) in enumerate(batch):
                x[j, : w.numel()], mask[j, : w.numel()] = w, 1
                labels[j, : len(t)] = torch.tensor(encode(t))
            loss = model(x, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss)
        losses.append(total / max(len(order) // batch_size, 1))
    model.eval()
    return losses


WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                    "<|notimestamps|>", "<|startofprev|>", "<|nocaptions|>"]


def make_whisper(out: Path, seed: int = 0, max_new: int = 12) -> Path:
    """A tiny random WhisperForConditionalGeneration + WhisperProcessor (byte-level BPE over the 256 byte
    symbols, no merges) saved with save_pretrained. Its untied output layer only favours lower-case
    letters and the space byte, so greedy transcripts are short random words (a deterministic function
    of the audio); end-of-text is never favoured, so output length is ``max_new`` tokens."""
    import transformers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    out.mkdir(parents=True, exist_ok=True)
    b2u = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(b2u.values())}
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = transformers.WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    ids = tok.convert_tokens_to_ids(WHISPER_SPECIALS)
    cfg = transformers.WhisperConfig(
        vocab_size=len(tok), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64, pad_token_id=ids[0], bos_token_id=ids[0], eos_token_id=ids[0], decoder_start_token_id=ids[1],
        suppress_tokens=[], begin_suppress_tokens=[], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    allowed = [vocab[b2u[b]] for b in list(range(ord("a"), ord("z") + 1)) + [ord(" ")]]
    with torch.no_grad():
        w = torch.zeros_like(model.proj_out.weight)
        w[allowed] = 3.0 * torch.randn(len(allowed), w.shape[1])
        model.proj_out.weight.copy_(w)
    model.generation_config.decoder_start_token_id = ids[1]
    model.generation_config.max_new_tokens = max_new
    model.save_pretrained(str(out))
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    transformers.WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(out))
    return out
