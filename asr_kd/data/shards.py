"""Audio shards: a data dir packed into tar files, read back by random access (``asr-kd data shard``).

A million-hour corpus is hundreds of millions of small files; file systems and object stores serve a
few thousand large files much better. Like WebDataset and lhotse Shar, ``write_shards`` packs the
audio of a data dir into plain POSIX tar files; unlike them, each tar has an index, so a reader
seeks straight to one member (no scan of the tar), which is what the labeling pipeline's batches need::

    SHARD_DIR/
      manifest.json              written last: format, version, source data dir, shard list, counts, seconds
      shard-000000.tar           members UTT.flac (or UTT.wav), sorted by utterance id
      shard-000000.index.json    per member: utt, member, offset and size (bytes of the member's data in
                                 the tar), seconds (the duration the data dir gives -- utt2dur, segments or
                                 the header -- which labeling plans by), sample_rate (Hz), num_samples
                                 (the member's exact length), sha256; and the shard's rejects (utt, reason,
                                 seconds); written after its tar (its presence marks the shard complete)
      rejects.tsv                utt <TAB> reason, every utterance that could not be packed

What a member holds (the choice keeps the store of a shard dir identical to that of its data dir):

- a whole WAV or FLAC file (no ``segments``): its original bytes, untouched — nothing to re-encode,
  and the decoded samples are the file's;
- a segment of a recording, or another format: the samples of the span at the recording's own rate,
  as FLAC when they are integer PCM of at most 24 bits (lossless), else as 32-bit float WAV (exactly the
  float32 samples ``load_audio`` decodes from the original).

Audio is never resampled here: labeling resamples as it does for the data dir (the same function on the
same samples gives the same teacher input), and one shard dir serves teachers of any sample rate.
Every member is decoded once while packing (a whole file block by block, so a long recording is never
held in memory), with ``load_audio``'s checks (missing, unreadable, empty,
NaN/inf, multi-channel, segment out of range); a failing utterance goes to ``rejects.tsv`` and the
shard's index with the same reason labeling would give it, and labeling the shard dir carries that
reason into the store's ``rejects.tsv``: nothing is dropped silently.

Recordings stay together: the segments of one recording are in one shard (a shard closes before a
recording that would overflow ``--shard-size`` utterances or ``--shard-seconds``, so one huge
recording makes one big shard). The plan depends only on the data dir and the options, each shard is
written to ``.tmp`` files and renamed, and a rerun skips shards whose index exists (after checking that
it holds the utterances the plan puts there). Tar headers carry no time, owner or mode of the machine
(mtime 0, uid/gid 0, mode 0644): the same data dir gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import soundfile as sf

from asr_kd.atomic import atomic_write_bytes
from asr_kd.data.audio import check_file, read_samples, utterance_seconds
from asr_kd.data.datadir import AudioSource, DataDir, read_data_dir
from asr_kd.errors import AsrKdError, AudioError, AudioUnreadableError

FORMAT = "asr-kd-audio-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REJECTS = "rejects.tsv"
FLAC_SUBTYPES = {"PCM_S8": "PCM_S8", "PCM_U8": "PCM_S8", "PCM_16": "PCM_16", "PCM_24": "PCM_24"}
DEFAULT_SHARD_SIZE = 1000  # utterances per shard when neither --shard-size nor --shard-seconds is given


class ShardIntegrityError(AsrKdError):
    """An audio shard disagrees with its index (truncated tar, size or sha256 mismatch, wrong format).

    Not an ``AudioError``: the audio is fine, the copy of it is not, so labeling stops (naming the shard
    and member) instead of rejecting utterances for good; fix or rewrite the shard and rerun (it resumes)."""


def shard_name(i: int) -> str:
    return f"shard-{i:06d}"


def member_name(utt: str, ext: str) -> str:
    """Tar member name of an utterance: its id (``/`` escaped, a leading dot guarded) plus ``.flac``/``.wav``."""
    safe = utt.replace("%", "%25").replace("/", "%2F")
    if safe.startswith("."):
        safe = "%2E" + safe[1:]
    return f"{safe}.{ext}"


@dataclasses.dataclass
class ShardSummary:
    shards_written: int
    shards_skipped: int
    utterances: int
    rejects: int
    seconds: float  # audio seconds packed (all shards)
    bytes: int  # bytes of all tars
    wall_s: float
    out_dir: str

    def line(self) -> str:
        return (f"{self.out_dir}: {self.utterances} utterances ({self.seconds / 3600:.3f} h) in "
                f"{self.shards_written + self.shards_skipped} shards ({self.shards_skipped} already done), "
                f"{self.rejects} rejects, {self.bytes / 1e6:.1f} MB, wall {self.wall_s:.1f} s")


# ------------------------------------------------------------------------------------------ planning


def plan_audio_shards(data: DataDir, seconds: dict[str, float], shard_size: int | None,
                      shard_seconds: float | None) -> list[list[str]]:
    """Utterance ids per shard: recordings in id order, each recording's utterances together; a shard
    closes before a recording that would take it past ``shard_size`` utterances or ``shard_seconds``
    seconds of audio. Within a shard the ids are sorted."""
    if shard_size is not None and shard_size < 1:
        raise AsrKdError(f"data shard: --shard-size must be >= 1, got {shard_size}")
    if shard_seconds is not None and not shard_seconds > 0:
        raise AsrKdError(f"data shard: --shard-seconds must be > 0, got {shard_seconds}")
    if shard_size is None and shard_seconds is None:
        shard_size = DEFAULT_SHARD_SIZE
    by_rec: dict[str, list[str]] = {}
    for utt in data.utt_ids:
        rec = data.segments[utt].recording if data.segments is not None else utt
        by_rec.setdefault(rec, []).append(utt)
    shards: list[list[str]] = []
    cur: list[str] = []
    cur_s = 0.0
    for rec in sorted(by_rec):
        utts = by_rec[rec]
        rec_s = sum(seconds[u] for u in utts)
        full = ((shard_size is not None and len(cur) + len(utts) > shard_size)
                or (shard_seconds is not None and cur_s + rec_s > shard_seconds))
        if cur and full:
            shards.append(sorted(cur))
            cur, cur_s = [], 0.0
        cur.extend(utts)
        cur_s += rec_s
    if cur:
        shards.append(sorted(cur))
    return shards


# ------------------------------------------------------------------------------------------ writing


def encode_member(source: AudioSource, allow_pipes: bool = False) -> tuple[bytes, str, int, int]:
    """The member bytes of one utterance and ``(bytes, extension, sample_rate_hz, num_samples)``.

    Raises the ``AudioError`` that ``load_audio`` would raise for it (the reason goes to rejects)."""
    whole = source.start is None and source.end is None
    if whole and not source.is_pipe and Path(source.path).suffix.lower() in (".wav", ".flac"):
        info = check_file(source)  # decoded block by block: a long recording is never held in memory
        if info.format in ("WAV", "FLAC"):
            try:
                payload = Path(source.path).read_bytes()
            except OSError as exc:
                raise AudioUnreadableError(f"cannot read the file ({exc})", source.utt_id, source.path) from None
            return payload, info.format.lower(), int(info.samplerate), int(info.frames)
    samples, rate, info = read_samples(source, allow_pipes=allow_pipes, dtype="float32")
    buf = io.BytesIO()
    subtype = FLAC_SUBTYPES.get(info.subtype)
    if subtype is not None:
        ints, _, _ = read_samples(source, allow_pipes=allow_pipes, dtype="int32")  # exact integer PCM
        sf.write(buf, ints, rate, format="FLAC", subtype=subtype)
        ext = "flac"
    else:
        sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
        ext = "wav"
    return buf.getvalue(), ext, rate, int(samples.shape[0])


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def _write_shard(data: DataDir, index: int, utts: list[str], seconds: dict[str, float], out: Path,
                 allow_pipes: bool, on_utt=None) -> dict[str, Any]:
    """Pack one shard (tar, then its index: both via ``.tmp`` + rename); returns the index dict."""
    name = shard_name(index)
    tar_path = out / f"{name}.tar"
    tmp = out / f"{name}.tar.tmp"
    members, rejects = [], []
    with open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for utt in utts:
                src = data.source(utt)
                try:
                    payload, ext, rate, n = encode_member(src, allow_pipes)
                except AudioError as exc:
                    rejects.append({"utt": utt, "reason": f"{exc.reason}: {exc.detail}", "seconds": seconds[utt]})
                    if on_utt:
                        on_utt(0.0)
                    continue
                member = member_name(utt, ext)
                tf.addfile(_tarinfo(member, len(payload)), io.BytesIO(payload))
                # addfile wrote header(s), the data and padding to a 512-byte block: the data ends the written part
                offset = tf.offset - ((len(payload) + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                members.append({"utt": utt, "member": member, "offset": offset, "size": len(payload),
                                "seconds": seconds[utt], "sample_rate": rate, "num_samples": n,
                                "sha256": hashlib.sha256(payload).hexdigest()})
                if on_utt:
                    on_utt(n / rate)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, tar_path)
    idx = {"format": FORMAT, "format_version": FORMAT_VERSION, "shard": index, "tar": tar_path.name,
           "tar_bytes": tar_path.stat().st_size, "utts": len(members),
           "seconds": float(sum(m["num_samples"] / m["sample_rate"] for m in members)),
           "members": members, "rejects": rejects}
    atomic_write_bytes(out / f"{name}.index.json", (json.dumps(idx, separators=(",", ":")) + "\n").encode("utf-8"))
    return idx


def _read_index(path: Path) -> dict[str, Any]:
    try:
        idx = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardIntegrityError(f"{path}: unreadable shard index ({exc}); delete it and the tar to rewrite the shard") from None
    if not isinstance(idx, dict) or idx.get("format") != FORMAT:
        raise ShardIntegrityError(f"{path}: not an asr-kd audio shard index (format {idx.get('format') if isinstance(idx, dict) else None!r})")
    if idx.get("format_version", 0) > FORMAT_VERSION:
        raise ShardIntegrityError(f"{path}: shard format version {idx['format_version']} is newer than this asr-kd "
                                  f"reads ({FORMAT_VERSION}); upgrade asr-kd")
    return idx


def _index_utts(idx: dict[str, Any]) -> list[str]:
    return sorted([m["utt"] for m in idx["members"]] + [r["utt"] for r in idx["rejects"]])


def write_shards(data_dir: str | os.PathLike, out_dir: str | os.PathLike, shard_size: int | None = None,
                 shard_seconds: float | None = None, allow_pipes: bool = False, progress: bool = True) -> ShardSummary:
    """Pack the data dir ``data_dir`` into audio shards in ``out_dir`` (resumable; see the module docstring).

    ``shard_size``: at most this many utterances per shard; ``shard_seconds``: at most this many seconds
    of audio per shard (either or both; neither: ``DEFAULT_SHARD_SIZE`` utterances). A single recording
    is never split, so it may exceed either bound on its own."""
    from tqdm import tqdm

    t0 = time.time()
    data = read_data_dir(data_dir, allow_pipes=allow_pipes)
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not ((out / MANIFEST).exists() or any(out.glob("shard-*"))):
        raise AsrKdError(f"{out}: exists, is not empty and is not an audio shard dir; give a new or empty --out")
    out.mkdir(parents=True, exist_ok=True)
    seconds = {u: utterance_seconds(data, u) for u in data.utt_ids}
    plan = plan_audio_shards(data, seconds, shard_size, shard_seconds)
    done = {}
    for i, utts in enumerate(plan):
        ipath = out / f"{shard_name(i)}.index.json"
        if not ipath.is_file():
            continue
        idx = _read_index(ipath)
        tar = out / f"{shard_name(i)}.tar"
        if _index_utts(idx) != sorted(utts):
            raise AsrKdError(f"{ipath}: this shard holds other utterances than the plan for {data_dir} puts in it "
                             "(the data dir or --shard-size/--shard-seconds changed); write to a new --out dir")
        if not tar.is_file() or tar.stat().st_size != idx["tar_bytes"]:
            ipath.unlink()  # the index outlived its tar: rewrite the shard
            continue
        done[i] = idx
    stale = sorted(p.name for p in out.glob("shard-*.index.json") if int(p.name[6:12]) >= len(plan))
    if stale:
        raise AsrKdError(f"{out}: shards {stale[:3]} are beyond the {len(plan)} planned for {data_dir}; "
                         "write to a new --out dir")
    (out / MANIFEST).unlink(missing_ok=True)  # the dir is complete again only when the manifest is rewritten
    todo = [i for i in range(len(plan)) if i not in done]
    bar = tqdm(total=sum(len(plan[i]) for i in todo), desc=f"shard {out.name}", unit="utt", disable=not progress,
               dynamic_ncols=True)
    packed = [0.0]

    def on_utt(sec: float) -> None:
        packed[0] += sec
        bar.update(1)
        bar.set_postfix(hours=f"{packed[0] / 3600:.2f}")

    indexes = dict(done)
    try:
        for i in todo:
            indexes[i] = _write_shard(data, i, plan[i], seconds, out, allow_pipes, on_utt)
    finally:
        bar.close()
    shards, rejects = [], []
    for i in range(len(plan)):
        idx = indexes[i]
        shards.append({"tar": idx["tar"], "index": f"{shard_name(i)}.index.json", "utts": idx["utts"],
                       "rejects": len(idx["rejects"]), "seconds": idx["seconds"], "bytes": idx["tar_bytes"]})
        rejects.extend((r["utt"], r["reason"]) for r in idx["rejects"])
    atomic_write_bytes(out / REJECTS, "".join(f"{u}\t{' '.join(r.split())}\n" for u, r in sorted(rejects)).encode("utf-8"))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": str(Path(data_dir).resolve()),
                "shard_size": shard_size, "shard_seconds": shard_seconds,
                "utts": sum(s["utts"] for s in shards), "rejects": len(rejects),
                "seconds": float(sum(s["seconds"] for s in shards)), "bytes": sum(s["bytes"] for s in shards),
                "shards": shards}
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return ShardSummary(len(todo), len(done), manifest["utts"], len(rejects), manifest["seconds"], manifest["bytes"],
                        time.time() - t0, str(out))


# ------------------------------------------------------------------------------------------ reading


def read_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardIntegrityError(f"{path}: unreadable shard manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardIntegrityError(f"{path}: not an asr-kd audio shard manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ShardIntegrityError(f"{path}: shard format version {manifest['format_version']} is newer than this "
                                  f"asr-kd reads ({FORMAT_VERSION}); upgrade asr-kd")
    return manifest


def read_member(loc: dict[str, Any]) -> bytes:
    """The bytes of one member, by seeking to its offset (one read of header + data, no tar scan).

    Checks the member's tar header (size, and name when it fits a ustar header) and its sha256 against
    the index; any disagreement raises ``ShardIntegrityError`` naming the shard and the member."""
    tar, member, offset, size = loc["tar"], loc["member"], int(loc["offset"]), int(loc["size"])
    where = f"shard {tar}, member {member}"
    head = min(offset, tarfile.BLOCKSIZE)
    try:
        with open(tar, "rb") as fh:
            fh.seek(offset - head)
            buf = fh.read(head + size)
            file_bytes = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise ShardIntegrityError(f"{where}: cannot read the shard ({exc})") from None
    if len(buf) < head + size:
        raise ShardIntegrityError(f"{where}: the tar is truncated ({file_bytes} bytes; the index puts the member at bytes "
                                  f"{offset}..{offset + size}); rewrite the shard (asr-kd data shard) and rerun")
    if head == tarfile.BLOCKSIZE:
        try:
            ti = tarfile.TarInfo.frombuf(buf[:head], "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ShardIntegrityError(f"{where}: no tar header before byte {offset} ({exc}): the index does not match "
                                      "its tar") from None
        if ti.size != size or (len(member.encode()) <= 100 and ti.name != member):
            raise ShardIntegrityError(f"{where}: the tar header at byte {offset - head} is {ti.name!r} of {ti.size} bytes, "
                                      f"the index says {member!r} of {size} bytes: the index does not match its tar")
    data = buf[head:]
    digest = hashlib.sha256(data).hexdigest()
    if digest != loc["sha256"]:
        raise ShardIntegrityError(f"{where}: sha256 {digest[:16]}... differs from the index ({str(loc['sha256'])[:16]}...): "
                                  "the shard is corrupt; rewrite it (asr-kd data shard) and rerun")
    return data


class ShardSource:
    """Labeling rows from an audio shard dir (``asr_kd.data.sources``): one item per utterance of the
    source data dir, in the same order with the same durations, so the store equals the data dir's.

    The driver reads only the manifest and the per-shard indexes (JSON, one at a time) and checks that
    every tar is as long as its index says (a truncated copy is refused before any work); audio is read
    by the labeling workers, one member at a time. The dir may be local or on a file system every node
    mounts. Held compactly for corpora of 10^8 utterances: per utterance its id and member name (UTF-8
    blobs, ``IdTable``), shard number, offset, size, duration and raw sha256 in arrays -- about
    ``len(id) + len(member) + 76`` bytes, where a dict per item cost ~1 KB; an item is built when asked."""

    kind = "audio shards"

    def __init__(self, path: str | os.PathLike):
        from array import array

        from asr_kd.data.sources import Durations, IdTable

        root = Path(path).resolve()
        self.path = str(root)
        self.manifest = read_manifest(root)
        self._tars: list[str] = []  # per shard of the dir
        id_blob, member_blob = bytearray(), bytearray()
        id_ends, member_ends = array("q", [0]), array("q", [0])
        shard_of, offsets, sizes = array("i"), array("q"), array("q")
        seconds, digests = array("d"), bytearray()
        self._rejects: dict[int, str] = {}  # position -> reason (utterances rejected while packing: few)
        previous, previous_index = "", None
        unsorted = False
        for entry in self.manifest["shards"]:
            ipath = root / entry["index"]
            if not ipath.is_file():
                raise ShardIntegrityError(f"{ipath}: shard index listed in {root / MANIFEST} is missing")
            idx = _read_index(ipath)
            tar = root / idx["tar"]
            size = tar.stat().st_size if tar.is_file() else None
            if size != idx["tar_bytes"]:
                got = "missing" if size is None else f"{size} bytes"
                raise ShardIntegrityError(f"{tar}: {got}, its index {ipath.name} says {idx['tar_bytes']} bytes "
                                          "(truncated or replaced copy); rewrite the shard (asr-kd data shard) and rerun")
            shard_no = len(self._tars)
            self._tars.append(str(tar))
            rows = [(m["utt"], m) for m in idx["members"]] + [(r["utt"], r) for r in idx["rejects"]]
            rows.sort(key=lambda r: r[0])
            for utt, row in rows:
                if shard_of and utt == previous:
                    raise ShardIntegrityError(f"{ipath}: utterance {utt!r} is also in {previous_index.name if previous_index else ipath.name} "
                                              f"of {self.path}")
                unsorted |= bool(shard_of) and utt < previous
                previous, previous_index = utt, ipath  # the last id seen: order and duplicate checks
                id_blob += utt.encode("utf-8")
                id_ends.append(len(id_blob))
                shard_of.append(shard_no)
                seconds.append(float(row["seconds"]))
                if "member" in row:
                    member_blob += row["member"].encode("utf-8")
                    offsets.append(int(row["offset"]))
                    sizes.append(int(row["size"]))
                    digests += bytes.fromhex(row["sha256"])
                else:  # a reject of the packing: its reason goes to the store's rejects.tsv when labeled
                    self._rejects[len(shard_of) - 1] = str(row["reason"])
                    offsets.append(-1)
                    sizes.append(0)
                    digests += bytes(32)
                member_ends.append(len(member_blob))
        n = len(id_ends) - 1
        if n != self.manifest["utts"] + self.manifest["rejects"]:
            raise ShardIntegrityError(f"{root / MANIFEST}: lists {self.manifest['utts']} utterances and "
                                      f"{self.manifest['rejects']} rejects, the indexes {n} in all")
        # views of the buffers built above, not copies (a copy would double the peak memory of a big dir)
        self._ids = IdTable(id_blob, np.frombuffer(id_ends, dtype=np.int64))
        self._members = IdTable(member_blob, np.frombuffer(member_ends, dtype=np.int64))
        self._shard_of = np.frombuffer(shard_of, dtype=np.int32)
        self._offsets = np.frombuffer(offsets, dtype=np.int64)
        self._sizes = np.frombuffer(sizes, dtype=np.int64)
        self._digests = np.frombuffer(digests, dtype=np.uint8).reshape(n, 32)
        durations = np.frombuffer(seconds, dtype=np.float64)
        if unsorted:  # shards written by asr-kd data shard follow the data dir's sorted order; others are sorted here
            self._sort(durations)
        else:
            self._durations = Durations(self._ids, durations)

    def _sort(self, durations: np.ndarray) -> None:
        """Reorder everything by utterance id (shard dirs whose shards do not follow the id order)."""
        from asr_kd.data.sources import Durations, IdTable

        order = sorted(range(len(self._ids)), key=self._ids.__getitem__)
        for a, b in zip(order, order[1:]):
            if self._ids[a] == self._ids[b]:
                raise ShardIntegrityError(f"utterance {self._ids[a]!r} is in two shards of {self.path} "
                                          f"({Path(self._tars[self._shard_of[a]]).name}, {Path(self._tars[self._shard_of[b]]).name})")
        self._ids = IdTable.build(self._ids[i] for i in order)
        self._members = IdTable.build(self._members[i] for i in order)
        self._shard_of, self._offsets, self._sizes, self._digests = (
            self._shard_of[order], self._offsets[order], self._sizes[order], self._digests[order])
        position = {old: new for new, old in enumerate(order)}
        self._rejects = {position[i]: reason for i, reason in self._rejects.items()}
        self._durations = Durations(self._ids, durations[order])

    @property
    def utt_ids(self) -> "Sequence[str]":
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def seconds(self) -> "Mapping[str, float]":
        return self._durations

    def item(self, utt: str) -> list:
        return self.item_at(self._ids.index(utt), utt)

    def item_at(self, i: int, utt: str) -> list:
        """The item of the ``i``-th utterance (id ``utt``): where its member is, or its packing reject."""
        if i in self._rejects:
            return [utt, None, None, None, {"error": self._rejects[i]}]
        tar, member = self._tars[int(self._shard_of[i])], self._members[i]
        return [utt, f"{tar}:{member}", None, None, {"tar": tar, "member": member, "offset": int(self._offsets[i]),
                                                      "size": int(self._sizes[i]), "sha256": self._digests[i].tobytes().hex()}]

    @property
    def nbytes(self) -> int:
        """Bytes of the per-utterance arrays (ids, member names, shard numbers, offsets, sizes, sha256, durations)."""
        return (self._ids.nbytes + self._members.nbytes + self._shard_of.nbytes + self._offsets.nbytes + self._sizes.nbytes
                + self._digests.nbytes + self._durations.array.nbytes)


def member_array(loc: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Decode one member (tools, tests): float32 samples and the sample rate in Hz."""
    samples, rate = sf.read(io.BytesIO(read_member(loc)), dtype="float32")
    return samples, int(rate)
