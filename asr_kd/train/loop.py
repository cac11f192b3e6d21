"""The training loop shared by teachers, baseline students and distilled students.

``train(config, out_dir, resume)`` is the one entry point (``asr-kd train`` calls it). It writes a
complete model dir (see ``asr_kd.models.model_dir``) plus the experiment record: ``config.yaml``
(resolved), ``env.json`` (git commit, versions, command), ``metrics.csv``, ``tb/``,
``training_curve.png``, ``rejects.tsv``, ``oov.tsv`` and ``checkpoints/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr_kd.config import dump_config
from asr_kd.data.cmvn import GlobalCMVN, compute_global_cmvn
from asr_kd.data.datadir import combine_data_dirs, read_data_dir
from asr_kd.data.specaug import SpecAugment
from asr_kd.data.units import build_tokenizer, find_oov, normalize_text
from asr_kd.devices import resolve_device
from asr_kd.errors import AsrKdError, StoreError
from asr_kd.models import build_model
from asr_kd.models.model_dir import save_model_dir
from asr_kd.provenance import environment_info
from asr_kd.train.batching import BatchPlanItem, mix_batches, plan_batches
from asr_kd.train.checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from asr_kd.train.config import TrainConfig
from asr_kd.train.data import Batch, UtteranceTable, ctc_min_frames, make_loader, write_rejects
from asr_kd.train.dev_scoring import DevScorer
from asr_kd.train.schedule import lr_lambda
from asr_kd.train.losses import ctc_loss, epoch_loss_weights, kd_loss, pad_targets
from asr_kd.train.metrics import PROGRESS_FILE, MetricsLog, plot_training_curve, write_progress

log = logging.getLogger(__name__)

KILL_HOOK_ENV = "ASR_KD_TEST_KILL_AFTER_STEP"  # test hook: SIGKILL ourselves after this step


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    epochs: int
    dev_wer: float | None
    params: int
    wall_s: float


class Trainer:
    def __init__(self, config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
                 rank: int = 0, world_size: int = 1, command: list[str] | None = None):
        self.config = config
        self.command = command
        self.out = Path(out_dir)
        self.resume = resume
        self.rank = rank
        self.world_size = world_size
        self.is_main = rank == 0  # only rank 0 writes files; every rank computes the same setup
        self.progress = progress and self.is_main
        self.ckpt = CheckpointManager(self.out, config.train.keep_last_checkpoints, config.train.keep_best, 1)
        self.loss_weights = {"ctc": 1.0, "kd": 0.0, "pseudo": 0.0}  # per batch; set per epoch by _plan
        self.pseudo_tokens: dict[str, list[int]] = {}  # teacher 1-best token ids (kd.pseudo_ctc_weight > 0)
        self.average: dict[str, torch.Tensor] | None = None  # running sum of weights (final=average)
        self.average_count = 0
        self.average_step = -1  # the last step added to the average

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        c = self.config
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        if not self.resume and self.ckpt.latest() is not None:
            raise AsrKdError(f"{self.out} already holds checkpoints; pass --resume to continue, or choose another --out")
        random.seed(c.train.seed)
        np.random.seed(c.train.seed)
        torch.manual_seed(c.train.seed)
        self.device = resolve_device(c.train.device)  # never a silent CPU run on a GPU machine
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            dump_config(c, self.out / "config.yaml")
            info = environment_info(self.command) | {"world_size": self.world_size}
            (self.out / "env.json").write_text(json.dumps(info, indent=2) + "\n")

        # units
        self.table = UtteranceTable()
        labeled_dirs = [read_data_dir(p, allow_pipes=c.data.allow_pipes) for p in c.data.train]
        texts = {u: t for d in labeled_dirs for u, t in (d.text or {}).items()}
        self.tokenizer = build_tokenizer(c.units.from_model, c.units.kind, c.units.bpe_vocab_size, texts, self.out)
        oov = find_oov({u: normalize_text(t) for u, t in texts.items()}, self.tokenizer)
        if oov and self.is_main:
            with open(self.out / "oov.tsv", "w", encoding="utf-8") as fh:
                for ch, utts in sorted(oov.items()):
                    fh.write(f"{ch}\t{len(utts)}\t{' '.join(utts[:20])}\n")
            log.warning("%d character(s) outside the units occur in the transcripts (mapped to <unk>): %s; see %s",
                        len(oov), " ".join(sorted(oov))[:200], self.out / "oov.tsv")

        d = c.data
        for p in d.train:
            self.table.add_dir(p, c.fbank, self.tokenizer, True, d.min_seconds, d.max_seconds, d.allow_pipes,
                               subsampling=c.model.subsampling)
        self.labeled_ids = sorted(self.table.utts)
        for p in d.unlabeled:
            self.table.add_dir(p, c.fbank, None, False, d.min_seconds, d.max_seconds, d.allow_pipes)
        self.unlabeled_ids = sorted(set(self.table.utts) - set(self.labeled_ids))
        self._pending_rejects: list[tuple[str, str]] = []  # this rank's audio rejects since the last gather
        self.dev = None
        if d.dev:
            self.dev = DevScorer(d.dev, c.fbank, self.tokenizer, 10 * d.max_seconds, d.allow_pipes, self.out, self.is_main)
        if self.is_main:
            write_rejects(self.out / "rejects.tsv", self.table.rejects)
        if self.table.rejects and self.is_main:
            log.warning("%d training utterance(s) excluded; reasons in %s", len(self.table.rejects), self.out / "rejects.tsv")
        if not self.table.utts:
            raise AsrKdError("no usable training utterances (all rejected); see rejects.tsv")

        # model; soft targets (checked against the model's units and frame rate); CMVN
        self.model = build_model(c.model, self.tokenizer.vocab_size).to(self.device)
        self.store = None
        if c.kd is not None:
            self._open_store()
        resuming = self.resume and self.ckpt.latest() is not None
        if resuming and (self.out / "cmvn.json").exists():
            self.cmvn = GlobalCMVN.load(self.out / "cmvn.json")
        elif c.train.init_from:
            # the weights were trained on this normalization: keep it rather than re-estimate
            self.cmvn = self._init_from(c.train.init_from, load_weights=not resuming)
            if self.is_main:
                self.cmvn.save(self.out / "cmvn.json")
        else:
            train_data = combine_data_dirs(self.table.dirs).subset(sorted(self.table.utts))
            self.cmvn = compute_global_cmvn(train_data, c.fbank, max_utts=d.cmvn_max_utts, seed=c.train.seed, progress=self.progress)
            if self.is_main:
                self.cmvn.save(self.out / "cmvn.json")
        self.cmvn = self.cmvn.to(self.device)
        self.specaug = SpecAugment(c.specaug, seed=c.train.seed) if c.specaug is not None else None

        self.core = self.model  # the unwrapped model: state_dict, evaluation, saving
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.core, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.optim.lr, betas=c.optim.betas, weight_decay=c.optim.weight_decay)
        self.batches_per_epoch = len(self._plan(0))
        self.total_steps = c.train.max_steps or self.batches_per_epoch * c.train.max_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(c, self.total_steps))
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        if self.resume:
            self._restore()

    def _init_from(self, model_dir: str, load_weights: bool) -> GlobalCMVN:
        """Start from the weights of ``model_dir`` (``train.init_from``); return its CMVN.

        The model config, units and fbank config must equal this run's: a weight copy between different
        architectures or unit sets would load silently wrong or not at all. When resuming, the
        checkpoint's weights win and only the CMVN is taken.
        """
        from asr_kd.models.model_dir import load_model_dir

        c = self.config
        src = load_model_dir(model_dir)
        differences = []
        theirs, ours = src.model_config.model_dump(mode="json"), c.model.model_dump(mode="json")
        keys = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if keys:
            differences.append("model " + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in keys))
        if src.tokenizer.units_hash() != self.tokenizer.units_hash():
            differences.append(f"units {src.tokenizer!r} there, {self.tokenizer!r} here (set units.from_model={model_dir})")
        if src.fbank_config.model_dump(mode="json") != c.fbank.model_dump(mode="json"):
            differences.append("fbank settings differ")
        if differences:
            raise AsrKdError(f"train.init_from={model_dir}: cannot start from this model dir: " + "; ".join(differences)
                             + "; make this config's model/units/fbank sections equal to the model dir's (its model.yaml)")
        if load_weights:
            self.model.load_state_dict(src.model.state_dict())
            log.info("initialized from %s (fingerprint %s)", model_dir, src.fingerprint)
        return src.cmvn

    def _open_store(self) -> None:
        """Open ``kd.store`` (one store or a list, ``asr_kd.targets.storeset``) and check it against the
        model and the data. Nothing here reads shard bytes: opening maps the compact indexes, and the
        damage check is sizes only (one stat per shard, on rank 0). A bit flip that keeps a shard's size
        is caught when a reader first opens that shard (v2 shards are sha256-checked then) and by
        ``asr-kd targets verify``, which hashes every shard and is the step to run after copying a store."""
        from asr_kd.targets.meta import check_compatible
        from asr_kd.targets.storeset import StoreSet

        c = self.config
        where = c.kd.store_label
        self.store = StoreSet(c.kd.stores)
        damaged = self.store.size_problems() if self.is_main else []
        if damaged:
            raise StoreError(f"{where}: the soft-target store is damaged ({len(damaged)} problem(s)); "
                             "'asr-kd targets verify' lists them:\n  " + "\n  ".join(damaged[:20]))
        meta = self.store.meta
        notes = check_compatible(meta, self.tokenizer.units_hash(), self.model.frame_shift_ms, self.tokenizer.vocab_size,
                                 where=f"kd.store {where}", fbank=c.fbank.model_dump(mode="json"))
        if notes and self.is_main:
            log.warning("the student's features differ from the teacher's (frames still align): %s", "; ".join(notes))
        if c.units.from_model:
            from asr_kd.targets.meta import teacher_mismatch

            other = teacher_mismatch(meta, c.units.from_model, where=f"kd.store {where}")
            if other and not c.kd.allow_other_teacher:
                raise StoreError(other)
            if other and self.is_main:
                log.warning("%s (allowed by kd.allow_other_teacher)", other)
        if abs(meta.temperature - c.kd.temperature) > 1e-6:
            raise StoreError(f"{where}: targets were made at temperature {meta.temperature} but kd.temperature is "
                             f"{c.kd.temperature}; set kd.temperature={meta.temperature} or relabel")
        store_rejects = self.store.rejects()
        missing = [u for u in self.unlabeled_ids if u not in self.store]
        excused = [u for u in missing if u in store_rejects]
        unexplained = [u for u in missing if u not in store_rejects]
        if unexplained:
            raise StoreError(f"{where}: {len(unexplained)} unlabeled utterance(s) have no soft targets and are not "
                             f"listed as teacher rejects, e.g. {unexplained[:5]}; label them with 'asr-kd label' (it resumes)"
                             + ("" if len(c.kd.stores) > 1 else "; data added since the store was made: label it into a "
                                "new store and list both, kd.store=[OLD,NEW]"))
        if excused:
            self.table.rejects.extend((u, f"teacher reject: {store_rejects[u]}") for u in excused)
            for u in excused:
                del self.table.utts[u]
            excused_set = set(excused)
            self.unlabeled_ids = [u for u in self.unlabeled_ids if u not in excused_set]
            if self.is_main:  # one writer: every rank builds the same table
                write_rejects(self.out / "rejects.tsv", self.table.rejects)
        if c.kd.pseudo_ctc_weight > 0:
            self._load_pseudo_transcripts()

    def _load_pseudo_transcripts(self) -> None:
        """Token ids of the teacher's 1-best (``text.pseudo`` of each store) for the unlabeled utterances;
        an empty or unalignable pseudo transcript gets no pseudo-CTC term (counted in the log, never an error)."""
        c = self.config
        paths = self.store.pseudo_paths()
        for path in paths:
            if not path.exists():
                raise StoreError(f"{path} is missing but kd.pseudo_ctc_weight={c.kd.pseudo_ctc_weight}; relabel with "
                                 "'asr-kd label' (it writes text.pseudo) or set kd.pseudo_ctc_weight=0")
        wanted = set(self.unlabeled_ids)
        skipped = 0
        for path in paths:
            for line in path.read_text(encoding="utf-8").splitlines():
                utt, _, text = line.partition(" ")
                if utt not in wanted:
                    continue
                tokens = self.tokenizer.encode(normalize_text(text))
                if not tokens or ctc_min_frames(tokens) > self.table.utts[utt].frames // c.model.subsampling:
                    skipped += 1
                    continue
                self.pseudo_tokens[utt] = tokens
        log.info("pseudo-CTC: teacher 1-best for %d of %d unlabeled utterances (%d empty or unalignable)",
                 len(self.pseudo_tokens), len(self.unlabeled_ids), skipped)

    def _restore(self) -> None:
        path = self.ckpt.latest()
        if path is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", self.ckpt.dir)
            return
        state = load_checkpoint(path)
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        own = state
        ranks = state.get("rank_rng")
        if self.world_size > 1:
            if ranks is not None and len(ranks) == self.world_size:
                own = ranks[self.rank]
            elif self.is_main:
                log.warning("resuming %d workers from a checkpoint of %s: every rank continues from rank 0's random "
                            "state (dropout/SpecAugment draws differ from an uninterrupted run)", self.world_size,
                            f"{len(ranks)} workers" if ranks else "one process")
        set_rng_state(own["rng"])
        if self.specaug is not None and "specaug_rng" in own:
            self.specaug.generator.set_state(own["specaug_rng"])
        if state.get("average") is not None:
            self.average, self.average_count = state["average"], int(state["average_count"])
            self.average_step = int(state["average_step"])
        log.info("resumed from %s (epoch %d, step %d, batch %d of the epoch)", path.name, self.epoch, self.step, self.batch_in_epoch)

    def _rank_rng_states(self) -> list[dict]:
        """The random-number state of every rank (dropout masks, SpecAugment), gathered on all ranks: a
        collective under DDP, so every rank calls it at the same step. Each rank draws its own stream after
        the first step (its batches differ), so an exact resume restores each rank's own state."""
        own = {"rng": rng_state()}
        if self.specaug is not None:
            own["specaug_rng"] = self.specaug.generator.get_state()
        pending, self._pending_rejects = self._pending_rejects, []
        if self.world_size == 1:
            self._record_rejects(pending)
            return [own]
        # the same collective carries every rank's new audio rejects to rank 0, the one writer of rejects.tsv
        gathered: list = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, {"state": own, "rejects": pending})
        self._record_rejects([r for g in gathered for r in g["rejects"]])
        return [g["state"] for g in gathered]

    def _record_rejects(self, rejects: list[tuple[str, str]]) -> None:
        """Rank 0 appends audio rejects met while training (every rank's) to ``rejects.tsv``."""
        if rejects and self.is_main:
            write_rejects(self.out / "rejects.tsv", rejects)

    def _state(self, rank_rng: list[dict]) -> dict:
        s = {
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rank_rng[0]["rng"],
        }
        if self.specaug is not None:
            s["specaug_rng"] = rank_rng[0]["specaug_rng"]
        if self.world_size > 1:
            s["rank_rng"] = rank_rng
        if self.average is not None:
            s["average"], s["average_count"], s["average_step"] = self.average, self.average_count, self.average_step
        return s

    # ------------------------------------------------------------------ weight averaging
    def _average_start(self) -> int:
        """First optimizer step whose weights enter the average: the last ``average_share`` of the run."""
        return max(1, self.total_steps - int(round(self.config.train.average_share * self.total_steps)) + 1)

    def _maybe_accumulate_average(self, last: bool = False) -> None:
        """Add the current weights to the running average when this step is a snapshot step (every
        ``average_every_steps`` from the window's start) or ``last`` is set (the run's final step)."""
        c = self.config.train
        if c.final != "average" or not self.is_main or self.step < self._average_start() or self.average_step == self.step:
            return
        if (self.step - self._average_start()) % c.average_every_steps and self.step != self.total_steps and not last:
            return
        state = self.core.state_dict()
        if self.average is None:
            self.average = {k: v.detach().double().clone() if v.is_floating_point() else v.detach().clone() for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    self.average[k] += v.detach().double()
                else:
                    self.average[k] = v.detach().clone()
        self.average_count += 1
        self.average_step = self.step

    # ------------------------------------------------------------------ plan
    def _plan(self, epoch: int) -> list[tuple[str, BatchPlanItem]]:
        c = self.config
        seed = c.train.seed
        # batch.max_frames is per optimizer step: with N workers each takes a 1/N share, so the optimization
        # (steps per epoch, frames per step) does not depend on the number of workers
        max_frames = max(1, c.batch.max_frames // self.world_size)
        lab = plan_batches(self.table.lengths(self.labeled_ids), max_frames, seed, epoch, c.batch.shuffle, c.batch.max_utts)
        unl = plan_batches(self.table.lengths(self.unlabeled_ids), max_frames, seed + 1, epoch, c.batch.shuffle, c.batch.max_utts)
        ratio = c.kd.unlabeled_per_labeled if c.kd is not None else 1.0
        plan = mix_batches(lab, unl, ratio, seed, epoch)
        self.loss_weights = self._epoch_loss_weights(plan)
        if self.world_size > 1:
            # rank r takes batches r, r+W, ...; every rank gets the same count (DDP steps in lockstep)
            per_rank = len(plan) // self.world_size
            if per_rank == 0:
                raise AsrKdError(f"{len(plan)} batches per epoch cannot feed {self.world_size} workers; lower batch.max_frames")
            plan = plan[self.rank::self.world_size][:per_rank]
        return plan

    def _epoch_loss_weights(self, plan: list[tuple[str, BatchPlanItem]]) -> dict[str, float]:
        """Per-batch weights of the CTC, KD and pseudo-CTC terms for this epoch's plan (see
        ``losses.epoch_loss_weights``): computed on the whole plan, so every DDP rank uses the same."""
        kd = self.config.kd
        if kd is None:
            return {"ctc": 1.0, "kd": 0.0, "pseudo": 0.0}
        counts = {"ctc": 0, "kd": 0, "pseudo": 0}
        for _, item in plan:
            labeled = [self.table.utts[u].tokens is not None for u in item.utt_ids]
            counts["ctc"] += any(labeled)
            counts["kd"] += any((not lab or kd.kd_on_labeled) and u in self.store for u, lab in zip(item.utt_ids, labeled))
            counts["pseudo"] += any(u in self.pseudo_tokens for u in item.utt_ids)
        shares = {"ctc": kd.ctc_weight, "kd": 1.0 - kd.ctc_weight, "pseudo": kd.pseudo_ctc_weight}
        return epoch_loss_weights(counts, len(plan), shares)

    # ------------------------------------------------------------------ steps
    def _losses(self, batch: Batch, log_probs: torch.Tensor, out_lens: torch.Tensor) -> tuple[torch.Tensor, float | None, float | None]:
        """The batch's training loss (weights from ``_epoch_loss_weights``) and its CTC and KD values."""
        c = self.config
        w = self.loss_weights
        total = log_probs.sum() * 0.0
        ctc_val = kd_val = None
        labeled = [i for i, t in enumerate(batch.tokens) if t is not None]
        if labeled:
            idx = torch.tensor(labeled, device=log_probs.device)
            l_ctc = ctc_loss(log_probs.index_select(0, idx), out_lens.index_select(0, idx), [batch.tokens[i] for i in labeled])
            total = total + w["ctc"] * l_ctc
            ctc_val = l_ctc.item()
        if self.pseudo_tokens:
            pseudo = [i for i, u in enumerate(batch.utt_ids) if batch.tokens[i] is None and u in self.pseudo_tokens]
            if pseudo:
                idx = torch.tensor(pseudo, device=log_probs.device)
                l_pseudo = ctc_loss(log_probs.index_select(0, idx), out_lens.index_select(0, idx),
                                    [self.pseudo_tokens[batch.utt_ids[i]] for i in pseudo])
                total = total + w["pseudo"] * l_pseudo
        if self.store is not None:
            in_store = [i for i, u in enumerate(batch.utt_ids)
                        if (batch.tokens[i] is None or c.kd.kd_on_labeled) and u in self.store]
            if in_store:
                idx = torch.tensor(in_store, device=log_probs.device)
                items = [self.store.get_sparse(batch.utt_ids[i]) for i in in_store]
                items = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in items]
                ids, probs, mask = pad_targets(items, out_lens.index_select(0, idx).cpu(), [batch.utt_ids[i] for i in in_store],
                                               delay=c.kd.target_delay)
                sub = log_probs.index_select(0, idx)[:, : ids.shape[1]]
                l_kd = kd_loss(sub, ids.to(sub.device), probs.to(sub.device), mask.to(sub.device), c.kd.temperature)
                total = total + w["kd"] * l_kd
                kd_val = l_kd.item()
        return total, ctc_val, kd_val

    def _autocast(self):
        if self.device.type == "cuda" and self.config.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _evaluate_dev(self) -> tuple[float | None, float | None]:
        if self.dev is None:
            return None, None
        return self.dev.score(self.core, self.cmvn, self.device, self.config.batch.max_frames, self._autocast)

    # ------------------------------------------------------------------ main loop
    def run(self) -> TrainResult:
        t0 = time.time()
        self._setup()
        c = self.config
        kill_after = int(os.environ.get(KILL_HOOK_ENV, "0") or 0)
        metrics = MetricsLog(self.out, resume_step=self.step) if self.is_main else None
        if self.is_main:
            if self.step == 0:
                (self.out / PROGRESS_FILE).unlink(missing_ok=True)
            write_progress(self.out, step=self.step, total_steps=self.total_steps, epoch=self.epoch + 1)
        self.model.train()
        dev_wer = None
        n_params = sum(p.numel() for p in self.core.parameters())
        log.info("model: %s, %.2f M parameters, %d units, device %s; %d labeled + %d unlabeled utterances, %d batches/epoch",
                 c.model.kind, n_params / 1e6, self.tokenizer.vocab_size, self.device, len(self.labeled_ids),
                 len(self.unlabeled_ids), self.batches_per_epoch)
        done = self.step >= self.total_steps
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.out.name}", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        while not done and self.epoch < c.train.max_epochs:
            plan = self._plan(self.epoch)
            loader = make_loader(self.table, plan[self.batch_in_epoch:], c.fbank, c.batch.num_workers, c.data.allow_pipes)
            t_last, frames_since = time.time(), 0
            for batch in loader:
                self.batch_in_epoch += 1
                if batch.rejects:
                    self.table.rejects.extend(batch.rejects)
                    self._pending_rejects.extend(batch.rejects)  # written by rank 0 at the next gather
                    log.warning("skipped unreadable audio: %s", "; ".join(f"{u} ({r})" for u, r in batch.rejects))
                if not batch.utt_ids and self.world_size == 1:
                    continue
                if batch.utt_ids:
                    feats = self.cmvn(batch.feats.to(self.device))
                    lens = batch.feat_lens.to(self.device)
                    if self.specaug is not None:
                        feats = self.specaug(feats, lens)
                    with self._autocast():
                        log_probs, out_lens = self.model(feats, lens)
                    loss, ctc_val, kd_val = self._losses(batch, log_probs.float(), out_lens)
                else:  # DDP: a batch whose audio all failed still joins the gradient all-reduce, with zero loss.
                    # It must go through the DDP model's forward: that prepares DDP's reducer; a loss built
                    # from the parameters alone would skip this rank's all-reduce and the ranks drift apart.
                    n = 4 * self.core.subsampling  # a few frames of the global mean: one output frame or more
                    dummy = torch.zeros(1, n, c.fbank.num_mel_bins, device=self.device)
                    with self._autocast():
                        dummy_out, _ = self.model(dummy, torch.tensor([n], device=self.device))
                    loss, ctc_val, kd_val = dummy_out.float().sum() * 0.0, None, None
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip))
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                else:
                    log.warning("step %d: non-finite gradient norm, update skipped (batch %s...)", self.step, batch.utt_ids[:3])
                self.scheduler.step()
                self.step += 1
                self._maybe_accumulate_average()
                frames_since += int(batch.feat_lens.sum())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=self.epoch + 1)
                if self.is_main and self.step % c.train.log_every_steps == 0:
                    now = time.time()
                    metrics.log("train", self.epoch + 1, self.step, loss=loss.item(), ctc_loss=ctc_val, kd_loss=kd_val,
                                lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm,
                                frames_per_s=frames_since / max(now - t_last, 1e-9), wall_s=now - t0)
                    write_progress(self.out, step=self.step, total_steps=self.total_steps, epoch=self.epoch + 1,
                                   loss=loss.item())
                    t_last, frames_since = now, 0
                if self.step % c.train.checkpoint_every_steps == 0:
                    rank_rng = self._rank_rng_states()  # every rank: a collective under DDP
                    if self.is_main:
                        self.ckpt.save_step(self._state(rank_rng), self.step)
                if (self.is_main and c.train.dev_every_steps and self.step % c.train.dev_every_steps == 0
                        and self.step < self.total_steps):  # the run's end is scored below, as each epoch's end
                    self._dev_eval_at_step(metrics, bar, t0)
                if kill_after and self.step == kill_after and self.is_main:
                    os.kill(os.getpid(), signal.SIGKILL)
                if self.step >= self.total_steps:
                    done = True
                    break
            epoch_finished = self.batch_in_epoch >= len(plan)
            if epoch_finished:
                self.epoch += 1
                self.batch_in_epoch = 0
            rank_rng = self._rank_rng_states()  # every rank: a collective under DDP
            if not self.is_main:
                continue
            dev_wer, dev_cer = self._evaluate_dev()
            metrics.log("dev", self.epoch, self.step, dev_wer=dev_wer, dev_cer=dev_cer, wall_s=time.time() - t0)
            if dev_wer is not None:
                bar.write(f"epoch {self.epoch}: step {self.step}, dev WER {dev_wer:.2f}% CER {dev_cer:.2f}%")
            write_progress(self.out, dev_epoch=self.epoch, dev_step=self.step, dev_wer=dev_wer, dev_cer=dev_cer)
            self.ckpt.save_epoch(self._state(rank_rng), self.epoch if epoch_finished else self.epoch + 1, dev_wer)
        bar.close()
        self._maybe_accumulate_average(last=True)  # an epoch plan may end the run short of total_steps
        if self.is_main:
            write_progress(self.out, step=self.step)
        wall = time.time() - t0
        if not self.is_main:
            return TrainResult(self.out, self.step, self.epoch, None, n_params, wall)
        metrics.close()
        self._write_final_model()
        plot_training_curve(self.out, f"{self.out.name}: {c.model.kind}")
        best = self.ckpt.ranking()
        best_wer = best[0][1] if best and math.isfinite(best[0][1]) else None
        summary = (f"trained {self.out}: {self.step} steps, {self._epochs_done():g} epochs, {n_params / 1e6:.2f} M params, "
                   f"best dev WER {best_wer if best_wer is None else f'{best_wer:.2f}%'}, "
                   f"{len(self.table.rejects)} rejects{self._reject_breakdown()}, {wall / 60:.1f} min"
                   + (f", {self.world_size} workers" if self.world_size > 1 else ""))
        write_progress(self.out, summary=summary)  # the DDP driver prints it: worker output is not forwarded
        if self.world_size == 1:
            print(summary)
        return TrainResult(self.out, self.step, self.epoch, best_wer, n_params, wall)

    def _dev_eval_at_step(self, metrics: MetricsLog, bar: tqdm, t0: float) -> None:
        """``train.dev_every_steps`` (main process; DDP ranks wait at their next all-reduce): dev WER of
        the current weights, logged and ranked in best.tsv."""
        dev_wer, dev_cer = self._evaluate_dev()
        if dev_wer is None:
            return
        metrics.log("dev", self.epoch + 1, self.step, dev_wer=dev_wer, dev_cer=dev_cer, wall_s=time.time() - t0)
        bar.write(f"step {self.step}: dev WER {dev_wer:.2f}% CER {dev_cer:.2f}%")
        write_progress(self.out, dev_epoch=self.epoch + 1, dev_step=self.step, dev_wer=dev_wer, dev_cer=dev_cer)
        self.ckpt.save_dev_eval({k: v.detach().clone() for k, v in self.core.state_dict().items()}, self.step, dev_wer)

    def _reject_breakdown(self) -> str:
        unalignable = sum(1 for _, reason in self.table.rejects if reason.startswith("unalignable"))
        return f" ({unalignable} unalignable)" if unalignable else ""

    def _write_final_model(self) -> None:
        c = self.config.train
        if c.final == "best" and self.ckpt.best_path() is not None:
            state = load_checkpoint(self.ckpt.best_path())["model"]
            source = [self.ckpt.best_path().name]
        elif c.final == "average" and self.average is not None:
            ref = self.core.state_dict()
            state = {k: (v / self.average_count).to(ref[k].dtype) if v.is_floating_point() else v for k, v in self.average.items()}
            source = [f"average of {self.average_count} snapshots, steps {self._average_start()}-{self.step} "
                      f"(last {c.average_share:.0%} of {self.total_steps} steps, every {c.average_every_steps})"]
        else:
            state, source = self.core.state_dict(), [f"step {self.step}"]
        self.core.load_state_dict(state)
        self.core.eval()
        save_model_dir(self.out, self.core.cpu(), self.config.model, self.tokenizer, self.cmvn.cpu(), self.config.fbank,
                       extra_meta={"weights_from": source, "steps": self.step, "epochs": self.epoch,
                                   "kd": self.config.kd.model_dump() if self.config.kd else None})

    def _epochs_done(self) -> float:
        """Epochs the run covered, to 0.1 (a run cut by ``max_steps`` ends inside an epoch)."""
        return round(self.step / max(1, self.batches_per_epoch), 1)


def train(config: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True,
          rank: int = 0, world_size: int = 1, command: list[str] | None = None) -> TrainResult:
    """Train per ``config`` into the model dir ``out_dir``; ``rank``/``world_size`` for DDP workers,
    ``command`` the user's command line for ``env.json`` (default ``sys.argv``)."""
    return Trainer(config, out_dir, resume, progress, rank, world_size, command).run()
