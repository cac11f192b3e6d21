"""Feature cache: fbank computed once per data dir, reused by every model trained on it.

``asr-kd data fbank DATA`` writes Kaldi's layout, so Kaldi/ESPnet users read it as they read their own::

    DATA/feats.scp              utt  DATA/fbank/feats.ark:OFFSET     (kaldi-io / kaldiio readable)
    DATA/fbank/feats.ark        float32 matrices (frames x num_mel_bins), raw log-mel (no CMVN)
    DATA/fbank/cache.json       the fbank config, and per utterance the audio it was computed from
    DATA/fbank/rejects.tsv      utterances whose audio could not be read, with the reason

The cache is keyed by audio and config: an utterance's entry is used only while its audio identity
(path, time span, file size and modification time) is unchanged, and the whole cache only for the
fbank config it was made with (and never with ``dither`` > 0, which must draw new noise each time).
Anything else is computed from audio as before, so a stale cache costs time, never correctness.

Why kaldi-io and not kaldiio or numpy files: DESIGN.md chose kaldi-io for Kaldi interop; one ark per
data dir keeps the file count flat (a million utterances are one file, not a million).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr_kd.data.audio import load_audio
from asr_kd.data.datadir import AudioSource, read_data_dir
from asr_kd.data.features import Fbank, FbankConfig
from asr_kd.errors import AsrKdError, AudioError

log = logging.getLogger(__name__)

CACHE_DIR = "fbank"
FORMAT_VERSION = 1


def _kaldi_io():
    from asr_kd.targets.kaldi import _kaldi_io as load  # one place imports kaldi-io without its banner

    return load()


def audio_identity(source: AudioSource) -> str:
    """What an utterance's features were computed from: file, span, size and mtime (ns).

    A file that cannot be stat'ed (a pipe command, a vanished file) has no identity: never cached."""
    try:
        st = os.stat(source.path)
    except OSError:
        return ""
    return f"{os.path.abspath(source.path)}|{source.start}|{source.end}|{st.st_size}|{st.st_mtime_ns}"


def _config_key(config: FbankConfig) -> dict:
    return config.model_dump(mode="json")


@dataclass
class CacheSummary:
    cached: int
    rejects: int
    frames: int
    path: Path


def build_feature_cache(data_dir: str | os.PathLike, config: FbankConfig | None = None, progress: bool = True,
                        allow_pipes: bool = False) -> CacheSummary:
    """Compute fbank for every utterance of ``data_dir`` into its cache (replacing an older one)."""
    config = config or FbankConfig()
    if config.dither > 0:
        raise AsrKdError(f"fbank dither {config.dither} draws new noise for every use; a feature cache would freeze it. "
                         "Cache features only with dither: 0")
    data_dir = Path(data_dir)
    data = read_data_dir(data_dir, allow_pipes=allow_pipes)
    out = data_dir / CACHE_DIR
    out.mkdir(exist_ok=True)
    fbank = Fbank(config)
    ark_tmp, scp_tmp = out / "feats.ark.tmp", data_dir / "feats.scp.tmp"
    ark_final = out / "feats.ark"
    identities: dict[str, str] = {}
    rejects: list[tuple[str, str]] = []
    frames = 0
    kaldi_io = _kaldi_io()
    with open(ark_tmp, "wb") as ark, open(scp_tmp, "w", encoding="utf-8") as scp:
        for utt in tqdm(data.utt_ids, desc=f"fbank {data_dir.name}", unit="utt", disable=not progress, dynamic_ncols=True):
            source = data.source(utt)
            try:
                wave = load_audio(source, sample_rate=config.sample_rate, allow_pipes=allow_pipes)
            except AudioError as exc:
                rejects.append((utt, f"{exc.reason}: {exc.detail}"))
                continue
            with torch.no_grad():
                feats, lens = fbank(wave.unsqueeze(0), torch.tensor([wave.numel()]))
            mat = feats[0, : int(lens[0])].numpy().astype(np.float32)
            start = ark.tell()
            kaldi_io.write_mat(ark, mat, key=utt)
            scp.write(f"{utt} {ark_final.resolve()}:{start + len(utt) + 1}\n")
            identities[utt] = audio_identity(source)
            frames += mat.shape[0]
    os.replace(ark_tmp, ark_final)
    os.replace(scp_tmp, data_dir / "feats.scp")
    (out / "rejects.tsv").write_text("".join(f"{u}\t{r}\n" for u, r in rejects), encoding="utf-8")
    meta = {"format_version": FORMAT_VERSION, "fbank": _config_key(config), "audio": identities}
    tmp = out / "cache.json.tmp"
    tmp.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    os.replace(tmp, out / "cache.json")  # written last: a half-built cache has no cache.json
    return CacheSummary(len(identities), len(rejects), frames, out)


