"""Labeling at reduced precision: what ``asr-kd label --precision bf16|fp16`` costs in target quality and
gains in speed, against float32, side by side in one run.

The teacher ensemble (``TeacherEnsemble``, the code path of the Ray actors) labels the same utterances
once per precision, in the same batches; for each non-fp32 precision the section reports the mean
per-frame KL(fp32 ‖ precision) of the dense averaged distributions (nats, 40 ms frames), the share of
frames whose most probable unit changes, the unit error rate of the greedy 1-best (what ``text.pseudo``
is made of) against the fp32 1-best, and the forward time per audio-second relative to fp32. KL is measured on the dense
distributions, before top-p/top-k and quantization (whose own cost is in the store_v2 section).

On a CPU, bf16 and fp16 run through oneDNN (faster where the CPU has AMX/AVX-512 BF16; the machine line
names the CPU); the KL figures carry over to a GPU, the speed figures do not. On a GPU
(``--device cuda``) the same script gives the GPU figures; ``tools/bench/gpu_label.sh`` runs it there.

    python -m tools.bench.label_precision --model TEACHER_DIR --data DEV_DIR [--device cpu|cuda]
        [--max-utts N] [--batch-utts 16] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import torch

from tools.bench.common import add_output_args, publish, scratch_dir, table


def label_dense(ensemble, waves: list[torch.Tensor], batch_utts: int) -> tuple[list[torch.Tensor], float]:
    """Dense per-utterance distributions ``(T, V)`` float64 and the forward seconds (synchronized on CUDA)."""
    out: list[torch.Tensor] = []
    seconds = 0.0
    for i in range(0, len(waves), batch_utts):
        batch = waves[i:i + batch_utts]
        if ensemble.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probs, lens, _ = ensemble.dense(batch)
        if ensemble.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        out += [probs[b, : int(lens[b])].double() for b in range(len(batch))]
    return out, seconds


def main() -> int:
    import jiwer

    from asr_kd.data.audio import load_audio
    from asr_kd.data.datadir import read_data_dir
    from asr_kd.decode import greedy_ctc
    from asr_kd.errors import AudioError
    from asr_kd.label.teacher import PRECISIONS, TeacherEnsemble

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="trained teacher model dir")
    p.add_argument("--data", required=True, help="data dir to label (e.g. the demo dev set)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--max-utts", type=int, default=200)
    p.add_argument("--batch-utts", type=int, default=16, help="utterances per teacher forward")
    p.add_argument("--rounds", type=int, default=2, help="timing: best of this many passes per precision")
    add_output_args(p)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    with scratch_dir(args.work, "bench-label-precision-"):
        data = read_data_dir(args.data)
        ensembles = {}
        for name in PRECISIONS:
            ensembles[name] = TeacherEnsemble([args.model], device=args.device, precision=name)
        sr = ensembles["fp32"].sample_rate
        waves = []
        for utt in data.utt_ids[: args.max_utts]:
            try:
                waves.append(load_audio(data.source(utt), sample_rate=sr, max_seconds=60.0))
            except AudioError:
                continue
        waves.sort(key=lambda w: -w.numel())  # batches of similar length, as the pipeline forms them
        audio_s = sum(w.numel() for w in waves) / sr
        results = {}
        for name, ens in ensembles.items():
            label_dense(ens, waves[: args.batch_utts], args.batch_utts)  # warm-up (oneDNN / CUDA kernels)
            best = float("inf")
            for _ in range(args.rounds):
                dense, secs = label_dense(ens, waves, args.batch_utts)
                best = min(best, secs)
            results[name] = (dense, best)
        ref, ref_s = results["fp32"]
        def one_best(dense: list[torch.Tensor]) -> list[str]:
            return [" ".join(map(str, greedy_ctc(d[None])[0])) or "<empty>" for d in dense]

        ref_hyps = one_best(ref)
        frames = sum(d.shape[0] for d in ref)
        rows = []
        for name, (dense, secs) in results.items():
            kl = sum(float((r * (r.clamp_min(1e-30).log() - d.clamp_min(1e-30).log())).sum()) for r, d in zip(ref, dense)) / frames
            flips = sum(int((r.argmax(-1) != d.argmax(-1)).sum()) for r, d in zip(ref, dense)) / frames
            wer = jiwer.wer(ref_hyps, one_best(dense))
            rows.append([name, f"{kl:.2e}", f"{100 * flips:.3f}", f"{100 * wer:.2f}", f"{audio_s / secs:,.0f}",
                         f"{ref_s / secs:.2f}"])
        body = [
            f"Teacher {args.model} on {args.data}: {len(waves)} utterances, {audio_s / 60:.1f} audio-minutes, {frames:,} "
            f"frames of {ensembles['fp32'].frame_shift_ms:g} ms; device {args.device}"
            + (", 1 thread" if args.device == "cpu" else "") + f", batches of {args.batch_utts} utterances, best of "
            f"{args.rounds} passes. KL(fp32 ‖ x) is per frame in nats on the dense averaged distribution; "
            "the 1-best unit error rate compares the greedy (collapsed CTC) unit sequences with fp32's.",
            "",
            table(["precision", "KL(fp32 ‖ x) nats", "frames whose top unit changes %", "1-best unit error rate vs fp32 %",
                   "audio-s per second", "speed vs fp32"], rows),
        ]
        publish(f"label_precision_{args.device}", f"Labeling precision on {args.device}: KL and speed vs fp32", body,
                write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
