"""Sequence-level teachers: a local Whisper (or CTC) directory transcribes a data dir into pseudo-labels.

Whisper is the main case; a Hugging Face or SpeechBrain CTC directory whose units cannot be mapped onto
the student's (``asr_kd.label.unit_map`` refuses it for frame-level distillation, e.g. BPE pieces
against characters) is decoded greedily instead.

distil-whisper's path: the teacher's 1-best transcripts replace (or stand in for) human ones, and the
student trains plain CTC on them. ``pseudo_label`` writes ``OUT``, a data dir the student trains on
(``data.train: [OUT]``):

    OUT/wav.scp, utt2spk, spk2utt, segments, utt2dur   the kept utterances (same audio as the input)
    OUT/text            their pseudo-transcripts, normalized like our transcripts (``normalize_text``)
    OUT/text.pseudo     the same (for tools that look for the teacher's 1-best under this name)
    OUT/text.ref        the input's reference transcripts of the kept utterances, where the input had any
    OUT/confidence.tsv  utt, confidence (geometric-mean token probability, 0..1), WER (%) vs the reference or -
    OUT/rejects.tsv     utt, reason  (every dropped utterance, with why)
    OUT/meta.json       teacher (path, fingerprint), options, counts

Filters (each drop is listed in ``rejects.tsv`` with its reason):

- ``too_long``/``unreadable``/...: audio that cannot be used (Whisper reads at most 30 s);
- ``empty``: the transcript is empty after normalization;
- ``low_confidence``: confidence below ``min_confidence``;
- ``wer_above_threshold``: the input has a reference (``text``, else ``text.ref``) and the
  pseudo-transcript's WER against it exceeds ``max_wer`` percent (distil-whisper drops at ~10 %).

Confidence is ``exp(mean log p)`` over the generated tokens up to and including end-of-text, the
prompt tokens (start of transcript, language, task) excluded — in probability, not nats.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from asr_kd.data.audio import load_audio
from asr_kd.data.datadir import DataDir, read_data_dir, write_data_dir
from asr_kd.data.units import normalize_text
from asr_kd.errors import AsrKdError, AudioError, ModelDirError
from asr_kd.label.hf_teacher import (HF_SEQ2SEQ_ARCHITECTURES, check_safe_weights, hf_architecture, hf_fingerprint,
                                     import_transformers)

log = logging.getLogger(__name__)

WHISPER_MAX_SECONDS = 30.0


@dataclasses.dataclass
class PseudoLabelOptions:
    max_wer: float | None = 20.0  # percent; drop when the reference exists and WER(pseudo, ref) is higher; None: off
    min_confidence: float | None = None  # 0..1 geometric-mean token probability; None: off
    max_seconds: float = WHISPER_MAX_SECONDS  # longer audio is rejected as too_long (Whisper reads 30 s windows)
    batch_size: int = 8  # utterances per generate() call
    max_new_tokens: int = 128
    language: str | None = None  # e.g. "en" for multilingual checkpoints; None: the checkpoint's default
    allow_pipes: bool = False
    progress: bool = True


@dataclasses.dataclass
class PseudoLabelSummary:
    kept: int
    rejects: dict[str, str]
    wall_s: float

    def line(self) -> str:
        by_kind: dict[str, int] = {}
        for reason in self.rejects.values():
            kind = reason.split(":", 1)[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"
        return f"pseudo-labeled {self.kept} utterances, {len(self.rejects)} rejected ({kinds}), wall {self.wall_s:.1f} s"


class WhisperTeacher:
    """A local ``WhisperForConditionalGeneration`` directory (safetensors, processor files), offline."""

    kind = "hf-whisper"

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", language: str | None = None):
        d = Path(model_dir[3:] if str(model_dir).startswith("hf:") else model_dir)
        if not (d / "config.json").is_file():
            raise ModelDirError(f"{d}: not a Hugging Face model directory (no config.json)")
        self.path = d
        self.architecture = hf_architecture(d)
        if self.architecture not in HF_SEQ2SEQ_ARCHITECTURES:
            raise ModelDirError(f"{d / 'config.json'}: architecture {self.architecture} is not a supported text teacher "
                                f"({', '.join(HF_SEQ2SEQ_ARCHITECTURES)} or a Hugging Face CTC model)")
        check_safe_weights(d)
        self.fingerprint = hf_fingerprint(d)
        transformers = import_transformers()
        try:
            self.processor = transformers.WhisperProcessor.from_pretrained(str(d), local_files_only=True)
            self.model = transformers.WhisperForConditionalGeneration.from_pretrained(
                str(d), local_files_only=True, use_safetensors=True).to(device).eval()
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelDirError(f"{d}: transformers could not load the Whisper model or its processor files "
                                f"(tokenizer, preprocessor config): {exc}") from None
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.language = language
        self.prompt_len = 1  # decoder start token; forced language/task tokens are counted from the output below

    @torch.no_grad()
    def transcribe(self, waveforms: list[torch.Tensor], max_new_tokens: int = 128) -> list[tuple[str, float]]:
        """1-D float waveforms at ``sample_rate`` -> ``(raw text, confidence 0..1)`` per utterance (greedy)."""
        fe = self.processor.feature_extractor(
            [w.numpy() for w in waveforms], sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True)
        device = next(self.model.parameters()).device
        max_new_tokens = min(max_new_tokens, int(self.model.config.max_target_positions) // 2)  # room for the prompt
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      return_dict_in_generate=True, output_scores=True)
        if self.language:
            kwargs.update(language=self.language, task="transcribe")
        out = self.model.generate(fe.input_features.to(device), **kwargs)
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).cpu()
        seqs = out.sequences.cpu()
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        special = set(self.processor.tokenizer.all_special_ids)
        gen = seqs[:, seqs.shape[1] - scores.shape[1]:]  # the generated part, aligned with the scores
        results = []
        for b in range(len(waveforms)):
            logps = []
            for tok, s in zip(gen[b].tolist(), scores[b].tolist()):
                if tok in special and tok not in eos_ids:
                    continue  # forced prompt tokens (language, task, no-timestamps) are not the model's choice
                logps.append(s)
                if tok in eos_ids:
                    break
            text = self.processor.tokenizer.decode(gen[b], skip_special_tokens=True)
            conf = math.exp(sum(logps) / len(logps)) if logps and all(math.isfinite(x) for x in logps) else 0.0
            results.append((text, conf))
        return results


class CtcTextTeacher:
    """A Hugging Face or SpeechBrain CTC directory used as a text teacher: greedy CTC in its own vocabulary.

    For CTC teachers whose units cannot be mapped onto the student's (BPE pieces, words): their
    transcripts are tokenized in the student's units instead. Transcript: per-frame argmax, repeats
    collapsed, blank and special tokens dropped, the word delimiter (and sentencepiece's ``▁`` word
    mark inside pieces) as a space. Confidence: the geometric mean of the argmax probability over the
    frames that emit a unit (0 when none does)."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu", kind: str = "hf-ctc"):
        if kind == "sb-ctc":
            from asr_kd.label.sb_teacher import SbCtcTeacher

            self.ctc: Any = SbCtcTeacher(model_dir, device=device)
        else:
            from asr_kd.label.hf_teacher import HfCtcTeacher

            self.ctc = HfCtcTeacher(model_dir, device=device)
        self.path, self.architecture, self.fingerprint = self.ctc.path, self.ctc.architecture, self.ctc.fingerprint
        self.kind = self.ctc.kind
        self.sample_rate = self.ctc.sample_rate

    @torch.no_grad()
    def transcribe(self, waveforms: list[torch.Tensor], max_new_tokens: int = 0) -> list[tuple[str, float]]:
        log_probs, lengths = self.ctc.log_probs(waveforms, self.sample_rate)
        vocab = self.ctc.vocab
        out = []
        for b in range(len(waveforms)):
            lp = log_probs[b, : int(lengths[b])]
            best, ids = lp.max(-1)
            pieces, emitted, prev = [], [], None
            for t, i in enumerate(ids.tolist()):
                if i != prev and i != vocab.blank_id:
                    sym = vocab.symbols[i]
                    emitted.append(float(best[t]))
                    if sym == vocab.word_delimiter:
                        pieces.append(" ")
                    elif sym not in vocab.specials and sym != vocab.unk:
                        pieces.append(sym)
                prev = i
            conf = math.exp(sum(emitted) / len(emitted)) if emitted else 0.0
            out.append((" ".join("".join(pieces).replace("\u2581", " ").split()), conf))
        return out


