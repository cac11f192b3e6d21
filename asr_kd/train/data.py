"""Training input: utterance tables, rejects, and a DataLoader that yields padded fbank batches.

Audio is read and fbank computed in DataLoader worker processes (``batch.num_workers``), one planned
batch per item, so the training step never waits on decoding when a worker is free. A data dir with a
feature cache (``asr-kd data fbank``, see ``asr_kd.data.feature_cache``) made with the training fbank
config serves its utterances' features from the cache while their audio is unchanged; everything
else is computed from audio on the fly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from asr_kd.atomic import atomic_write_bytes
from asr_kd.data.audio import audio_duration, load_audio
from asr_kd.data.datadir import DataDir, read_data_dir
from asr_kd.data.feature_cache import FeatureCache
from asr_kd.data.features import Fbank, FbankConfig
from asr_kd.data.units import Tokenizer, normalize_text
from asr_kd.errors import AsrKdError, AudioError, DataDirError
from asr_kd.train.batching import BatchPlanItem

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Utterance:
    """What the trainer knows of one utterance before reading its audio."""

    utt_id: str
    data: DataDir
    frames: int  # 10 ms fbank frames (Kaldi snip_edges rule)
    tokens: list[int] | None  # None when unlabeled


@dataclasses.dataclass
class Batch:
    utt_ids: list[str]
    feats: torch.Tensor  # (B, T, F) log-mel, not yet normalized
    feat_lens: torch.Tensor  # (B,) 10 ms frames
    tokens: list[list[int] | None]
    source: str  # "labeled" | "unlabeled" | "dev"
    rejects: list[tuple[str, str]]  # (utt_id, reason) found while reading this batch


class UtteranceTable:
    """Utterances of several data dirs with lengths and tokens; bad ones go to ``rejects``."""

    def __init__(self) -> None:
        self.utts: dict[str, Utterance] = {}
        self.dirs: list[DataDir] = []
        self.rejects: list[tuple[str, str]] = []
        self.caches: dict[int, FeatureCache] = {}  # id(DataDir) -> its feature cache, when usable

    def add_dir(
        self,
        path: str,
        fbank: FbankConfig,
        tokenizer: Tokenizer | None,
        need_text: bool,
        min_seconds: float,
        max_seconds: float,
        allow_pipes: bool = False,
        subsampling: int | None = None,
    ) -> DataDir:
        """Add the utterances of the data dir ``path``; unusable ones go to ``rejects`` with a reason.

        With ``subsampling`` (input frames per model output frame) a labeled utterance whose
        transcript cannot be aligned by CTC to its output frames (``ctc_min_frames``) is rejected up
        front: CTC would give it an infinite loss that ``zero_infinity`` silently turns into nothing.
        """
        data = read_data_dir(path, allow_pipes=allow_pipes)
        if need_text and data.text is None:
            raise DataDirError("this data dir has no 'text' but is listed as labeled (data.train/data.dev)", path)
        self.dirs.append(data)
        cache = FeatureCache.open(path, fbank)
        if cache is not None:
            self.caches[id(data)] = cache
            log.info("%s: features from its cache (%d utterances)", path, len(cache.scp))
        for utt in data.utt_ids:
            if utt in self.utts:
                raise DataDirError(f"utterance id {utt!r} occurs in two training data dirs; ids must be unique", path)
            dur = data.duration(utt)
            if dur is None:
                try:
                    dur = audio_duration(data.source(utt).path, allow_pipes) if data.segments is None else None
                except AudioError as exc:
                    self.rejects.append((utt, f"{exc.reason}: {exc.detail}"))
                    continue
            if dur is None or dur < min_seconds or dur > max_seconds:
                self.rejects.append((utt, f"duration {dur} s outside [{min_seconds}, {max_seconds}] (data.min_seconds/max_seconds)"))
                continue
            tokens = None
            if need_text and tokenizer is not None:
                tokens = tokenizer.encode(normalize_text(data.text[utt]))
                if not tokens:
                    self.rejects.append((utt, "transcript is empty after normalization"))
                    continue
            frames = fbank.num_frames(int(round(dur * fbank.sample_rate)))
            if tokens is not None and subsampling:
                need, have = ctc_min_frames(tokens), frames // subsampling
                if need > have:
                    self.rejects.append((utt, f"unalignable: {len(tokens)} labels need {need} output frames "
                                              f"(with a blank between repeated labels) but {dur:.2f} s gives {have} "
                                              f"frames of {10 * subsampling} ms; use 20 ms frames (model.subsampling: 2) "
                                              "or larger units (units.kind: bpe)"))
                    continue
            self.utts[utt] = Utterance(utt, data, frames, tokens)
        return data

    def lengths(self, utt_ids: list[str] | None = None) -> dict[str, int]:
        ids = self.utts.keys() if utt_ids is None else utt_ids
        return {u: self.utts[u].frames for u in ids}


def ctc_min_frames(tokens: list[int]) -> int:
    """Fewest output frames CTC needs for ``tokens``: one per label plus a blank between equal neighbours."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


