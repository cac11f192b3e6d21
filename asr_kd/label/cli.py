"""``asr-kd label --model TEACHER [--model T2 --weights 0.6 0.4] --data DATA --out STORE ...``"""

from __future__ import annotations

import argparse

from asr_kd.targets.codec import DEFAULT_TOP_P


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="teacher dir (repeat for an ensemble): an asr-kd model dir, a local SpeechBrain EncoderASR CTC "
                             "directory (hyperparams.yaml + checkpoints) or a local Hugging Face CTC directory "
                             "(Wav2Vec2/Hubert/WavLM ForCTC), detected from its files; 'hf:DIR' forces Hugging Face, "
                             "'speechbrain:DIR' SpeechBrain")
    parser.add_argument("--units-from", help="model dir or tokens.txt whose units (and, for a model dir, framing) the store "
                        "is written in; needed when no --model is an asr-kd model dir")
    parser.add_argument("--unit-map", action="append", help="TEACHER_SYMBOL STUDENT_SYMBOL file overriding the automatic "
                        "unit mapping of a Hugging Face or SpeechBrain teacher ('-' = unmapped); one for all, or one per such teacher")
    parser.add_argument("--unmapped", choices=["renormalize", "blank"], default="renormalize",
                        help="probability of teacher units with no student unit: drop and renormalize, or give to blank")
    parser.add_argument("--frame-conversion", choices=["peak", "mean"], default="peak",
                        help="teacher frames (e.g. 20 ms) -> stored frames (40 ms): keep the frame with the largest non-blank "
                             "probability (default; CTC spikes survive), or average each group")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per --model (probabilities are averaged)")
    parser.add_argument("--data", required=True, help="what to label (text not needed): a data dir, an audio shard dir "
                        "('asr-kd data shard', recognised by its manifest.json) or a lhotse CutSet manifest "
                        "(cuts.jsonl.gz; cut id = utterance id); the same audio gives the same store")
    parser.add_argument("--out", required=True, help="soft-target store dir; rerunning resumes it")
    parser.add_argument("--top-k", type=int, default=8, help="most units kept per output frame (k_max; 40 ms frames, or "
                        "20 ms for subsampling-2 teachers; 1-64)")
    parser.add_argument("--top-p", type=float, default=DEFAULT_TOP_P,
                        help=f"per frame keep the fewest units whose probability mass reaches this, at most --top-k "
                        f"(in (0, 1]; 1 = always --top-k units; default {DEFAULT_TOP_P}: about 5 bytes per 40 ms frame "
                        "on the demo teacher, KL to the teacher 0.006 nats)")
    parser.add_argument("--format-version", type=int, choices=[1, 2], default=2,
                        help="store format: 2 (variable k, zstd-compressed blocks; default) or 1 (fixed top-k, "
                        "16 B/frame at top-8, readable by asr-kd releases before format 2; needs --top-p 1)")
    parser.add_argument("--codec", choices=["zstd", "none"], default="zstd", help="format-2 block compression")
    parser.add_argument("--quantization", choices=["log8", "float16"], default="log8",
                        help="log8: 1-byte log-probability codes; float16: 2-byte probabilities")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="teacher forward dtype (torch.autocast on the actor's device; fp16 needs CUDA): bf16 on a GPU "
                        "is faster at a measured KL cost (BENCHMARKS.md, label_precision); recorded in the store's meta")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature applied to the teachers")
    parser.add_argument("--shard-size", type=int, default=256, help="utterances per shard (the unit of resume)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="longer utterances are rejected as too_long")
    parser.add_argument("--batch-max-frames", type=int, default=40000, help="padded 10 ms frames per teacher batch")
    parser.add_argument("--actors", type=int, default=None,
                        help="teacher actors in the Ray pool (default: one per GPU of the Ray cluster, 1 GPU each; "
                             "one per CPU of the cluster when it has no GPU)")
    parser.add_argument("--actor-cpus", type=float, default=None,
                        help="CPUs reserved per actor (default: share the cluster's CPUs, leaving room for read tasks if any)")
    parser.add_argument("--audio-read", choices=["auto", "actors", "tasks"], default="auto",
                        help="who decodes the audio: each teacher actor its own shards ('actors': no separate read stage, "
                        "best when actors run on CPUs), or Ray CPU tasks feeding the actors ('tasks': keeps GPUs busy); "
                        "auto: actors on CPUs, tasks for GPU actors")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 when the cluster has GPUs")
    parser.add_argument("--min-max-prob", type=float, help="reject utterances whose mean per-frame max probability is lower")
    parser.add_argument("--max-entropy", type=float, help="reject utterances whose mean per-frame entropy (nats) is higher")
    parser.add_argument("--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: a local Ray)")
    parser.add_argument("--allow-pipes", action="store_true", help="allow 'command |' entries in wav.scp (data dir input)")
    parser.add_argument("--local", action="store_true", help="no Ray: a single-process loop (debugging, reference)")
    parser.add_argument("--dry-run", action="store_true", help="plan only: read the input, plan shards and teacher batches "
                        "(the completed shards of an existing --out left out) and report them with the driver memory "
                        "planning took; loads no teacher, starts no Ray, writes nothing")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from asr_kd.label.pipeline import LabelOptions, label, label_local

    options = LabelOptions(
        top_k=args.top_k, top_p=args.top_p, format_version=args.format_version, codec=args.codec,
        quantization=args.quantization, temperature=args.temperature, shard_size=args.shard_size,
        max_seconds=args.max_seconds, batch_max_frames=args.batch_max_frames, actors=args.actors,
        actor_num_cpus=args.actor_cpus, audio_read=args.audio_read, num_gpus_per_actor=args.gpus_per_actor, min_max_prob=args.min_max_prob,
        max_entropy=args.max_entropy, weights=args.weights, allow_pipes=args.allow_pipes, address=args.address,
        progress=not args.no_progress, units_from=args.units_from, unit_map_files=args.unit_map,
        unmapped_rule=args.unmapped, frame_conversion=args.frame_conversion,
        precision=args.precision,
    )
    if args.dry_run:
        from asr_kd.label.pipeline import check_options
        from asr_kd.label.plan import plan_only

        check_options(options)  # the store settings a real run would refuse
        print(plan_only(args.data, args.out, options, gpus_per_actor=args.gpus_per_actor or 0.0).line())
        return 0
    if args.local:
        summary = label_local(args.model, args.data, args.out, options)
        print(summary.line())
    else:
        label(args.model, args.data, args.out, options)
    return 0
