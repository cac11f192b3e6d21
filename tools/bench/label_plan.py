"""Labeling driver memory: bytes the driver holds per planned utterance (``asr-kd label --dry-run``).

The driver of ``asr-kd label`` reads the input, plans shards and teacher batches and builds the Ray
input rows before any audio is touched; that memory grows with the corpus. This measures it where it
matters, at 10^5 and 10^6 utterances, on synthetic Kaldi data dirs shaped like LibriSpeech
(``1234-56789-0012`` ids, absolute ``.flac`` paths, ``utt2spk`` and ``utt2dur``; no audio files: the
durations come from ``utt2dur``, so nothing is opened). Each size runs ``asr-kd label --dry-run`` in a
fresh process and reads the growth of its peak resident memory over planning (``PlanSummary``). The
same ids and durations are also packed as an audio shard dir (indexes only, sparse tars: ``asr-kd
data shard``'s layout), the input recommended at scale.

    python -m tools.bench.label_plan [--sizes 100000 1000000] [--no-write]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.common import add_output_args, publish, scratch_dir, table

TARGET_BYTES = 200  # issue: flat, <= 200 bytes per planned utterance


def write_librispeech_like(out: Path, n: int, seed: int = 0) -> Path:
    """A data dir of ``n`` utterances: wav.scp, utt2spk, utt2dur (2-20 s), sorted by id, no audio."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    per_chapter = 100
    ids = []
    for i in range(n):
        spk, chapter, utt = 100 + i // (per_chapter * 20), 10000 + i // per_chapter, i % per_chapter
        ids.append((f"{spk}-{chapter}-{utt:04d}", spk, chapter))
    ids.sort()
    durs = rng.uniform(2.0, 20.0, n)
    with open(out / "wav.scp", "w") as w, open(out / "utt2spk", "w") as s, open(out / "utt2dur", "w") as d:
        for (utt, spk, chapter), dur in zip(ids, durs):
            w.write(f"{utt} /data/LibriSpeech/train-other-500/{spk}/{chapter}/{utt}.flac\n")
            s.write(f"{utt} {spk}\n")
            d.write(f"{utt} {dur:.3f}\n")
    return out


def write_shard_dir_like(out: Path, n: int, per_shard: int = 1000, seed: int = 0) -> Path:
    """An audio shard dir (``asr-kd data shard``'s layout) of ``n`` utterances with the ids and durations of
    ``write_librispeech_like``: manifest and per-shard indexes as written by packing, FLAC members of
    ~32 kB per second; the tars are sparse files of the indexed length (nothing reads their audio)."""
    import hashlib
    import json

    import numpy as np

    from asr_kd.data.shards import FORMAT, FORMAT_VERSION, MANIFEST, member_name, shard_name

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(f"{100 + i // 2000}-{10000 + i // 100}-{i % 100:04d}" for i in range(n))
    durs = rng.uniform(2.0, 20.0, n)
    shards = []
    for k, start in enumerate(range(0, n, per_shard)):
        members, offset = [], 512
        for utt, dur in zip(ids[start: start + per_shard], durs[start: start + per_shard]):
            size = int(dur * 32000)
            members.append({"utt": utt, "member": member_name(utt, "flac"), "offset": offset, "size": size,
                            "seconds": round(float(dur), 3), "sample_rate": 16000, "num_samples": int(dur * 16000),
                            "sha256": hashlib.sha256(utt.encode()).hexdigest()})
            offset += -(-size // 512) * 512 + 512
        tar = out / f"{shard_name(k)}.tar"
        with open(tar, "wb") as fh:
            fh.truncate(offset + 1024)
        seconds = float(sum(m["seconds"] for m in members))
        idx = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": k, "tar": tar.name, "tar_bytes": offset + 1024,
               "utts": len(members), "seconds": seconds, "members": members, "rejects": []}
        (out / f"{shard_name(k)}.index.json").write_text(json.dumps(idx, separators=(",", ":")) + "\n")
        shards.append({"tar": tar.name, "index": f"{shard_name(k)}.index.json", "utts": len(members), "rejects": 0,
                       "seconds": seconds, "bytes": offset + 1024})
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": "synthetic", "utts": n, "rejects": 0,
                "seconds": float(sum(s["seconds"] for s in shards)), "bytes": int(sum(s["bytes"] for s in shards)),
                "shards": shards}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def dry_run(data: Path, out: Path) -> dict[str, float]:
    """Run ``asr-kd label --dry-run`` in a fresh process; its figures."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asr_kd.cli", "label", "--model", "unused", "--data", str(data),
                           "--out", str(out), "--dry-run"], capture_output=True, text=True, check=True)
    line = proc.stdout.strip().splitlines()[-1]
    m = re.search(r"dry run: (\d+) utterances .* in (\d+) shards .*?(\d+) Ray input rows; planning took ([\d.]+) s and "
                  r"([\d.]+) MiB of driver memory \((\d+) bytes per utterance\)", line)
    if not m:
        raise RuntimeError(f"unexpected dry-run output: {line}")
    utts, shards, rows, secs, mib, per = m.groups()
    return dict(utts=int(utts), shards=int(shards), rows=int(rows), plan_s=float(secs), mib=float(mib),
                per_utt=int(per), wall=time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="planned utterances")
    add_output_args(p)
    args = p.parse_args()
    rows = []
    results = {}
    with scratch_dir(args.work, "bench-plan-") as work:
        for kind in ("data dir", "audio shard dir"):
            for n in args.sizes:
                if kind == "data dir":
                    data = write_librispeech_like(work / f"data_{n}", n)
                else:
                    data = write_shard_dir_like(work / f"shards_{n}", n)
                r = dry_run(data, work / f"store_{n}")
                shutil.rmtree(data)
                results[kind, n] = r
                print(f"{kind}, {n} utterances: {r}")
                rows.append([kind, f"{n:,}", f"{r['shards']:,}", f"{r['rows']:,}", f"{r['plan_s']:.1f}", f"{r['mib']:.0f}",
                             f"{r['per_utt']}", "yes" if r["per_utt"] <= TARGET_BYTES else "no"])
    sizes = sorted(args.sizes)
    growth = "".join(f" {kind.capitalize()}: from {sizes[0]:,} to {sizes[-1]:,} utterances the bytes per utterance go from "
                     f"{results[kind, sizes[0]]['per_utt']} to {results[kind, sizes[-1]]['per_utt']}."
                     for kind in ("data dir", "audio shard dir")) if len(sizes) > 1 else ""
    body = [
        "Driver memory of `asr-kd label` before any audio is read: `--dry-run` opens the input, plans shards and "
        "teacher batches and builds the Ray input rows as a run does, in a fresh process; the figure is the growth "
        "of its peak resident memory over planning. Inputs: a LibriSpeech-shaped data dir (wav.scp with absolute "
        ".flac paths, utt2spk, utt2dur) and an audio shard dir with the same ids and durations (`asr-kd data shard`'s "
        "manifest and indexes, 1,000 FLAC members per tar; sparse tars); default layout (actors read their shards: one "
        "Ray row per shard, its planned items as zlib-compressed JSON).",
        "",
        table(["input", "planned utterances", "shards", "Ray input rows", "planning s", "driver MiB", "bytes per utterance",
               f"<= {TARGET_BYTES} B"], rows),
        "",
        f"Target: flat and <= {TARGET_BYTES} bytes per planned utterance.{growth}",
    ]
    publish("label_plan", "Labeling driver memory per planned utterance (asr-kd label --dry-run)", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
