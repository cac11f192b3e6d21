"""Model dirs: everything needed to run a trained model, verified on load.

Layout::

    MODEL_DIR/
      model.yaml       format_version, model config (kind + sizes), fbank config, frame_shift_ms,
                       subsampling, vocab_size, units_hash
      tokens.txt       units (+ bpe.model for BPE units), written by the tokenizer
      cmvn.json        global CMVN stats
      model.pt         the state_dict only (torch.save); loaded with torch.load(weights_only=True)
      fingerprint.txt  sha256 over model.pt bytes then model.yaml bytes, first 16 hex digits
      meta.json        free-form provenance (training config, git commit, data, metrics ...)

The fingerprint identifies exactly these weights with this config; the soft-target store records it.
``save_model_dir`` writes into a temporary sibling dir and renames it into place, so a crash never
leaves a half-written model dir under the final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from asr_kd.config import validate_config
from asr_kd.data.cmvn import GlobalCMVN
from asr_kd.data.features import Fbank, FbankConfig
from asr_kd.data.units import load_tokenizer
from asr_kd.errors import AsrKdError, ConfigError, ModelDirError
from asr_kd.models import AcousticModel, build_model
from asr_kd.models.config import ConformerConfig, LstmConfig, parse_model_config

FORMAT_VERSION = 1
MODEL_YAML, TOKENS, CMVN_JSON, WEIGHTS, FINGERPRINT, META = (
    "model.yaml", "tokens.txt", "cmvn.json", "model.pt", "fingerprint.txt", "meta.json")
REQUIRED = (MODEL_YAML, TOKENS, CMVN_JSON, WEIGHTS, FINGERPRINT)


def compute_fingerprint(weights_bytes: bytes, model_yaml_bytes: bytes) -> str:
    """sha256 over the weights file then model.yaml, first 16 hex digits."""
    h = hashlib.sha256()
    h.update(weights_bytes)
    h.update(model_yaml_bytes)
    return h.hexdigest()[:16]


@dataclasses.dataclass
class LoadedModel:
    """A verified model dir in memory; ``model`` is in eval mode on ``device``."""

    model: AcousticModel
    model_config: ConformerConfig | LstmConfig
    fbank_config: FbankConfig
    tokenizer: Any
    cmvn: GlobalCMVN
    fingerprint: str
    frame_shift_ms: float
    path: Path
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        device = next(self.model.parameters()).device
        self.fbank = Fbank(self.fbank_config).to(device)
        self.cmvn = self.cmvn.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def target_delay_ms(self) -> float:
        """Emission delay a distilled student was trained with: ``kd.target_delay`` output frames
        (``frame_shift_ms`` each) from ``meta.json``; 0 for models trained without distillation.
        The student emits tokens that much later than its algorithmic latency alone would say."""
        kd = self.meta.get("kd") or {}
        return float(kd.get("target_delay") or 0) * self.frame_shift_ms

    def featurize(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waveforms (B, S)`` float samples at ``fbank_config.sample_rate``, ``lengths (B,)`` samples ->
        normalized fbank ``(B, T, F)`` at 10 ms frames and frame lengths ``(B,)``."""
        feats, feat_lens = self.fbank(waveforms.to(self.device), lengths.to(self.device))
        return self.cmvn(feats), feat_lens


def _install_files(tmp: Path, out_dir: Path) -> None:
    """Move the files written in ``tmp`` into ``out_dir``.

    A new ``out_dir`` is a single rename. An existing one (a training run's dir, which also holds
    checkpoints, metrics and logs that must survive) gets each model file replaced atomically, with
    ``fingerprint.txt`` removed first and written last: a reader in between sees a missing or
    mismatching fingerprint and refuses the dir rather than loading a mix of old and new files.
    """
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    (out_dir / FINGERPRINT).unlink(missing_ok=True)
    for f in sorted(tmp.iterdir()):
        if f.name != FINGERPRINT:
            os.replace(f, out_dir / f.name)
    os.replace(tmp / FINGERPRINT, out_dir / FINGERPRINT)
    shutil.rmtree(tmp, ignore_errors=True)


