"""Labeling input: a data dir (one file per utterance, ``wav.scp``) vs audio shards vs a lhotse CutSet.

Measures, on one synthetic corpus (16 kHz PCM_16 WAVs, 2-6 s):

(a) ``pack``   ``asr-kd data shard``: audio-hours packed per wall-hour, bytes of the shards vs the files;
(b) ``read``   the read-task work of labeling, one process: every utterance decoded (and resampled to
               16 kHz if needed) through ``asr_kd.data.sources.read_item`` in the order labeling plans
               (consecutive ids per shard, by duration within), from each input; audio-hours per wall-hour, files opened per utterance;
(c) ``label``  (``--label``) ``asr-kd label`` with Ray from the data dir and from the shards: wall time
               and whether the two stores are byte-identical (they must be).

The page cache is warm after packing (nothing here drops it), so (b) on a local disk shows the CPU
cost of the index lookup + sha256 check + decode, not what shards save on a network file system or
an object store (one open per shard instead of one per utterance); run it with ``--work`` on such a
mount, and a corpus larger than RAM, for that.

    python -m tools.bench.label_input [--quick] [--utts N] [--data DIR] [--label] [--work DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tools.bench.common import add_output_args, publish, scratch_dir, table
from tools.bench.fixtures import random_model_dir, synthetic_data


def _cuts(data_dir: Path, out: Path) -> Path:
    """The lhotse CutSet of a whole-file data dir (one MonoCut per recording)."""
    from lhotse import CutSet, Recording

    from asr_kd.data.datadir import read_data_dir

    d = read_data_dir(data_dir)
    cuts = [Recording.from_file(d.wav_scp[u], recording_id=u).to_cut() for u in d.utt_ids]
    CutSet.from_cuts(cuts).to_file(out)
    return out


def read_all(path: Path, sample_rate: int = 16000) -> tuple[float, float, int]:
    """(wall seconds, audio seconds, utterances) of decoding every item of the input at ``path``."""
    from asr_kd.data.sources import open_source, read_item
    from asr_kd.label.pipeline import LabelOptions
    from asr_kd.label.plan import plan_shards

    t0 = time.perf_counter()
    src = open_source(path)
    seconds = src.seconds()
    order = [u for shard in plan_shards(src, LabelOptions().shard_size, seconds) for u in shard]
    audio = 0.0
    for utt in order:
        wave, _ = read_item(src.item(utt), sample_rate, None, False)
        audio += wave.shape[0] / sample_rate
    return time.perf_counter() - t0, audio, len(order)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="60 utterances (well under a minute without --label)")
    p.add_argument("--utts", type=int, help="synthetic utterances (default 400, --quick 60)")
    p.add_argument("--data", help="a whole-file data dir to use instead of the synthetic one")
    p.add_argument("--shard-seconds", type=float, default=600.0, help="audio seconds per shard (default 600)")
    p.add_argument("--label", action="store_true", help="also label both inputs with Ray (minutes)")
    p.add_argument("--rounds", type=int, default=3, help="read passes per input; the best is reported")
    add_output_args(p)
    args = p.parse_args()
    n = args.utts or (60 if args.quick else 400)
    from asr_kd.data.shards import write_shards

    with scratch_dir(args.work, "bench-label-input-") as work:
        data = Path(args.data) if args.data else synthetic_data(work / "corpus", n)
        t0 = time.perf_counter()
        shards = write_shards(data, work / "shards", shard_seconds=args.shard_seconds, progress=False)
        pack_s = time.perf_counter() - t0
        from asr_kd.data.datadir import read_data_dir

        d = read_data_dir(data)
        file_bytes = sum(Path(d.wav_scp[r]).stat().st_size for r in d.wav_scp)
        inputs = {"data dir (wav.scp)": data, "audio shards": work / "shards"}
        try:
            inputs["lhotse CutSet"] = _cuts(data, work / "cuts.jsonl.gz")
        except ImportError:
            pass
        rows = []
        for name, path in inputs.items():
            best = min((read_all(path) for _ in range(max(1, args.rounds))), key=lambda r: r[0])
            wall, audio, utts = best
            opens = (f"{len(shards_list(work))} tars, one seek per utterance" if name == "audio shards"
                     else f"{len(d.wav_scp)} files, one per utterance")
            rows.append([name, utts, f"{audio / 3600:.3f}", f"{wall:.2f}", f"{audio / wall:.0f}", opens])
        body = [
            f"Corpus: {len(d)} utterances, {shards.seconds / 3600:.3f} h, {file_bytes / 1e6:.1f} MB of WAV files; "
            f"packed into {shards.shards_written + shards.shards_skipped} shards of <= {args.shard_seconds:g} s "
            f"({shards.bytes / 1e6:.1f} MB) in {pack_s:.1f} s ({shards.seconds / pack_s:.0f} audio-seconds per second).",
            "",
            "Read-task work of labeling, one process, warm page cache (best of "
            f"{max(1, args.rounds)}):",
            "",
            table(["input", "utterances", "audio h", "wall s", "audio-s per s", "files read"], rows),
        ]
        if args.label:
            from asr_kd.label.pipeline import LabelOptions, label
            from asr_kd.label.ray_runtime import init_ray

            teacher = random_model_dir(work / "teacher", "demo_teacher")
            init_ray(None)
            walls, stores = {}, {}
            for name in ("data dir (wav.scp)", "audio shards"):
                out = work / f"store-{len(walls)}"
                t0 = time.perf_counter()
                label([str(teacher)], str(inputs[name]), str(out), LabelOptions(progress=False, actors=2))
                walls[name], stores[name] = time.perf_counter() - t0, out
            same = _same_store(*stores.values())
            body += ["", table(["input", "label wall s (Ray, 2 actors)"], [[k, f"{v:.1f}"] for k, v in walls.items()]),
                     "", f"Stores byte-identical (all files but meta.json): {same}."]
        publish("label_input", "Labeling input: data dir vs audio shards vs lhotse CutSet", body, write=not args.no_write)
    return 0


def shards_list(work: Path) -> list[Path]:
    return sorted((work / "shards").glob("shard-*.tar"))


def _same_store(a: Path, b: Path) -> bool:
    def files(s: Path) -> dict[str, bytes]:
        return {p.relative_to(s).as_posix(): p.read_bytes() for p in s.rglob("*") if p.is_file() and p.name != "meta.json"}

    return files(a) == files(b)


if __name__ == "__main__":
    raise SystemExit(main())
