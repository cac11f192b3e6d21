"""One or more teachers turned into per-frame soft targets (used by the Ray actors and the local loop).

Teachers are adapters behind one protocol: a directory is loaded (``load_teacher``) into an object
with ``kind``, ``path``, ``fingerprint``, ``units`` (its symbols by output id), ``frame_shift_ms`` and
``sample_rate``. Two kinds exist:

- ``asr-kd``: our model dirs (``model.yaml`` ...), fbank + CMVN + our acoustic model; output frames are
  the store's frames and the units are our ``tokens.txt``;
- ``hf-ctc``: a local Hugging Face CTC directory (``asr_kd.label.hf_teacher``), raw waveform in, its
  own vocabulary and frame rate out (20 ms);
- ``sb-ctc``: a local SpeechBrain EncoderASR CTC directory (``asr_kd.label.sb_teacher``), raw
  waveform in, its tokenizer's units and its measured frame rate out (e.g. 40 ms).

Foreign (``hf-ctc``, ``sb-ctc``) distributions go through a unit map (``asr_kd.label.unit_map``) and a
frame-rate conversion (``asr_kd.label.frame_rate``) first. The kind is detected from the directory's
files (``model.yaml``, else ``hyperparams.yaml``, else ``config.json``); an ``hf:`` prefix
(``hf:/path/to/dir``) forces the Hugging Face loader, a ``speechbrain:`` prefix the SpeechBrain one.

``TeacherEnsemble`` fixes the store's units (``units_from``, else the first ``asr-kd`` teacher's) and
framing (the fbank config, subsampling and output frame shift of ``units_from`` when it is a model
dir, else of the first ``asr-kd`` teacher, else our defaults: 16 kHz, 25/10 ms fbank, 4x = 40 ms), and
maps a batch of waveforms to, per utterance, the top-k unit ids and probabilities of the weighted
average of the teachers' temperature-``T`` distributions, plus the 1-best (greedy CTC) pseudo
transcript, confidence figures and the unmapped probability mass. ``asr-kd`` teachers must agree on
units, output frame rate and front end (a mismatch is an error naming both values); fbank is computed
once per batch and each applies its own CMVN.

``precision`` (``fp32`` default, ``bf16``, ``fp16``) runs the teachers' forward passes under
``torch.autocast`` of the ensemble's device (fbank, softmax, averaging and top-k stay in float32); its
cost in KL to the float32 targets is measured by ``tools/bench/label_precision.py`` (BENCHMARKS.md). On
CUDA the padded waveform batch is copied from pinned memory without blocking the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from asr_kd.data.features import Fbank, FbankConfig
from asr_kd.data.units import CharTokenizer, Tokenizer, load_tokenizer
from asr_kd.decode import greedy_ctc
from asr_kd.errors import AsrKdError, ModelDirError
from asr_kd.label.frame_rate import FRAME_CONVERSIONS, FrameConversion, conversion_ratio, convert_frames
from asr_kd.label.unit_map import UnitMap, UnmappedRule, build_unit_map
from asr_kd.models.model_dir import FINGERPRINT, MODEL_YAML, LoadedModel, load_model_dir

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
SB_PREFIX = "speechbrain:"
TEACHER_PREFIXES = (HF_PREFIX, SB_PREFIX)
DEFAULT_FRAME_SHIFT_MS = 40.0
DEFAULT_SUBSAMPLING = 4
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # teacher forward dtype under autocast


@dataclasses.dataclass
class SoftTargets:
    """Targets of one utterance at the store's output frame rate (40 ms frames by default)."""

    utt_id: str
    ids: torch.Tensor  # (T, k) int64 unit ids, most probable first
    probs: torch.Tensor  # (T, k) float32 probabilities at the labeling temperature
    pseudo_text: str  # greedy CTC 1-best of the (averaged) distribution
    mean_max_prob: float  # mean over frames of the largest probability (confidence)
    mean_entropy: float  # mean per-frame entropy in nats of the full averaged distribution
    unmapped_mass: float = 0.0  # mean per-frame probability of teacher units with no student unit (weighted)


