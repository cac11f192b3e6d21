"""Hugging Face CTC teachers (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC) loaded from a local directory.

A directory written by ``save_pretrained`` (plus the processor's files)::

    config.json                 architectures: [Wav2Vec2ForCTC | HubertForCTC | WavLMForCTC], conv strides
    model.safetensors           weights (safetensors only; a pickle ``pytorch_model.bin`` is refused)
    vocab.json                  symbol -> output id (the CTC tokenizer's vocabulary)
    tokenizer_config.json       optional: pad/unk/word delimiter tokens (defaults <pad>, <unk>, |)
    preprocessor_config.json    optional (or processor_config.json's "feature_extractor"):
                                sampling_rate (default 16000), do_normalize (default true),
                                return_attention_mask (default false)

Nothing is downloaded: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. The model takes raw
waveform at its sampling rate (other rates are resampled here, and the log says so), each utterance
normalized to zero mean and unit variance when ``do_normalize`` is set (``(x - mean) / sqrt(var +
1e-7)``, as the feature extractor does); no fbank, no CMVN. Models whose feature extractor wants an
attention mask (layer-norm front ends) run padded batches with one; the others (group-norm front
ends, e.g. wav2vec2-base, where padding would change the result) run one utterance at a time.

Output: natural-log CTC log-probabilities over the teacher's own vocabulary at its frame rate
(``1000 * prod(conv_stride) / sampling_rate`` ms: 20 ms for the usual 320-sample stride at 16 kHz).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from asr_kd.errors import AsrKdError, ModelDirError
from asr_kd.label.unit_map import TeacherVocab

log = logging.getLogger(__name__)

HF_CTC_ARCHITECTURES = ("Wav2Vec2ForCTC", "HubertForCTC", "WavLMForCTC")
HF_SEQ2SEQ_ARCHITECTURES = ("WhisperForConditionalGeneration",)
INSTALL_HINT = "pip install 'asr-kd[hf]'"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
FE_CONFIGS = ("preprocessor_config.json", "processor_config.json")


def import_transformers() -> Any:
    """``transformers``, offline; an error naming the extra when it is not installed."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as exc:
        raise AsrKdError(f"Hugging Face teachers need the 'transformers' package ({exc}); install it with {INSTALL_HINT}") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def read_hf_config(d: Path) -> dict[str, Any]:
    path = d / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: cannot read the Hugging Face config: {exc}") from None
    if not isinstance(cfg, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return cfg


def hf_architecture(d: Path) -> str:
    """The single architecture named in ``config.json``."""
    archs = read_hf_config(d).get("architectures") or []
    if not isinstance(archs, list) or len(archs) != 1:
        raise ModelDirError(f"{d / 'config.json'}: 'architectures' must name exactly one model class, got {archs!r}; "
                            f"supported teachers: {', '.join(HF_CTC_ARCHITECTURES + HF_SEQ2SEQ_ARCHITECTURES)}")
    return str(archs[0])


def check_safe_weights(d: Path) -> Path:
    """The safetensors weights of ``d``; a pickle-only directory is refused (never unpickled)."""
    for name in (SAFE_WEIGHTS, SAFE_INDEX):
        if (d / name).is_file():
            return d / name
    pickles = [n for n in PICKLE_WEIGHTS if (d / n).exists()]
    if pickles:
        raise ModelDirError(f"{d / pickles[0]}: refused: weights in a pickle-based format can run code when loaded; "
                            f"asr-kd loads only {SAFE_WEIGHTS}. Convert once, in a trusted environment: "
                            "model = AutoModelForCTC.from_pretrained(DIR); model.save_pretrained(DIR) "
                            "(transformers writes safetensors by default)")
    raise ModelDirError(f"{d}: no {SAFE_WEIGHTS} in this Hugging Face model directory")


def hf_fingerprint(d: Path) -> str:
    """sha256 over the weights files, config.json and vocab.json (in this order), first 16 hex digits."""
    h = hashlib.sha256()
    weights = check_safe_weights(d)
    files = [weights]
    if weights.name == SAFE_INDEX:
        index = json.loads(weights.read_text(encoding="utf-8"))
        files += [d / f for f in sorted(set(index.get("weight_map", {}).values()))]
    for f in files + [d / "config.json", d / "vocab.json"]:
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def read_feature_extractor_config(d: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` (or the ``feature_extractor`` of ``processor_config.json``); defaults when absent."""
    for name in FE_CONFIGS:
        p = d / name
        if p.is_file():
            try:
                cfg = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ModelDirError(f"{p}: not valid JSON: {exc}") from None
            if name == "processor_config.json":
                cfg = cfg.get("feature_extractor", {})
            return {"sampling_rate": int(cfg.get("sampling_rate", 16000)), "do_normalize": bool(cfg.get("do_normalize", True)),
                    "return_attention_mask": bool(cfg.get("return_attention_mask", False)), "source": name}
    log.warning("%s: no %s; assuming 16000 Hz input, do_normalize=true, no attention mask", d, " or ".join(FE_CONFIGS))
    return {"sampling_rate": 16000, "do_normalize": True, "return_attention_mask": False, "source": "defaults"}


def read_ctc_vocab(d: Path, vocab_size: int, pad_token_id: int | None) -> TeacherVocab:
    """The CTC vocabulary (``vocab.json`` + tokenizer_config.json's special tokens) by output id."""
    path = d / "vocab.json"
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; a Hugging Face CTC teacher needs its tokenizer's vocab.json "
                            "(save the processor too: processor.save_pretrained(DIR))")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ModelDirError(f"{path}: expected a flat {{symbol: id}} object (multi-language vocabularies are not supported)")
    tok_cfg: dict[str, Any] = {}
    if (d / "tokenizer_config.json").is_file():
        try:
            tok_cfg = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelDirError(f"{d / 'tokenizer_config.json'}: not valid JSON: {exc}") from None
    symbols: list[str | None] = [None] * vocab_size
    for sym, i in vocab.items():
        if not 0 <= i < vocab_size:
            raise ModelDirError(f"{path}: id {i} of {sym!r} is outside the model's {vocab_size} outputs")
        symbols[i] = sym
    added = tok_cfg.get("added_tokens_decoder") or {}
    for i_s, tok in added.items():
        i = int(i_s)
        if 0 <= i < vocab_size and symbols[i] is None and isinstance(tok, dict):
            symbols[i] = str(tok.get("content"))
    missing = [i for i, s in enumerate(symbols) if s is None]
    if missing:
        raise ModelDirError(f"{path}: output ids {missing[:10]} of the model's {vocab_size} have no symbol; "
                            "the vocabulary does not belong to this model")

    def special(key: str, default: str | None) -> str | None:
        v = tok_cfg.get(key, default)
        return v.get("content") if isinstance(v, dict) else v

    pad = special("pad_token", "<pad>")
    ids = {s: i for i, s in enumerate(symbols)}
    blank = pad_token_id if pad_token_id is not None else ids.get(pad)
    if blank is None or not 0 <= blank < vocab_size:
        raise ModelDirError(f"{d}: cannot tell the CTC blank: config.json has no pad_token_id and {pad!r} is not in vocab.json")
    specials = {s for s in (special("bos_token", "<s>"), special("eos_token", "</s>"), pad) if s}
    specials |= {str(t.get("content")) for t in added.values() if isinstance(t, dict)}
    delim = special("word_delimiter_token", "|")
    unk = special("unk_token", "<unk>")
    specials -= {delim, unk}
    return TeacherVocab(symbols=[str(s) for s in symbols], blank_id=int(blank), word_delimiter=delim, unk=unk,
                        specials=frozenset(specials))


class HfCtcTeacher:
    """A local Hugging Face CTC directory behind the teacher protocol (see ``asr_kd.label.teacher``)."""

    kind = "hf-ctc"

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        d = Path(model_dir)
        self.path = d
        self.architecture = hf_architecture(d)
        if self.architecture not in HF_CTC_ARCHITECTURES:
            raise ModelDirError(f"{d / 'config.json'}: architecture {self.architecture} is not a supported CTC teacher "
                                f"({', '.join(HF_CTC_ARCHITECTURES)})"
                                + ("; Whisper is a sequence-level teacher: use 'asr-kd pseudo-label'"
                                   if self.architecture in HF_SEQ2SEQ_ARCHITECTURES else ""))
        check_safe_weights(d)
        cfg = read_hf_config(d)
        self.fe = read_feature_extractor_config(d)
        self.sample_rate = self.fe["sampling_rate"]
        self.vocab = read_ctc_vocab(d, int(cfg.get("vocab_size", 0)), cfg.get("pad_token_id"))
        self.units = self.vocab.symbols
        self.conv_kernel = [int(k) for k in cfg.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2])]
        self.conv_stride = [int(s) for s in cfg.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])]
        stride = 1
        for s in self.conv_stride:
            stride *= s
        self.frame_shift_ms = 1000.0 * stride / self.sample_rate
        self.fingerprint = hf_fingerprint(d)
        transformers = import_transformers()
        cls = getattr(transformers, self.architecture)
        try:
            model = cls.from_pretrained(str(d), local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelDirError(f"{d}: transformers could not load the {self.architecture} model: {exc}") from None
        out_units = model.lm_head.out_features
        if out_units != len(self.units):
            raise ModelDirError(f"{d}: the model has {out_units} outputs but vocab.json has {len(self.units)} units")
        self.model = model.to(device).eval()
        self._resample_logged: set[int] = set()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path.resolve()), "architecture": self.architecture,
                "fingerprint": self.fingerprint, "frame_shift_ms": self.frame_shift_ms, "sample_rate": self.sample_rate,
                "do_normalize": self.fe["do_normalize"]}

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        """Teacher frames for ``samples`` input samples: ``L -> (L - kernel) // stride + 1`` per conv layer (0 if short)."""
        n = samples.clone().long()
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = torch.where(n >= k, torch.div(n - k, s, rounding_mode="floor") + 1, torch.zeros_like(n))
        return n

    def prepare(self, waveforms: list[torch.Tensor], sample_rate: int) -> list[torch.Tensor]:
        """Resample to the model's rate (logged once per input rate) and normalize per utterance."""
        out = []
        for w in waveforms:
            w = w.float()
            if sample_rate != self.sample_rate:
                import torchaudio

                if sample_rate not in self._resample_logged:
                    log.info("%s: resampling input audio from %d Hz to the model's %d Hz", self.path, sample_rate, self.sample_rate)
                    self._resample_logged.add(sample_rate)
                w = torchaudio.functional.resample(w, orig_freq=sample_rate, new_freq=self.sample_rate)
            if self.fe["do_normalize"]:
                w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)
            out.append(w)
        return out

    @torch.no_grad()
    def log_probs(self, waveforms: list[torch.Tensor], sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D waveforms at ``sample_rate`` -> ``(log_probs (B, T, V), lengths (B,))`` at ``frame_shift_ms`` frames."""
        waves = self.prepare(waveforms, sample_rate)
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        frames = self.output_lengths(lengths)
        T = int(frames.max()) if len(waves) else 0
        out = torch.full((len(waves), T, len(self.units)), float("-inf"))
        groups = [list(range(len(waves)))] if self.fe["return_attention_mask"] else [[i] for i in range(len(waves))]
        for group in groups:
            n = int(lengths[group].max())
            x = torch.zeros(len(group), n)
            mask = torch.zeros(len(group), n, dtype=torch.long)
            for j, i in enumerate(group):
                x[j, : waves[i].numel()] = waves[i]
                mask[j, : waves[i].numel()] = 1
            kwargs = {"attention_mask": mask.to(self.device)} if self.fe["return_attention_mask"] else {}
            logits = self.model(x.to(self.device), **kwargs).logits.float().cpu()
            lp = torch.log_softmax(logits, dim=-1)
            for j, i in enumerate(group):
                t = min(int(frames[i]), lp.shape[1])
                frames[i] = t
                out[i, :t] = lp[j, :t]
        return out, frames