def write_rejects(path: Path, rejects: list[tuple[str, str]]) -> None:
    """Append-or-create ``rejects.tsv`` (utt, reason), keeping earlier lines (resume-safe); replaced
    atomically (``asr_kd.atomic``). Rank 0 is its only writer under DDP."""
    if not rejects:
        return
    seen: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            utt, _, reason = line.partition("\t")
            seen[utt] = reason
    for utt, reason in rejects:
        seen[utt] = reason
    atomic_write_bytes(path, "".join(f"{u}\t{r}\n" for u, r in sorted(seen.items())).encode("utf-8"))


class _PlannedBatches(Dataset):
    """Map-style dataset: item ``i`` is the ``i``-th planned batch, loaded and featurized."""

    def __init__(self, table: UtteranceTable, plan: list[tuple[str, BatchPlanItem]], fbank: FbankConfig, allow_pipes: bool):
        self.table = table
        self.plan = plan
        self.fbank_config = fbank
        self.allow_pipes = allow_pipes
        self._fbank: Fbank | None = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> Batch:
        if self._fbank is None:
            torch.set_num_threads(1)
            self._fbank = Fbank(self.fbank_config)
        source, item = self.plan[index]
        feats: list[torch.Tensor | None] = []
        waves, wave_rows, utt_ids, tokens, rejects = [], [], [], [], []
        for utt in item.utt_ids:
            u = self.table.utts[utt]
            cache = self.table.caches.get(id(u.data))
            audio = u.data.source(utt)
            cached = cache.get(utt, audio) if cache is not None else None
            if cached is None:
                try:
                    wave = load_audio(audio, sample_rate=self.fbank_config.sample_rate, allow_pipes=self.allow_pipes)
                except AudioError as exc:
                    rejects.append((utt, f"{exc.reason}: {exc.detail}"))
                    continue
                wave_rows.append(len(feats))
                waves.append(wave)
                feats.append(None)
            else:
                feats.append(torch.from_numpy(cached))
            utt_ids.append(utt)
            tokens.append(u.tokens)
        if not utt_ids:
            return Batch([], torch.zeros(0, 0, self.fbank_config.num_mel_bins), torch.zeros(0, dtype=torch.long), [], source, rejects)
        if waves:  # fbank of the uncached utterances, in one padded call
            lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
            padded = torch.zeros(len(waves), int(lengths.max()))
            for i, w in enumerate(waves):
                padded[i, : w.numel()] = w
            with torch.no_grad():
                computed, computed_lens = self._fbank(padded, lengths)
            for i, row in enumerate(wave_rows):
                feats[row] = computed[i, : int(computed_lens[i])]
        feat_lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        batch_feats = torch.zeros(len(feats), int(feat_lens.max()), self.fbank_config.num_mel_bins)
        for i, f in enumerate(feats):
            batch_feats[i, : f.shape[0]] = f
        return Batch(utt_ids, batch_feats, feat_lens, tokens, source, rejects)


def make_loader(table: UtteranceTable, plan: list[tuple[str, BatchPlanItem]], fbank: FbankConfig, num_workers: int, allow_pipes: bool = False) -> DataLoader:
    """A DataLoader over planned batches, in plan order (the plan already holds the shuffle)."""
    return DataLoader(
        _PlannedBatches(table, plan, fbank, allow_pipes),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
        multiprocessing_context="fork" if num_workers > 0 else None,
        # a private generator: creating an iterator must not draw from the global RNG, or a resumed
        # run (which creates its iterator at another point) would get different dropout masks
        generator=torch.Generator().manual_seed(0),
    )


__all__ = ["Utterance", "Batch", "UtteranceTable", "ctc_min_frames", "make_loader", "write_rejects", "AsrKdError"]
