"""``asr-kd transcribe``: transcribe audio files with a model dir, optionally streaming.

Prints ``path<TAB>text`` per file on stdout. With ``--streaming`` the audio is fed to the recognizer in
``--feed-ms`` pieces as if it arrived live, partial results are shown on stderr as they grow (one line
per update, or rewritten in place with ``\\r`` on a terminal), and the final line goes to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from asr_kd.errors import AudioError, ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model dir (asr-kd train output)")
    parser.add_argument("audio", nargs="+", type=Path, help="audio files (wav/flac, mono)")
    parser.add_argument("--streaming", action="store_true",
                        help="decode chunk by chunk with the model's streaming state and show partial results")
    parser.add_argument("--chunk-ms", type=int, default=None,
                        help="streaming chunk duration in ms, a multiple of the output frame shift (40 ms); "
                             "default: the model's configured chunk")
    parser.add_argument("--feed-ms", type=int, default=100,
                        help="with --streaming, audio is fed in pieces of this many ms (default 100)")
    parser.add_argument("--beam", type=int, default=0,
                        help="offline only: CTC prefix beam search with this beam (default 0 = greedy)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def chunk_frames_from_ms(chunk_ms: int, frame_shift_ms: float) -> int:
    """``--chunk-ms`` -> chunk size in output frames; must be a positive multiple of the frame shift."""
    frames = chunk_ms / frame_shift_ms
    if chunk_ms <= 0 or frames != int(frames):
        raise ConfigError(f"--chunk-ms {chunk_ms}: must be a positive multiple of the model's "
                          f"{frame_shift_ms:g} ms output frame shift (e.g. {int(frame_shift_ms) * 8})")
    return int(frames)


def _load(path: Path, sample_rate: int) -> torch.Tensor:
    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import AudioSource

    return load_audio(AudioSource(utt_id=path.name, path=str(path)), sample_rate=sample_rate)


def _offline(loaded, wave: torch.Tensor, beam) -> str:
    feats, feat_lens = loaded.featurize(wave.unsqueeze(0), torch.tensor([wave.shape[0]]))
    log_probs, lens = loaded.model(feats, feat_lens)
    if beam is not None:
        return beam.decode_text(log_probs, lens)[0]
    from asr_kd.decode.greedy import greedy_ctc

    return loaded.tokenizer.decode(greedy_ctc(log_probs, lens)[0])


def _streaming(recognizer, wave: torch.Tensor, feed: int, path: Path) -> str:
    tty = sys.stderr.isatty()
    shown = None
    recognizer.reset()
    for start in range(0, wave.shape[0], feed):
        partial = recognizer.accept_waveform(wave[start:start + feed])
        if partial != shown:
            shown = partial
            if tty:
                print(f"\r{path}\t{partial}\033[K", end="", file=sys.stderr, flush=True)
            else:
                print(f"partial\t{path}\t{partial}", file=sys.stderr, flush=True)
    final = recognizer.finalize()
    if tty:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    return final


def run(args: argparse.Namespace) -> int:
    from asr_kd.models.model_dir import load_model_dir

    loaded = load_model_dir(args.model, device=args.device)
    rate = loaded.fbank_config.sample_rate
    recognizer = beam = None
    if args.streaming:
        if not loaded.model.is_streaming:
            raise ConfigError(f"{args.model}: a {loaded.model_config.kind} model with full context cannot "
                              f"stream; drop --streaming")
        if args.beam:
            raise ConfigError("--beam is for offline decoding; streaming decodes greedily")
        from asr_kd.decode.streaming import StreamingRecognizer

        chunk = chunk_frames_from_ms(args.chunk_ms, loaded.frame_shift_ms) if args.chunk_ms else None
        recognizer = StreamingRecognizer(loaded, chunk_size=chunk)
    else:
        if args.chunk_ms is not None:
            if not loaded.model.is_streaming:
                raise ConfigError(f"--chunk-ms: {args.model} is a full-context model without chunks")
            loaded.model.set_chunking(chunk_frames_from_ms(args.chunk_ms, loaded.frame_shift_ms))
        if args.beam:
            from asr_kd.decode.beam import BeamSearchDecoder

            beam = BeamSearchDecoder(loaded.tokenizer, beam_size=args.beam)
    if args.feed_ms <= 0:
        raise ConfigError(f"--feed-ms must be positive, got {args.feed_ms}")
    feed = max(1, rate * args.feed_ms // 1000)

    failed = 0
    audio_s = compute_s = 0.0
    for path in args.audio:
        try:
            wave = _load(path, rate)
        except AudioError as exc:
            print(f"asr-kd transcribe: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        t0 = time.perf_counter()
        with torch.inference_mode():
            text = _streaming(recognizer, wave, feed, path) if recognizer else _offline(loaded, wave, beam)
        compute_s += time.perf_counter() - t0
        audio_s += wave.shape[0] / rate
        print(f"{path}\t{text}", flush=True)
    rtf = compute_s / audio_s if audio_s else 0.0
    print(f"asr-kd transcribe: {len(args.audio) - failed} of {len(args.audio)} files, {audio_s:.1f} s of audio, "
          f"RTF {rtf:.3f}" + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0
