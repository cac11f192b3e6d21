"""GPU smoke test of the LibriSpeech recipe's teacher (``recipes/librispeech/gpu_smoke.sh`` runs this).

On a GPU machine: builds a tree in the LibriSpeech layout (synthetic speech-like audio, random
word transcripts; nothing downloaded), prepares it with ``asr-kd prepare librispeech``, trains the
recipe's teacher config (``recipes/librispeech/conf/teacher.yaml``: the model, units, batch and optimizer
as the recipe has them) for ``--max-steps`` optimizer steps with the real training loop, and writes
``smoke.json`` and ``smoke.md`` under ``--out``: device, dtype, steps/s, audio-s per s, peak GPU memory
(``torch.cuda.max_memory_allocated``).

Without a usable GPU it refuses before any work (exit 3), naming the cause (``asr_kd.devices``).
``--device cpu`` is the dry mode for machines without a GPU: the same steps on the CPU, e.g.
``--device cpu --max-steps 5 --hours 0.1 batch.max_frames=6000`` (what the tests run; 0.1 h is about the
least transcript text the recipe's 500 BPE units can be trained on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEACHER_CONF = ROOT / "recipes" / "librispeech" / "conf" / "teacher.yaml"
EXIT_NO_GPU = 3
SR = 16000


def speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A speech-like float32 signal: a gliding harmonic tone with a syllable-rate envelope, plus noise."""
    t = np.arange(int(round(seconds * SR))) / SR
    f0 = 100 + 120 * rng.random()
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * (0.3 + rng.random()) * t))) / SR
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * rng.random()) * t + rng.random() * 6.28)
    return (0.15 * tone * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def build_tree(root: Path, hours: float, seed: int = 0, dev_utts: int = 8, distinct_hours: float = 0.5) -> Path:
    """``root/LibriSpeech/{train-clean-100,dev-clean}/SPK/CHAP/SPK-CHAP-NNNN.flac`` + ``SPK-CHAP.trans.txt``
    (upper-case transcripts, as distributed): about ``hours`` of training audio in utterances of 2-17 s
    (LibriSpeech's train-clean-100 has 12.7 s on average, at most ~25 s), ``dev_utts`` dev utterances.
    Audio beyond the first ``distinct_hours`` repeats earlier files through hard links (each utterance
    keeps its own id and transcript): epochs of many batches without synthesizing hours of audio."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    letters = np.array(list("ETAOINSHRDLUCMFWYPGBVKXQJZ"))
    weights = np.linspace(2.0, 0.2, letters.size)
    weights /= weights.sum()
    words = ["".join(rng.choice(letters, size=rng.integers(2, 9), p=weights)) for _ in range(3000)]
    for subset, target_s, spk0 in (("train-clean-100", hours * 3600, 100), ("dev-clean", None, 900)):
        total, n = 0.0, 0
        written: list[tuple[Path, float]] = []
        while (total < target_s) if target_s is not None else (n < dev_utts):
            spk, chap = spk0 + n // 40, 1000 + n // 20
            d = root / "LibriSpeech" / subset / str(spk) / str(chap)
            d.mkdir(parents=True, exist_ok=True)
            utt = f"{spk}-{chap}-{n % 20:04d}"
            if total < distinct_hours * 3600 or not written:
                seconds = float(rng.uniform(2.0, 17.0))
                sf.write(d / f"{utt}.flac", speechlike(seconds, rng), SR, subtype="PCM_16")
                written.append((d / f"{utt}.flac", seconds))
            else:
                src, seconds = written[n % len(written)]
                try:
                    (d / f"{utt}.flac").hardlink_to(src)
                except OSError:
                    (d / f"{utt}.flac").write_bytes(src.read_bytes())
            text = " ".join(rng.choice(words, size=max(1, int(seconds * 2.7))))  # ~2.7 words/s, as read speech
            with open(d / f"{spk}-{chap}.trans.txt", "a", encoding="utf-8") as fh:
                fh.write(f"{utt} {text}\n")
            total += seconds
            n += 1
    return root


def gpu_facts(device) -> dict:
    import torch

    from asr_kd.devices import nvidia_driver

    facts = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "driver": nvidia_driver()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     gpu_count=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
    return facts


def read_train_metrics(model_dir: Path) -> list[dict]:
    from asr_kd.train.metrics import read_metrics

    path = model_dir / "metrics.csv"
    return [r for r in read_metrics(path) if r.get("kind") == "train"] if path.exists() else []


def steady_rates(rows: list[dict]) -> dict:
    """Median steps/s and audio-s per s over the logging intervals after the first logged step (start-up
    excluded; the median leaves out the intervals slowed by an epoch's dev evaluation and checkpoint)."""
    if len(rows) < 2:
        return {}
    rates = []
    for a, b in zip(rows, rows[1:]):
        dt = float(b["wall_s"]) - float(a["wall_s"])
        if dt > 0:
            rates.append((int(b["step"]) - int(a["step"])) / dt)
    fps = [float(r["frames_per_s"]) for r in rows[1:] if r.get("frames_per_s") not in (None, "")]
    return {"steady_from_step": int(rows[0]["step"]), "steady_steps_per_s": float(np.median(rates)) if rates else None,
            "steady_audio_s_per_s": float(np.median(fps)) / 100 if fps else None}


def write_report(out: Path, result: dict) -> None:
    (out / "smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [("device", result["device"] + (f" ({result['gpu']})" if result.get("gpu") else "")),
            ("dtype", result["dtype"]), ("torch / CUDA build / driver",
                                          f"{result['torch']} / {result['torch_cuda_build']} / {result['driver']}"),
            ("config", f"{result['config']} ({result['params_m']:.1f} M params) + {' '.join(result['overrides'])}"),
            ("training audio", f"{result['train_hours']:.2f} h, {result['train_utts']} utterances"),
            ("optimizer steps", str(result["steps"])),
            ("wall s (train call)", f"{result['train_wall_s']:.1f}"),
            ("steps/s (whole run)", f"{result['steps_per_s']:.3f}"),
            ("steps/s (median over logging intervals after step %s)" % result.get("steady_from_step", "-"),
             "-" if result.get("steady_steps_per_s") is None else f"{result['steady_steps_per_s']:.3f}"),
            ("audio-s per s (median, after start-up)",
             "-" if result.get("steady_audio_s_per_s") is None else f"{result['steady_audio_s_per_s']:.0f}"),
            ("peak GPU memory (max_memory_allocated)",
             "-" if result["peak_gpu_mem_gib"] is None else f"{result['peak_gpu_mem_gib']:.2f} GiB")]
    lines = ["# LibriSpeech teacher: GPU smoke test", "", f"{result['date_utc']}, command: `{result['command']}`", "",
             "| what | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    (out / "smoke.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work dir: corpus/, data/, model/, smoke.json, smoke.md")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu = dry mode for machines without a GPU")
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (train.max_steps)")
    p.add_argument("--hours", type=float, default=10.0,
                   help="training audio (10 h = ~30 recipe batches of 120,000 padded frames per epoch; beyond the "
                        "first 0.5 h the files repeat through hard links)")
    p.add_argument("--config", default=str(TEACHER_CONF), help="training config (default: the recipe's teacher)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides, e.g. batch.max_frames=6000")
    args = p.parse_args(argv)

    import torch

    from asr_kd.devices import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        print(f"gpu_smoke: refusing to run: no usable GPU here ({exc}). This script measures the recipe on a GPU; "
              "on a machine without one, '--device cpu --max-steps 5 --hours 0.1 batch.max_frames=6000' is its dry "
              "mode", file=sys.stderr)
        return EXIT_NO_GPU
    if args.max_steps < 1 or args.hours <= 0:
        print("gpu_smoke: --max-steps must be >= 1 and --hours > 0", file=sys.stderr)
        return 2

    from asr_kd.cli import main as cli
    from asr_kd.config import load_config
    from asr_kd.train.config import TrainConfig
    from asr_kd.train.distributed import train_dtype
    from asr_kd.train.loop import train

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus, data, model = out / "corpus", out / "data", out / "model"
    if not (corpus / ".done").exists():
        t0 = time.time()
        build_tree(corpus, args.hours)
        (corpus / ".done").write_text(f"{args.hours}\n")
        print(f"gpu_smoke: built {corpus} ({args.hours} h of training audio) in {time.time() - t0:.0f} s", flush=True)
    rc = cli(["prepare", "librispeech", "--corpus-dir", str(corpus), "--out", str(data), "--subsets",
              "train-clean-100", "dev-clean", "--no-progress"])
    if rc:
        return rc
    overrides = [f"data.train=[{data / 'train_clean_100'}]", f"data.dev={data / 'dev_clean'}",
                 f"train.max_steps={args.max_steps}", f"train.device={device.type}",
                 f"train.checkpoint_every_steps={args.max_steps}",
                 f"train.log_every_steps={max(1, min(5, args.max_steps // 5))}",
                 *args.overrides]
    config = load_config(args.config, TrainConfig, overrides)
    if model.exists():
        import shutil

        shutil.rmtree(model)  # a fresh run each time: the timing is of these steps, not of a resume
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    result_train = train(config, model, progress=False)
    wall = time.time() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    from asr_kd.data.datadir import read_data_dir

    train_dir = read_data_dir(data / "train_clean_100")
    seconds = sum(train_dir.duration(u) or 0.0 for u in train_dir.utt_ids)
    result = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["recipes/librispeech/gpu_smoke.sh"] + (argv if argv is not None else sys.argv[1:])),
        "device": device.type, "dtype": train_dtype(config, device.type == "cuda"),
        **gpu_facts(device),
        "config": str(Path(args.config).resolve().relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "overrides": args.overrides, "params_m": result_train.params / 1e6,
        "train_hours": seconds / 3600, "train_utts": len(train_dir.utt_ids),
        "batch_max_frames": config.batch.max_frames,
        "steps": result_train.steps, "train_wall_s": wall, "steps_per_s": result_train.steps / wall,
        **steady_rates(read_train_metrics(model)),
        "peak_gpu_mem_gib": peak,
    }
    write_report(out, result)
    print((out / "smoke.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