def load_text_teacher(model_dir: str, device: str = "cpu", language: str | None = None) -> Any:
    """A sequence-level teacher: Whisper, or a Hugging Face / SpeechBrain CTC directory decoded greedily."""
    from asr_kd.label.hf_teacher import HF_CTC_ARCHITECTURES
    from asr_kd.label.sb_teacher import SB_PREFIX, is_speechbrain_dir

    spec = str(model_dir)
    if spec.startswith(SB_PREFIX) or (not spec.startswith("hf:") and is_speechbrain_dir(Path(spec))):
        return CtcTextTeacher(Path(spec.removeprefix(SB_PREFIX)), device=device, kind="sb-ctc")
    d = Path(model_dir[3:] if str(model_dir).startswith("hf:") else model_dir)
    if (d / "config.json").is_file() and hf_architecture(d) in HF_CTC_ARCHITECTURES:
        return CtcTextTeacher(d, device=device)
    return WhisperTeacher(d, device=device, language=language)


def _reference(data: DataDir) -> dict[str, str] | None:
    if data.text is not None:
        return data.text
    return data.extra.get("text.ref")


def pseudo_label(model_dir: str, data_dir: str, out_dir: str, options: PseudoLabelOptions | None = None) -> PseudoLabelSummary:
    """Transcribe ``data_dir`` with the Whisper teacher in ``model_dir`` into the data dir ``out_dir`` (module docstring)."""
    from asr_kd.devices import resolve_device
    from asr_kd.scoring import align_words

    o = options or PseudoLabelOptions()
    if o.max_wer is not None and o.max_wer < 0:
        raise AsrKdError(f"pseudo-label: --max-wer must be >= 0 (percent), got {o.max_wer}")
    if o.min_confidence is not None and not 0 <= o.min_confidence <= 1:
        raise AsrKdError(f"pseudo-label: --min-confidence must be in 0..1, got {o.min_confidence}")
    if o.max_seconds > WHISPER_MAX_SECONDS:
        raise AsrKdError(f"pseudo-label: --max-seconds {o.max_seconds} exceeds Whisper's {WHISPER_MAX_SECONDS:g} s window; "
                         "segment long recordings first (asr-kd prepare librilight --max-seconds 20)")
    t0 = time.time()
    data = read_data_dir(data_dir, allow_pipes=o.allow_pipes)
    teacher = load_text_teacher(model_dir, device=str(resolve_device("auto")), language=o.language)
    refs = _reference(data)
    rejects: dict[str, str] = {}
    pseudo: dict[str, str] = {}
    rows: list[tuple[str, float, float | None]] = []
    waves: list[tuple[str, torch.Tensor]] = []
    for utt in data.utt_ids:
        try:
            waves.append((utt, load_audio(data.source(utt), sample_rate=teacher.sample_rate, max_seconds=o.max_seconds,
                                          allow_pipes=o.allow_pipes)))
        except AudioError as exc:
            rejects[utt] = f"{exc.reason}: {exc.detail}"
    bar = tqdm(total=len(waves), desc="pseudo-label", unit="utt", disable=not o.progress)
    for i in range(0, len(waves), o.batch_size):
        batch = waves[i: i + o.batch_size]
        for (utt, _), (raw, conf) in zip(batch, teacher.transcribe([w for _, w in batch], o.max_new_tokens)):
            text = normalize_text(raw)
            wer = None
            if refs is not None and utt in refs:
                ref = normalize_text(refs[utt])
                _, counts = align_words(ref, text)
                n = max(len(ref.split()), 1)
                wer = 100.0 * (counts.sub + counts.dels + counts.ins) / n
            if not text:
                rejects[utt] = f"empty: the teacher's transcript is empty after normalization (raw {raw[:40]!r})"
            elif o.min_confidence is not None and conf < o.min_confidence:
                rejects[utt] = f"low_confidence: confidence {conf:.3f} < {o.min_confidence}"
            elif o.max_wer is not None and wer is not None and wer > o.max_wer:
                rejects[utt] = f"wer_above_threshold: WER {wer:.1f} % against the reference > {o.max_wer:g} %"
            else:
                pseudo[utt] = text
            rows.append((utt, conf, wer))
        bar.update(len(batch))
    bar.close()
    kept = sorted(pseudo)
    out = Path(out_dir)
    if not kept:
        raise AsrKdError(f"pseudo-label: every utterance of {data_dir} was rejected (e.g. {next(iter(rejects.items()), None)}); "
                         "nothing to write — check the teacher, or relax --max-wer / --min-confidence")
    if data.segments:  # wav.scp is keyed by recording when there are segments
        segments = {u: data.segments[u] for u in kept}
        wav_scp = {r: data.wav_scp[r] for r in sorted({seg.recording for seg in segments.values()})}
    else:
        segments, wav_scp = None, {u: data.wav_scp[u] for u in kept}
    sub = DataDir(wav_scp=wav_scp, utt2spk={u: data.utt2spk[u] for u in kept}, segments=segments,
                  text={u: pseudo[u] for u in kept},
                  utt2dur={u: data.utt2dur[u] for u in kept if u in data.utt2dur} if data.utt2dur else None)
    if refs is not None:
        sub.extra["text.ref"] = {u: refs[u] for u in kept if u in refs}
    sub.extra["text.pseudo"] = {u: pseudo[u] for u in kept}
    write_data_dir(sub, out)
    (out / "confidence.tsv").write_text("".join(f"{u}\t{c:.4f}\t{'-' if w is None else f'{w:.1f}'}\n"
                                                for u, c, w in sorted(rows)), encoding="utf-8")
    (out / "rejects.tsv").write_text("".join(f"{u}\t{r}\n" for u, r in sorted(rejects.items())), encoding="utf-8")
    meta = {"teacher": {"kind": teacher.kind, "path": str(teacher.path.resolve()), "architecture": teacher.architecture,
                        "fingerprint": teacher.fingerprint},
            "options": {k: v for k, v in dataclasses.asdict(o).items() if k != "progress"},
            "input": str(Path(data_dir).resolve()), "kept": len(kept), "rejected": len(rejects),
            "reference": "text" if data.text is not None else ("text.ref" if refs is not None else None)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    summary = PseudoLabelSummary(len(kept), rejects, time.time() - t0)
    for utt, reason in sorted(rejects.items())[:5]:
        log.info("pseudo-label: dropped %s: %s", utt, reason)
    return summary
