"""``asr-kd evaluate``: decode a labeled data dir with a model and score it like NIST sclite.

Writes to ``--out``: ``wer.json`` (wer/cer in percent, counts, rtf, latency = algorithmic latency plus a
distilled student's target delay), ``hyp.trn`` /
``ref.trn`` (sclite trn), ``errors.txt`` (aligned per-utterance errors), ``per_utt.tsv`` and
``rejects.tsv`` (utterances whose audio could not be read: scored as empty hypotheses, never dropped).

Offline decoding batches utterances by length; ``--streaming`` feeds each utterance's audio to a
``StreamingRecognizer`` in pieces of one chunk, as a live stream would arrive, and also reports the
compute time per chunk. The real-time factor counts feature extraction, the model and decoding on the
threads given by ``--threads`` (default 1), not reading the audio files.

``--device`` (default ``cpu``) runs offline decoding on a GPU (``cuda``, or ``auto``: the GPU when one is
usable, the CPU when none is present, an error when one is present but unusable — never a silent CPU run;
``asr_kd.devices``). Streaming decoding and ONNX models stay on the CPU: their RTF is the on-device figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from asr_kd.data.audio import load_audio
from asr_kd.data.datadir import read_data_dir
from asr_kd.data.units import normalize_text
from asr_kd.errors import AsrKdError, AudioError, DataDirError, ModelDirError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model dir (or an exported .onnx student)")
    parser.add_argument("--data", required=True, help="labeled data dir (needs text)")
    parser.add_argument("--out", required=True, help="output dir for wer.json, hyp.trn, ref.trn, errors.txt")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help="score these weights of the model dir's training run instead of its final model: a file "
                        "under MODEL/checkpoints/ (e.g. epoch-004.pt, dev-step-00001200.pt) or 'best' (first in best.tsv)")
    parser.add_argument("--streaming", action="store_true", help="decode chunk by chunk as a live stream")
    parser.add_argument("--chunk-size", type=int, default=None, help="streaming chunk in 40 ms output frames (default: the model's)")
    parser.add_argument("--beam", type=int, default=0, help="CTC beam size (0 = greedy)")
    parser.add_argument("--lm", help="KenLM ARPA/binary language model for beam search (needs --lexicon)")
    parser.add_argument("--lexicon", help="lexicon for --lm (word followed by its units)")
    parser.add_argument("--lm-weight", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "auto", "cuda"],
                        help="offline decoding device (default cpu; streaming and ONNX always run on the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for decoding (RTF is measured with these)")
    parser.add_argument("--batch-max-frames", type=int, default=20000, help="padded 10 ms frames per offline batch")
    parser.add_argument("--allow-pipes", action="store_true")
    parser.add_argument("--no-progress", action="store_true")


def _decode_offline(loaded, waves: dict[str, torch.Tensor], batch_max_frames: int, beam, progress: bool) -> tuple[dict[str, str], float]:
    from asr_kd.decode import greedy_ctc
    from asr_kd.train.batching import plan_batches

    lengths = {u: max(1, w.numel() // 160) for u, w in waves.items()}
    hyps: dict[str, str] = {}
    compute_s = 0.0
    plan = plan_batches(lengths, batch_max_frames, seed=0, epoch=0, shuffle=False)
    for item in tqdm(plan, desc="decode", unit="batch", disable=not progress):
        ws = [waves[u] for u in item.utt_ids]
        lens = torch.tensor([w.numel() for w in ws])
        padded = torch.zeros(len(ws), int(lens.max()))
        for i, w in enumerate(ws):
            padded[i, : w.numel()] = w
        t = time.perf_counter()
        with torch.inference_mode():
            feats, feat_lens = loaded.featurize(padded, lens)
            log_probs, out_lens = loaded.model(feats, feat_lens)
            log_probs, out_lens = log_probs.float().cpu(), out_lens.cpu()
            ids = beam.decode(log_probs, out_lens) if beam is not None else greedy_ctc(log_probs, out_lens)
        compute_s += time.perf_counter() - t
        for u, i in zip(item.utt_ids, ids):
            hyps[u] = loaded.tokenizer.decode(i)
    return hyps, compute_s


def _decode_streaming(loaded, waves: dict[str, torch.Tensor], chunk_size: int | None, progress: bool) -> tuple[dict[str, str], float, list[float]]:
    from asr_kd.decode.streaming import StreamingRecognizer

    rec = StreamingRecognizer(loaded, chunk_size=chunk_size)
    piece = rec.chunk_frames * int(loaded.fbank_config.sample_rate * loaded.fbank_config.frame_shift_ms / 1000)
    hyps: dict[str, str] = {}
    compute_s = 0.0
    per_chunk_ms: list[float] = []
    for utt in tqdm(sorted(waves), desc="stream", unit="utt", disable=not progress):
        wave = waves[utt]
        rec.reset()
        for start in range(0, wave.numel(), piece):
            t = time.perf_counter()
            rec.accept_waveform(wave[start: start + piece])
            dt = time.perf_counter() - t
            compute_s += dt
            per_chunk_ms.append(dt * 1000)
        t = time.perf_counter()
        hyps[utt] = rec.finalize()
        compute_s += time.perf_counter() - t
    return hyps, compute_s, per_chunk_ms


def _load_checkpoint_weights(loaded, model_dir: Path, name: str) -> str:
    """Put the weights of ``model_dir/checkpoints/name`` (``best``: the first of best.tsv on disk) into
    ``loaded.model``; returns the checkpoint's file name. Refused, naming the file, when it is missing
    or does not fit the model dir's architecture."""
    from asr_kd.train.checkpoint import CheckpointManager, load_checkpoint

    ckpt_dir = model_dir / "checkpoints"
    if name == "best":
        path = CheckpointManager(model_dir, 1, 1, 1).best_path() if ckpt_dir.is_dir() else None
        if path is None:
            raise ModelDirError(f"{ckpt_dir / 'best.tsv'}: no ranked checkpoint on disk; --checkpoint best needs a "
                                "training run that scored dev (data.dev)")
    else:
        path = ckpt_dir / Path(name).name
        if not path.is_file():
            have = sorted(p.name for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
            raise ModelDirError(f"{path}: no such checkpoint; {model_dir} has {', '.join(have) or 'none'}")
    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise ModelDirError(f"{path}: holds no model weights")
    try:
        loaded.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelDirError(f"{path}: weights do not fit the model in {model_dir}: {exc}") from None
    loaded.model.eval()
    return path.name


def evaluate(model: str, data_dir: str, out_dir: str, streaming: bool = False, chunk_size: int | None = None,
             beam_size: int = 0, lm: str | None = None, lexicon: str | None = None, lm_weight: float = 0.5,
             threads: int = 1, batch_max_frames: int = 20000, allow_pipes: bool = False, progress: bool = True,
             device: str = "cpu", checkpoint: str | None = None) -> dict:
    """Decode and score; returns the dict written to ``wer.json``. ``device``: see the module docstring.
    ``checkpoint``: score the weights of ``MODEL/checkpoints/NAME`` (or ``best``) instead of the final model."""
    from asr_kd.devices import resolve_device
    from asr_kd.scoring import score, write_report

    torch.set_num_threads(threads)
    run_device = resolve_device(device)
    if run_device.type != "cpu" and (streaming or str(model).endswith(".onnx")):
        raise AsrKdError(f"evaluate: --device {device}: streaming decoding and ONNX models run on the CPU (their RTF is "
                         "the on-device figure); drop --device or decode offline from a model dir")
    data = read_data_dir(data_dir, allow_pipes=allow_pipes)
    if data.text is None:
        raise DataDirError("evaluate needs a labeled data dir (a 'text' file); this one has none", data_dir)
    onnx_model = loaded = None
    if str(model).endswith(".onnx"):
        from asr_kd.export.evaluate_onnx import load_onnx_for_evaluation

        if checkpoint is not None:
            raise AsrKdError(f"evaluate: --checkpoint needs a model dir with its checkpoints/, not {model}")
        onnx_model = load_onnx_for_evaluation(model, threads=threads)
        if beam_size > 0:
            raise AsrKdError(f"evaluate: {model} is scored with the device runtime's greedy decoding; drop --beam")
        if chunk_size not in (None, onnx_model.chunk_size):
            raise AsrKdError(f"evaluate: {model} was exported with chunk_size {onnx_model.chunk_size}; "
                             f"drop --chunk-size or export again from a model dir with the chunk you want")
        sample_rate = onnx_model.sample_rate
    else:
        from asr_kd.models.model_dir import load_model_dir

        loaded = load_model_dir(model, device=run_device)
        if checkpoint is not None:
            checkpoint = _load_checkpoint_weights(loaded, Path(model), checkpoint)
        sample_rate = loaded.fbank_config.sample_rate
    waves: dict[str, torch.Tensor] = {}
    rejects: list[tuple[str, str]] = []
    for utt in tqdm(data.utt_ids, desc="read audio", unit="utt", disable=not progress):
        try:
            waves[utt] = load_audio(data.source(utt), sample_rate=sample_rate, allow_pipes=allow_pipes)
        except AudioError as exc:
            rejects.append((utt, f"{exc.reason}: {exc.detail}"))
    audio_s = sum(w.numel() for w in waves.values()) / sample_rate
    beam = None
    if beam_size > 0:
        from asr_kd.decode import BeamSearchDecoder

        beam = BeamSearchDecoder(loaded.tokenizer, beam_size=beam_size, lm_path=lm, lexicon_path=lexicon, lm_weight=lm_weight)
    per_chunk_ms: list[float] = []
    if onnx_model is not None:
        hyps, compute_s, per_chunk_ms = onnx_model.decode(waves, streaming=streaming, progress=progress)
    elif streaming:
        if beam is not None:
            raise AsrKdError("evaluate: --streaming decodes greedily; drop --beam")
        hyps, compute_s, per_chunk_ms = _decode_streaming(loaded, waves, chunk_size, progress)
    else:
        hyps, compute_s = _decode_offline(loaded, waves, batch_max_frames, beam, progress)
    for utt, _ in rejects:
        hyps[utt] = ""
    refs = {u: normalize_text(t) for u, t in data.text.items()}
    report = score(refs, hyps)
    model_obj = loaded.model if loaded is not None else None
    latency = model_obj.algorithmic_latency_ms if getattr(model_obj, "is_streaming", False) else None
    if loaded is not None and streaming and chunk_size is not None:
        latency = chunk_size * loaded.frame_shift_ms + (latency - model_obj.chunk_size * loaded.frame_shift_ms if latency else 0)
    # a student distilled with a target delay of d frames emits d x 40 ms after its chunk is complete
    # (an ONNX model's latency and delay come from its metadata: onnx_model.report_fields below)
    target_delay_ms = loaded.target_delay_ms if loaded is not None else 0.0
    if latency is not None:
        latency += target_delay_ms
    per_chunk_ms.sort()
    extra = {
        "rtf": compute_s / audio_s if audio_s else None,
        "latency_ms": latency,
        "target_delay_ms": target_delay_ms,
        "audio_hours": audio_s / 3600,
        "threads": threads,
        "device": str(run_device),
        "streaming": streaming,
        "decoder": "greedy" if beam is None else f"beam{beam_size}" + ("+lm" if lm else ""),
        "model": str(model),
        "fingerprint": getattr(loaded, "fingerprint", None),
        "checkpoint": checkpoint,
        "params": sum(p.numel() for p in model_obj.parameters()) if hasattr(model_obj, "parameters") else None,
        "data": str(data_dir),
        "rejects": len(rejects),
    }
    if onnx_model is not None:
        extra.update(onnx_model.report_fields())
    if per_chunk_ms:
        extra["chunk_compute_ms_mean"] = sum(per_chunk_ms) / len(per_chunk_ms)
        extra["chunk_compute_ms_p95"] = per_chunk_ms[int(0.95 * (len(per_chunk_ms) - 1))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rejects:
        (out / "rejects.tsv").write_text("".join(f"{u}\t{r}\n" for u, r in rejects), encoding="utf-8")
    result = write_report(report, out, extra)
    print(f"{Path(model).name} on {Path(data_dir).name}{' (streaming)' if streaming else ''}: WER {report.wer:.2f}% "
          f"CER {report.cer:.2f}% [{report.num_utts} utts, {report.num_words} words, sub {report.sub} del {report.dels} "
          f"ins {report.ins}], RTF {extra['rtf']:.4f} ({run_device.type}, {threads} thread{'s' if threads > 1 else ''}), {len(rejects)} rejects -> {out / 'wer.json'}")
    return result if isinstance(result, dict) else json.loads((out / "wer.json").read_text())


def run(args: argparse.Namespace) -> int:
    evaluate(args.model, args.data, args.out, streaming=args.streaming, chunk_size=args.chunk_size, beam_size=args.beam,
             lm=args.lm, lexicon=args.lexicon, lm_weight=args.lm_weight, threads=args.threads,
             batch_max_frames=args.batch_max_frames, allow_pipes=args.allow_pipes, progress=not args.no_progress,
             device=args.device, checkpoint=args.checkpoint)
    return 0
