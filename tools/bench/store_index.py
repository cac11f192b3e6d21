"""Store index at scale: memory per utterance and open time of ``StoreReader`` with the compact index.

A synthetic store *index* is written for N utterances (no audio, no teacher, no targets): ``meta.json``
(finalized, ``num_shards`` = N / utterances-per-shard), empty shard files with minimal markers,
``index.tsv`` and the compact index ``STORE/index/`` exactly as ``StoreWriter.finalize`` writes them
(``asr_kd.targets.index.CompactIndex``). Utterance ids look like LibriLight segment ids
(``spk00012-rec001234-seg0012345``, 29 bytes). Each measurement runs in a fresh Python process:

- **open**: wall time of ``StoreReader(STORE)`` (best of 3 processes), with the compact index, and for an
  older store (index.tsv only, compact index built in memory: the one-time cost; cached afterwards when
  the store is writable);
- **resident**: growth of the process's resident set (VmRSS, which counts the memory-mapped index pages
  it touched) after opening, after 10,000 random lookups by id (``utt in reader`` + ``num_frames``, what
  the trainer does per batch), and after touching every page (``total_frames`` + iterating all ids):
  the worst case, = the index's bytes;
- the per-utterance Python dict the reader held before (``index.tsv`` -> ``{utt: (shard, offset,
  frames)}``), built in the same way, for comparison.

Open time is measured at two shard counts for the same N (flat = it does not read the shards).
Targets: <= 200 bytes per utterance resident, open time flat in the number of shards.

    python -m tools.bench.store_index [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tools.bench.common import ROOT, add_output_args, publish, scratch_dir, table

PROBE = r"""
import json, sys, time, random
from pathlib import Path
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
store, mode = sys.argv[1], sys.argv[2]
import numpy as np
from asr_kd.targets import index as compact
from asr_kd.targets.layout import INDEX
from asr_kd.targets.reader import StoreReader
if mode == "readonly":
    compact.writable = lambda d: False
out = {}
base = rss()
if mode == "dict":
    t = time.perf_counter()
    index = {}
    for line in (Path(store) / INDEX).read_text(encoding="utf-8").splitlines():
        u, s, o, f = line.split("\t")
        index[u] = (int(s), int(o), int(f))
    ids = sorted(index)
    out["open_s"] = time.perf_counter() - t
    out["rss_open"] = rss() - base
    print(json.dumps(out)); sys.exit(0)
t = time.perf_counter()
reader = StoreReader(store)
out["open_s"] = time.perf_counter() - t
out["rss_open"] = rss() - base
n = len(reader)
rng = random.Random(0)
probe = [reader.utt_ids[rng.randrange(n)] for _ in range(10000)]
t = time.perf_counter()
for u in probe:
    assert u in reader
    reader.num_frames(u)
out["lookup_us"] = (time.perf_counter() - t) / len(probe) * 1e6
out["rss_lookups"] = rss() - base
reader.total_frames
for _ in reader.utt_ids:
    pass