def carry_feature_cache(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, utt_ids: list[str]) -> int:
    """Give the data dir ``dst_dir`` (a subset of ``src_dir``) the cache entries of its utterances: its
    own ``feats.scp`` and ``fbank/cache.json``, pointing into ``src_dir``'s ark (no features copied).
    Returns the number of entries carried; 0 when ``src_dir`` has no complete cache."""
    src, dst = Path(src_dir), Path(dst_dir)
    meta_path, scp_path = src / CACHE_DIR / "cache.json", src / "feats.scp"
    if not meta_path.is_file() or not scp_path.is_file():
        return 0
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    keep = set(utt_ids)
    lines = [line for line in scp_path.read_text(encoding="utf-8").splitlines() if line.partition(" ")[0] in keep]
    audio = {u: ident for u, ident in meta.get("audio", {}).items() if u in keep}
    (dst / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    tmp = dst / "feats.scp.tmp"
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, dst / "feats.scp")
    tmp = dst / CACHE_DIR / "cache.json.tmp"
    tmp.write_text(json.dumps(meta | {"audio": audio, "carried_from": str(src.resolve())}) + "\n", encoding="utf-8")
    os.replace(tmp, dst / CACHE_DIR / "cache.json")  # last, as build_feature_cache
    return len(lines)


class FeatureCache:
    """Read side: ``get(utt, source)`` returns the cached (frames, num_mel_bins) float32 features or None."""

    def __init__(self, data_dir: Path, scp: dict[str, str], identities: dict[str, str]):
        self.data_dir = data_dir
        self.scp = scp
        self.identities = identities

    @classmethod
    def open(cls, data_dir: str | os.PathLike, config: FbankConfig) -> "FeatureCache | None":
        """The data dir's cache if it exists and was made with ``config``; None (and a log line) otherwise."""
        data_dir = Path(data_dir)
        meta_path = data_dir / CACHE_DIR / "cache.json"
        scp_path = data_dir / "feats.scp"
        if not meta_path.exists() or not scp_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s: unreadable feature cache (%s); computing features from audio", meta_path, exc)
            return None
        if meta.get("format_version") != FORMAT_VERSION:
            log.warning("%s: feature cache format %s is not %s; computing features from audio (rebuild it with "
                        "'asr-kd data fbank %s')", meta_path, meta.get("format_version"), FORMAT_VERSION, data_dir)
            return None
        if config.dither > 0:
            return None
        if meta.get("fbank") != _config_key(config):
            log.warning("%s: feature cache was made with another fbank config; computing features from audio "
                        "(rebuild it with 'asr-kd data fbank %s')", data_dir, data_dir)
            return None
        scp = {}
        for line in scp_path.read_text(encoding="utf-8").splitlines():
            utt, _, where = line.partition(" ")
            if where:
                scp[utt] = where
        return cls(data_dir, scp, meta.get("audio", {}))

    def get(self, utt: str, source: AudioSource) -> np.ndarray | None:
        where = self.scp.get(utt)
        if where is None:
            return None
        identity = self.identities.get(utt)
        if not identity or identity != audio_identity(source):
            return None  # the audio changed since the cache was built (or was never cacheable)
        try:
            return np.array(_kaldi_io().read_mat(where))  # a writable copy
        except Exception as exc:  # noqa: BLE001 - kaldi-io raises several types for a damaged ark
            # kaldi-io raises bare exceptions with no message for a truncated ark (e.g. struct.error or
            # an empty ValueError): name the exception, the entry and its ark so the reason is never empty
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} reading {where}"
            log.warning("%s: cached features of %s unreadable (%s); computing them from audio", self.data_dir, utt, reason)
            return None


__all__ = ["CACHE_DIR", "CacheSummary", "FeatureCache", "audio_identity", "build_feature_cache", "carry_feature_cache"]