class NativeTeacher:
    """An asr-kd model dir behind the teacher protocol."""

    kind = "asr-kd"

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        self.loaded: LoadedModel = load_model_dir(model_dir, device=device)
        self.path = self.loaded.path
        self.fingerprint = self.loaded.fingerprint
        self.tokenizer = self.loaded.tokenizer
        self.units = self.tokenizer.symbols
        self.frame_shift_ms = self.loaded.frame_shift_ms
        self.sample_rate = self.loaded.fbank_config.sample_rate
        self.model = self.loaded.model
        self.cmvn = self.loaded.cmvn
        self.fbank_config = self.loaded.fbank_config

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(Path(self.path).resolve()), "fingerprint": self.fingerprint,
                "frame_shift_ms": self.frame_shift_ms}

    def log_probs_from_feats(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(self.cmvn(feats), feat_lens)


def split_spec(spec: str) -> tuple[str | None, str]:
    """``(prefix, path)`` of a ``--model`` argument: ``hf:DIR`` / ``speechbrain:DIR`` or a plain ``DIR``."""
    for prefix in TEACHER_PREFIXES:
        if spec.startswith(prefix):
            return prefix, spec[len(prefix):]
    return None, spec


def teacher_kind(spec: str) -> tuple[str, Path]:
    """``(kind, dir)`` of a ``--model`` argument: ``asr-kd`` (model.yaml + fingerprint.txt), ``sb-ctc``
    (hyperparams.yaml) or ``hf-ctc`` (config.json naming a supported architecture); ``hf:DIR`` forces
    the Hugging Face loader, ``speechbrain:DIR`` the SpeechBrain one."""
    from asr_kd.label.hf_teacher import HF_CTC_ARCHITECTURES, HF_SEQ2SEQ_ARCHITECTURES, hf_architecture
    from asr_kd.label.sb_teacher import HPARAMS, is_speechbrain_dir

    prefix, path = split_spec(spec)
    d = Path(path)
    if not d.is_dir():
        raise ModelDirError(f"{d}: teacher directory not found")
    if prefix == SB_PREFIX:
        if not is_speechbrain_dir(d):
            raise ModelDirError(f"{d / HPARAMS}: missing; {SB_PREFIX}DIR needs a SpeechBrain model directory "
                                f"({HPARAMS} + its checkpoints)")
        return "sb-ctc", d
    if prefix is None and (d / MODEL_YAML).is_file():
        return "asr-kd", d
    if prefix is None and is_speechbrain_dir(d):  # a SpeechBrain hub dir may hold a config.json of its own
        return "sb-ctc", d
    if (d / "config.json").is_file():
        arch = hf_architecture(d)
        if arch in HF_CTC_ARCHITECTURES:
            return "hf-ctc", d
        if arch in HF_SEQ2SEQ_ARCHITECTURES:
            raise ModelDirError(f"{d}: {arch} is a sequence-level teacher (it writes text, not frame distributions); "
                                "use 'asr-kd pseudo-label --model DIR --data DATA --out DATA_PSEUDO' and train the student "
                                "on DATA_PSEUDO")
        raise ModelDirError(f"{d / 'config.json'}: architecture {arch} is not a supported teacher; supported: "
                            f"asr-kd model dirs, SpeechBrain EncoderASR CTC dirs and Hugging Face "
                            f"{', '.join(HF_CTC_ARCHITECTURES)}")
    raise ModelDirError(f"{d}: not a teacher of a supported kind: expected an asr-kd model dir ({MODEL_YAML}, "
                        f"{FINGERPRINT}, ...), a SpeechBrain EncoderASR CTC directory ({HPARAMS} + checkpoints) "
                        "or a Hugging Face directory (config.json, model.safetensors, vocab.json)")


def load_teacher(spec: str, device: str | torch.device = "cpu") -> Any:
    """Load a ``--model`` argument as a teacher adapter (see ``teacher_kind``)."""
    kind, d = teacher_kind(spec)
    if kind == "asr-kd":
        return NativeTeacher(d, device=device)
    if kind == "sb-ctc":
        from asr_kd.label.sb_teacher import SbCtcTeacher

        return SbCtcTeacher(d, device=device)
    from asr_kd.label.hf_teacher import HfCtcTeacher

    return HfCtcTeacher(d, device=device)


@dataclasses.dataclass
class Framing:
    """The store's framing: which audio each stored frame covers (the student's rule)."""

    fbank_config: FbankConfig
    subsampling: int
    frame_shift_ms: float


def load_units_from(path: str | Path) -> tuple[Tokenizer, Framing | None]:
    """``--units-from``: a model dir (its tokens and framing) or a ``tokens.txt`` / dir holding one (tokens only)."""
    p = Path(path)
    if p.is_dir() and (p / MODEL_YAML).is_file():
        m = load_model_dir(p)
        return m.tokenizer, Framing(m.fbank_config, m.model.subsampling, m.frame_shift_ms)
    if p.is_dir():
        return load_tokenizer(p), None
    if p.is_file():
        return CharTokenizer.load(p), None
    raise AsrKdError(f"label: --units-from {p}: not found (give a model dir or a tokens.txt)")


class TeacherEnsemble:
    def __init__(self, model_dirs: list[str], weights: list[float] | None = None, device: str = "cpu",
                 top_k: int = 8, temperature: float = 1.0, units_from: str | None = None,
                 unit_map_files: list[str] | None = None, unmapped_rule: UnmappedRule = "renormalize",
                 frame_conversion: FrameConversion = "peak", precision: str = "fp32"):
        if not model_dirs:
            raise AsrKdError("label: give at least one --model teacher dir")
        weights = list(weights) if weights else [1.0] * len(model_dirs)
        if len(weights) != len(model_dirs) or any(w <= 0 for w in weights):
            raise AsrKdError(f"label: --weights needs one positive weight per --model ({len(model_dirs)}), got {weights}")
        if precision not in PRECISIONS:
            raise AsrKdError(f"label: --precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if frame_conversion not in FRAME_CONVERSIONS:
            raise AsrKdError(f"label: --frame-conversion must be one of {FRAME_CONVERSIONS}, got {frame_conversion!r}")
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.teachers: list[Any] = [load_teacher(d, device=device) for d in model_dirs]
        native = [t for t in self.teachers if t.kind == "asr-kd"]
        check_teachers_agree([t.loaded for t in native])
        tokenizer, framing = load_units_from(units_from) if units_from else (None, None)
        if native:
            first = native[0]
            tokenizer = tokenizer or first.tokenizer
            framing = framing or Framing(first.fbank_config, first.model.subsampling, first.frame_shift_ms)
            for t in native:
                if t.tokenizer.units_hash() != tokenizer.units_hash():
                    raise AsrKdError(f"label: teacher {t.path} has units {t.tokenizer.units_hash()} but the store's units "
                                     f"(--units-from {units_from}) are {tokenizer.units_hash()}; asr-kd teachers must use "
                                     "the store's tokens.txt")
                if t.frame_shift_ms != framing.frame_shift_ms or t.fbank_config != framing.fbank_config:
                    raise AsrKdError(f"label: teacher {t.path} ({t.frame_shift_ms:g} ms frames) does not share the "
                                     f"framing of --units-from {units_from} ({framing.frame_shift_ms:g} ms frames, its fbank)")
        if tokenizer is None:
            raise AsrKdError(f"label: {self.teachers[0].path} is a {self.teachers[0].kind} teacher with its own vocabulary; "
                             "pass --units-from STUDENT_OR_TEACHER_MODEL_DIR (or a tokens.txt) to say which units the "
                             "store is written in")
        framing = framing or Framing(FbankConfig(), DEFAULT_SUBSAMPLING, DEFAULT_FRAME_SHIFT_MS)
        self.tokenizer = tokenizer
        self.fbank_config = framing.fbank_config
        self.fbank = Fbank(framing.fbank_config).to(device)
        self.subsampling = framing.subsampling
        self.frame_shift_ms = framing.frame_shift_ms
        self.frame_conversion = frame_conversion
        self.unmapped_rule = unmapped_rule
        self.unit_maps: list[UnitMap | None] = []
        self.ratios: list[int] = []
        foreign = [t for t in self.teachers if t.kind != "asr-kd"]
        files = list(unit_map_files or [])
        if len(files) not in (0, 1, len(foreign)):
            raise AsrKdError(f"label: give one --unit-map per non-asr-kd teacher ({len(foreign)}) or one for all, got {len(files)}")
        j = 0
        for t in self.teachers:
            if t.kind == "asr-kd":
                self.unit_maps.append(None)
                self.ratios.append(1)
                continue
            mapping = files[j] if len(files) == len(foreign) else (files[0] if files else None)
            j += 1
            self.unit_maps.append(build_unit_map(t.vocab, tokenizer, mapping, unmapped_rule, teacher_name=str(t.path)))
            self.ratios.append(conversion_ratio(t.frame_shift_ms, self.frame_shift_ms))
            um = self.unit_maps[-1]
            log.info("label: %s (%s, %g ms frames, %s) -> store units %s: %d of %d teacher units mapped, unmapped %s "
                     "(rule %s), frames x%d by %s", t.path, t.architecture, t.frame_shift_ms, t.kind, tokenizer.units_hash(),
                     len(um.targets) - len(um.unmapped_symbols), len(um.targets), um.unmapped_symbols, unmapped_rule,
                     self.ratios[-1], frame_conversion)
        if not 1 <= top_k <= min(64, tokenizer.vocab_size):
            raise AsrKdError(f"label: --top-k must be in 1..{min(64, tokenizer.vocab_size)}, got {top_k}")
        if temperature <= 0:
            raise AsrKdError(f"label: temperature must be > 0, got {temperature}")
        self.top_k = top_k
        self.temperature = temperature
        self.fingerprints = [t.fingerprint for t in self.teachers]
        self.device = torch.device(device)
        self.sample_rate = self.fbank_config.sample_rate
        self.precision = precision
        # CPU seconds of the calling thread in the teachers' forward passes (profiling: label_throughput). With torch
        # on one thread (the actors) that is all of the forward's work, and time the process was preempted by
        # others is not counted; on CUDA kernels run asynchronously, so this counts launch time only
        self.forward_seconds = 0.0
        self.fbank_seconds = 0.0  # the same for the fbank of asr-kd teachers (padding the batch included)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The teachers' forward passes at ``self.precision`` (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Host -> device copy; on CUDA through pinned memory, without blocking the host."""
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @property
    def has_foreign(self) -> bool:
        return any(t.kind != "asr-kd" for t in self.teachers)

    def describe(self) -> list[dict[str, Any]]:
        """Per-teacher description for the store's meta (kind, path, frame rate, conversion, unit map)."""
        out = []
        for t, um, ratio in zip(self.teachers, self.unit_maps, self.ratios):
            d = t.describe()
            if um is not None:
                d.update({"frame_conversion": self.frame_conversion if ratio > 1 else "none", "frames_per_stored_frame": ratio,
                          "unit_map": um.describe()})
            out.append(d)
        return out

    def output_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Stored frames for ``lengths`` samples: fbank frames // subsampling (the student's rule)."""
        return torch.tensor([self.fbank_config.num_frames(int(n)) // self.subsampling for n in lengths], dtype=torch.long)

    @torch.no_grad()
    def dense(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms (1-D float at ``sample_rate``) -> ``(probs (B, T, V), lengths (B,), unmapped (B,))``:
        the weighted average of the teachers' distributions in the store's units and frames, and each
        utterance's mean per-frame unmapped mass (0..1, weighted like the teachers)."""
        lengths = torch.tensor([w.numel() for w in waveforms], dtype=torch.long)
        out_lens = self.output_frames(lengths)
        B, T = len(waveforms), int(out_lens.max()) if len(waveforms) else 0
        probs = torch.zeros(B, T, self.tokenizer.vocab_size)
        unmapped = torch.zeros(B)
        feats = feat_lens = None
        for weight, teacher, um, ratio in zip(self.weights, self.teachers, self.unit_maps, self.ratios):
            if teacher.kind == "asr-kd":
                if feats is None:
                    t0 = time.thread_time()
                    padded = torch.nn.utils.rnn.pad_sequence(waveforms, batch_first=True)  # (B, max samples), zeros after each end
                    feats, feat_lens = self.fbank(self._to_device(padded), lengths.to(self.device))
                    self.fbank_seconds += time.thread_time() - t0
                t0 = time.thread_time()
                with self._autocast():
                    log_probs, lens = teacher.log_probs_from_feats(feats, feat_lens)
                self.forward_seconds += time.thread_time() - t0
                p = torch.softmax(log_probs.float() / self.temperature, dim=-1).cpu()
                probs[:, : p.shape[1]] += weight * p[:, :T]
                continue
            t0 = time.thread_time()
            with self._autocast():
                log_probs, lens = teacher.log_probs(waveforms, self.sample_rate)
            self.forward_seconds += time.thread_time() - t0
            p = torch.softmax(log_probs.float() / self.temperature, dim=-1)
            p, lost = um.apply(p)
            valid = torch.arange(p.shape[1])[None, :] < lens[:, None]
            unmapped += weight * torch.where(valid, lost, torch.zeros_like(lost)).sum(1) / lens.clamp_min(1)
            probs += weight * convert_frames(p, lens, out_lens, ratio, self.frame_conversion)[:, :T]
        return probs, out_lens, unmapped

    @torch.no_grad()
    def __call__(self, utt_ids: list[str], waveforms: list[torch.Tensor]) -> list[SoftTargets]:
        """Label one batch (waveforms: 1-D float tensors at the store's sample rate)."""
        probs, out_lens, unmapped = self.dense(waveforms)
        hyps = greedy_ctc(probs, out_lens)  # the argmax of the probabilities is that of their logs
        # whole-batch passes (per frame, so padded frames change nothing), sliced per utterance below
        top_p, top_i = torch.topk(probs, self.top_k, dim=-1)  # (B, T, k)
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # (B, T) nats
        out = []
        for b, utt in enumerate(utt_ids):
            n = int(out_lens[b])
            out.append(SoftTargets(
                utt, top_i[b, :n], top_p[b, :n].float(), self.tokenizer.decode(hyps[b]),
                float(top_p[b, :n, 0].mean()) if n else math.nan, float(entropy[b, :n].mean()) if n else math.nan,
                float(unmapped[b]),
            ))
        return out


def check_teachers_agree(teachers: list[LoadedModel]) -> None:
    """All asr-kd teachers must share units, output frame rate and front end; else an error naming both."""
    if not teachers:
        return
    first = teachers[0]
    for t in teachers[1:]:
        problems = []
        if t.tokenizer.units_hash() != first.tokenizer.units_hash():
            problems.append(f"units {t.tokenizer.units_hash()} vs {first.tokenizer.units_hash()}")
        if t.frame_shift_ms != first.frame_shift_ms:
            problems.append(f"frame shift {t.frame_shift_ms} ms vs {first.frame_shift_ms} ms")
        if t.fbank_config != first.fbank_config:
            problems.append("fbank configs differ")
        if problems:
            raise AsrKdError(f"label: teacher {Path(t.path)} disagrees with {Path(first.path)}: {'; '.join(problems)}; "
                             "teachers combined in one store must share units, frame rate and features")