def save_model_dir(out_dir: str | Path, model: AcousticModel, model_config: ConformerConfig | LstmConfig,
                   tokenizer: Any, cmvn: GlobalCMVN, fbank_config: FbankConfig,
                   extra_meta: dict[str, Any] | None = None) -> str:
    """Write a complete model dir at ``out_dir`` (replacing any previous one); return the fingerprint."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    vocab_size = model.output.out_features
    if vocab_size != tokenizer.vocab_size:
        raise ModelDirError(f"{out_dir}: model has {vocab_size} outputs but the tokenizer has "
                            f"{tokenizer.vocab_size} units; they must agree")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        header = {
            "format_version": FORMAT_VERSION,
            "model": model_config.model_dump(mode="json"),
            "fbank": fbank_config.model_dump(mode="json"),
            "frame_shift_ms": model.frame_shift_ms,
            "subsampling": model.subsampling,
            "vocab_size": vocab_size,
            "units_hash": tokenizer.units_hash(),
        }
        yaml_bytes = yaml.safe_dump(header, sort_keys=False, allow_unicode=True).encode("utf-8")
        buf = io.BytesIO()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, buf)
        weights = buf.getvalue()
        (tmp / MODEL_YAML).write_bytes(yaml_bytes)
        (tmp / WEIGHTS).write_bytes(weights)
        tokenizer.save(tmp)
        cmvn.save(tmp / CMVN_JSON)
        fingerprint = compute_fingerprint(weights, yaml_bytes)
        (tmp / FINGERPRINT).write_text(fingerprint + "\n", encoding="utf-8")
        (tmp / META).write_text(json.dumps(extra_meta or {}, indent=2, sort_keys=True, default=str) + "\n",
                                encoding="utf-8")
        _install_files(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fingerprint


def read_fingerprint(model_dir: str | Path) -> str:
    """The recorded fingerprint of a model dir (not verified; ``load_model_dir`` verifies)."""
    path = Path(model_dir) / FINGERPRINT
    if not path.is_file():
        raise ModelDirError(f"{path}: missing; not a model dir (expected {', '.join(REQUIRED)})")
    return path.read_text(encoding="utf-8").strip()


def load_model_dir(model_dir: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model dir. Any missing file, fingerprint mismatch, unknown config key,
    corrupt or non-plain (pickled object) weights raise ``ModelDirError`` naming the file."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelDirError(f"{d}: model dir not found")
    for name in REQUIRED:
        if not (d / name).is_file():
            raise ModelDirError(f"{d / name}: missing; a model dir needs {', '.join(REQUIRED)}")
    yaml_bytes = (d / MODEL_YAML).read_bytes()
    weights = (d / WEIGHTS).read_bytes()
    recorded = (d / FINGERPRINT).read_text(encoding="utf-8").strip()
    actual = compute_fingerprint(weights, yaml_bytes)
    if recorded != actual:
        raise ModelDirError(f"{d / FINGERPRINT}: fingerprint {recorded} does not match {WEIGHTS} + {MODEL_YAML} "
                            f"(computed {actual}); the model dir was modified or is corrupt")

    src = str(d / MODEL_YAML)
    try:
        header = yaml.safe_load(yaml_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{src}: not valid YAML: {exc}") from None
    if not isinstance(header, dict):
        raise ModelDirError(f"{src}: expected a mapping")
    known = {"format_version", "model", "fbank", "frame_shift_ms", "subsampling", "vocab_size", "units_hash"}
    unknown = sorted(set(header) - known)
    missing = sorted(known - set(header))
    if unknown or missing:
        raise ModelDirError(f"{src}: " + "; ".join(
            ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
    if header["format_version"] != FORMAT_VERSION:
        raise ModelDirError(f"{src}: format_version {header['format_version']} is not supported "
                            f"(this asr-kd reads {FORMAT_VERSION})")
    try:
        model_config = parse_model_config(header["model"], source=f"{src}: model")
        fbank_config = validate_config(header["fbank"], FbankConfig, source=f"{src}: fbank")
    except ConfigError as exc:
        raise ModelDirError(str(exc)) from None

    try:
        tokenizer = load_tokenizer(d)
    except AsrKdError as exc:
        raise ModelDirError(f"{d / TOKENS}: {exc}") from None
    if tokenizer.units_hash() != header["units_hash"]:
        raise ModelDirError(f"{d / TOKENS}: units hash {tokenizer.units_hash()} differs from {header['units_hash']} "
                            f"recorded in {MODEL_YAML}; tokens.txt was changed after training")
    if tokenizer.vocab_size != header["vocab_size"]:
        raise ModelDirError(f"{d / TOKENS}: {tokenizer.vocab_size} units but {MODEL_YAML} says {header['vocab_size']}")
    try:
        cmvn = GlobalCMVN.load(d / CMVN_JSON)
    except AsrKdError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(f"{d / CMVN_JSON}: cannot read CMVN stats: {exc}") from None

    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelDirError(f"{d / WEIGHTS}: refused: not a plain tensor state_dict (weights_only load "
                            f"rejected it: {str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelDirError(f"{d / WEIGHTS}: corrupt weights file: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelDirError(f"{d / WEIGHTS}: expected a state_dict of tensors, got {type(state).__name__}")

    model = build_model(model_config, header["vocab_size"], num_mel_bins=fbank_config.num_mel_bins)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelDirError(f"{d / WEIGHTS}: weights do not fit the model in {MODEL_YAML}: {exc}") from None
    model.to(device).eval()
    meta: dict[str, Any] = {}
    if (d / META).is_file():
        try:
            meta = json.loads((d / META).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelDirError(f"{d / META}: not valid JSON: {exc}") from None
    return LoadedModel(model=model, model_config=model_config, fbank_config=fbank_config, tokenizer=tokenizer,
                       cmvn=cmvn, fingerprint=actual, frame_shift_ms=model.frame_shift_ms, path=d, meta=meta)