np.asarray(reader._index.shard).sum(); np.asarray(reader._index.offset).sum()
out["rss_all"] = rss() - base
out["index_bytes"] = reader.index_nbytes()
print(json.dumps(out))
"""


def make_index_store(store: Path, n: int, per_shard: int) -> dict:
    """Write the synthetic store index of ``n`` utterances; returns sizes and the write time."""
    from asr_kd.targets import index as compact
    from asr_kd.atomic import atomic_write_bytes
    from asr_kd.targets.layout import INDEX, SHARDS, shard_name
    from asr_kd.targets.meta import StoreMeta

    store.mkdir(parents=True)
    shards = (n + per_shard - 1) // per_shard
    meta = StoreMeta(units_hash="synthetic", vocab_size=40, frame_shift_ms=40.0, k=8, num_shards=shards,
                     teacher_fingerprints=["synthetic"], teacher_weights=[1.0])
    (store / "meta.json").write_text(meta.to_json())
    (store / SHARDS).mkdir()
    for s in range(shards):  # minimal shards: an empty .bin and a marker without per-utterance rows
        (store / SHARDS / f"{shard_name(s)}.bin").write_bytes(b"")
        (store / SHARDS / f"{shard_name(s)}.json").write_text(json.dumps(
            {"format_version": 2, "shard": s, "bytes": 0, "frames": 0, "blocks": [], "codec": "zstd",
             "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "utts": []}))
    rng = np.random.default_rng(0)
    # LibriLight-like segment ids, generated in sorted order (index.tsv is sorted by id)
    utts = [f"spk{i // 2000:05d}-rec{i // 20:06d}-seg{i:07d}" for i in range(n)]
    frames = rng.integers(25, 500, size=n)
    shard_of = np.arange(n) // per_shard
    offsets = np.zeros(n, dtype=np.int64)
    for s in range(shards):  # offsets within each shard, in frames
        sl = slice(s * per_shard, (s + 1) * per_shard)
        offsets[sl] = np.concatenate([[0], np.cumsum(frames[sl])[:-1]])
    t = time.perf_counter()
    rows = "".join(f"{u}\t{s}\t{o}\t{f}\n" for u, s, o, f in zip(utts, shard_of.tolist(), offsets.tolist(),
                                                                   frames.tolist()))
    atomic_write_bytes(store / INDEX, rows.encode("utf-8"))
    tsv_s = time.perf_counter() - t
    t = time.perf_counter()
    ci = compact.CompactIndex.from_entries(utts, shard_of, offsets, frames, [0] * shards, source=str(store))
    ci.write(store, compact.tsv_signature(store / INDEX), shards)
    compact_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in (store / "index").iterdir() if p.suffix == ".npy")
    return {"shards": shards, "tsv_s": tsv_s, "compact_s": compact_s, "compact_bytes": size,
            "tsv_bytes": (store / INDEX).stat().st_size}


def probe(store: Path, mode: str, best_of: int = 1) -> dict:
    runs = []
    for _ in range(best_of):
        proc = subprocess.run([sys.executable, "-c", PROBE, str(store), mode], capture_output=True, text=True,
                              cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["open_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="utterances in the index")
    parser.add_argument("--per-shard", type=int, nargs=2, default=[1024, 128], metavar=("A", "B"),
                        help="utterances per shard of the two layouts compared for open time")
    add_output_args(parser)
    args = parser.parse_args(argv)
    rows, shard_rows = [], []
    t_all = time.perf_counter()
    with scratch_dir(args.work, "bench-store-index-") as work:
        for n in args.sizes:
            opened = {}
            for per_shard in args.per_shard:
                store = work / f"n{n}-p{per_shard}"
                made = make_index_store(store, n, per_shard)
                opened[per_shard] = (made, probe(store, "compact", best_of=3))
            made, res = opened[args.per_shard[0]]
            store = work / f"n{n}-p{args.per_shard[0]}"
            import shutil

            shutil.rmtree(store / "index")  # an older store: index.tsv only, read-only (built in memory)
            old = probe(store, "readonly")
            as_dict = probe(store, "dict")
            mb = 1 / 1e6
            rows.append([f"{n:,}", f"{made['tsv_bytes'] / n:.1f}", f"{made['compact_bytes'] / n:.1f}",
                         f"{res['rss_open'] / n:.1f}", f"{res['rss_lookups'] / n:.1f}", f"{res['rss_all'] / n:.1f}",
                         f"{as_dict['rss_open'] / n:.0f}", f"{res['lookup_us']:.1f}",
                         f"{res['open_s'] * 1e3:.1f}", f"{old['open_s']:.2f}", f"{as_dict['open_s']:.2f}",
                         f"{made['compact_s']:.2f}"])
            for per_shard, (m, r) in opened.items():
                shard_rows.append([f"{n:,}", f"{m['shards']:,}", f"{per_shard}", f"{r['open_s'] * 1e3:.1f}",
                                   f"{r['rss_open'] * mb:.2f}"])
    wall = time.perf_counter() - t_all
    import os

    import resource

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    body = [
        "Synthetic store index (no targets): ids like `spk00012-rec001234-seg0012345` (29 bytes), 25-500 frames per "
        "utterance. Resident = growth of VmRSS in a fresh process (memory-mapped index pages it touched count). "
        "Targets: <= 200 B per utterance resident, open time flat in the number of shards.",
        "",
        table(["utterances", "index.tsv B/utt", "compact index B/utt (disk)", "resident B/utt after open",
               "… after 10k lookups", "… every page touched", "old per-utterance dict B/utt", "lookup µs",
               "open ms (compact)", "open s (older store, built in memory)", "old dict load s",
               "finalize: compact index build+write s"], rows),
        "",
        "Open time with the compact index at two shard counts (same utterances; opening reads no shard or marker):",
        "",
        table(["utterances", "shards", "utterances/shard", "open ms", "resident MB after open"], shard_rows),
        "",
        f"Whole benchmark: {wall:.0f} s wall, {cpu:.0f} CPU-s (load average {load} on this host while it ran: figures are from a "
        "shared machine). The compact index is ~45 bytes per utterance on disk (ids padded to "
        "the longest id + int32 shard + int64 offset + int32 frames); a process holds resident only what it touched "
        "(a lookup is a binary search: ~log2(N) pages). The old reader held a Python dict of tuples: the "
        "'old per-utterance dict' column.",
    ]
    publish("store_index", "Store index at scale: bytes per utterance and open time (tools/bench/store_index.py)", body,
            write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
