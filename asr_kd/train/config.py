"""The training config: one YAML file per experiment, validated into ``TrainConfig``.

Units of every length are stated in the field's description; unknown keys are errors that name the
key (see ``asr_kd.config``). The same schema serves teachers (CTC on labeled data), baseline students
(CTC) and distilled students (a ``kd`` section naming a soft-target store).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from asr_kd.config import StrictModel
from asr_kd.data.features import FbankConfig
from asr_kd.data.specaug import SpecAugmentConfig
from asr_kd.models import ModelConfig


def _changed(section: StrictModel, name: str) -> bool:
    """True when ``section.name`` differs from the field's default."""
    return getattr(section, name) != type(section).model_fields[name].default


class UnitsConfig(StrictModel):
    """Output units. A student must reuse its teacher's units: set ``from_model`` to the teacher dir."""

    kind: Literal["char", "bpe"] = "char"
    bpe_vocab_size: int = Field(256, ge=8, description="sentencepiece vocabulary size (kind=bpe)")
    from_model: str | None = Field(None, description="model dir whose tokens.txt (and bpe.model) to reuse")


class DataConfig(StrictModel):
    train: list[str] = Field(default_factory=list, description="labeled data dirs (with text): CTC loss")
    dev: str | None = Field(None, description="labeled data dir scored by WER after each epoch")
    unlabeled: list[str] = Field(default_factory=list, description="data dirs trained only on soft targets (needs kd)")
    max_seconds: float = Field(30.0, gt=0, description="longer utterances are excluded and listed in rejects.tsv")
    min_seconds: float = Field(0.1, ge=0, description="shorter utterances are excluded and listed in rejects.tsv")
    allow_pipes: bool = Field(False, description="allow 'command |' entries in wav.scp (runs programs)")
    cmvn_max_utts: int = Field(2000, ge=1, description="utterances sampled to estimate global CMVN")


class BatchConfig(StrictModel):
    max_frames: int = Field(12000, ge=100, description="padded 10 ms input frames per optimizer step (batch size x longest); "
                            "with N data-parallel workers each worker's batch holds max_frames / N")
    max_utts: int | None = Field(None, ge=1, description="cap on utterances per batch")
    num_workers: int = Field(1, ge=0, description="DataLoader processes that read audio and compute fbank")
    shuffle: bool = True


class OptimConfig(StrictModel):
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-3, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(200, ge=0, description="linear warmup, in optimizer steps")
    schedule: Literal["cosine", "noam", "constant"] = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float = Field(5.0, gt=0, description="max global gradient norm")


class LoopConfig(StrictModel):
    max_epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (all epochs)")
    checkpoint_every_steps: int = Field(500, ge=1)
    keep_last_checkpoints: int = Field(2, ge=1, description="step checkpoints kept on disk")
    keep_best: int = Field(3, ge=1, description="epoch checkpoints kept by best dev WER")
    final: Literal["average", "best", "last"] = Field(
        "average", description="weights of the final model dir: 'average' = mean of the weights over the last "
        "average_share of the optimizer steps; 'best' = the epoch checkpoint with the best dev WER; 'last'")
    average_share: float = Field(0.2, gt=0, le=1, description="share of the run's optimizer steps, at its end, whose "
                                 "weights are averaged (final=average); a share, not a number of epochs, so models "
                                 "with short and long epochs average alike")
    average_every_steps: int = Field(10, ge=1, description="add the weights to the average every this many optimizer steps "
                                     "inside the averaging window (and at the last step)")
    log_every_steps: int = Field(10, ge=1)
    dev_every_steps: int | None = Field(None, ge=1, description="also score dev WER every this many optimizer steps "
                                        "(besides each epoch's end) and rank those weights in best.tsv with the epoch "
                                        "checkpoints: a dev curve for runs whose epochs are long, and final: best "
                                        "picks from it (None: at epoch ends only)")
    init_from: str | None = Field(None, description="model dir whose weights (and CMVN) start this run: fine-tuning, "
                                  "or a noisy-student round started from the previous teacher; its model config, "
                                  "units and fbank must equal this config's")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA; ignored on CPU")
    threads: int | None = Field(None, ge=1, description="torch threads (default: keep the environment's)")


class KDConfig(StrictModel):
    """Distillation from a soft-target store (see asr_kd.train.losses for the exact loss)."""

    store: str | list[str] = Field(description="soft-target store made by 'asr-kd label', or a list of stores "
                                   "(e.g. last month's corpus and this month's: kd.store=[A,B]) that agree on teacher, "
                                   "units, frame rate and temperature and hold each utterance once")
    ctc_weight: float = Field(0.3, ge=0, le=1, description="alpha: loss = alpha*CTC(transcripts) + (1-alpha)*KD "
                              "(+ pseudo_ctc_weight*CTC(teacher 1-best)), each term the mean over the epoch's batches that "
                              "carry it (see asr_kd.train.losses.epoch_loss_weights)")
    temperature: float = Field(1.0, gt=0, description="must equal the store's temperature")
    target_delay: int = Field(0, ge=0, description="shift teacher targets this many output frames later")
    unlabeled_per_labeled: float = Field(4.0, gt=0, description="unlabeled batches per labeled batch")
    kd_on_labeled: bool = Field(True, description="also distill on labeled utterances the store holds")
    pseudo_ctc_weight: float = Field(0.0, ge=0, description="beta: weight of CTC toward the teacher's 1-best transcript "
                                     "(the store's text.pseudo) on utterances without a transcript; 0 = off")
    allow_other_teacher: bool = Field(False, description="train although units.from_model names a model dir whose "
                                      "fingerprint is not among the store's teachers (same units, other weights)")

    @model_validator(mode="after")
    def _check_stores(self) -> "KDConfig":
        if isinstance(self.store, list) and not self.store:
            raise ValueError("kd.store: give a store dir or a non-empty list of store dirs")
        return self

    @property
    def stores(self) -> list[str]:
        """``store`` as a list (one entry for the single-path form)."""
        return [self.store] if isinstance(self.store, str) else list(self.store)

    @property
    def store_label(self) -> str:
        """``store`` for messages: the path, or the list joined with commas."""
        return ",".join(self.stores)


class TrainConfig(StrictModel):
    model: ModelConfig
    units: UnitsConfig = Field(default_factory=UnitsConfig)
    fbank: FbankConfig = Field(default_factory=FbankConfig)
    specaug: SpecAugmentConfig | None = Field(default_factory=SpecAugmentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: LoopConfig = Field(default_factory=LoopConfig)
    kd: KDConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if not self.data.train and not self.data.unlabeled:
            raise ValueError("data.train (labeled dirs) or data.unlabeled must name at least one data dir")
        if self.data.unlabeled and self.kd is None:
            raise ValueError("data.unlabeled needs a kd section naming a soft-target store")
        # a key that would do nothing is an error, not silently accepted. Compared with the defaults (not
        # with the keys given) so that a resolved config, written with every default, validates again.
        if _changed(self.units, "bpe_vocab_size") and (self.units.kind != "bpe" or self.units.from_model):
            raise ValueError("units.bpe_vocab_size does nothing here: it applies to units.kind: bpe trained from "
                             "the transcripts, not to char units or units.from_model (remove it)")
        unused = [k for k in ("average_share", "average_every_steps") if _changed(self.train, k)]
        if unused and self.train.final != "average":
            raise ValueError(f"train.{sorted(unused)[0]} does nothing with train.final: {self.train.final} "
                             "(it applies to final: average; remove it or set final: average)")
        if self.kd is not None and self.kd.pseudo_ctc_weight > 0 and not self.data.unlabeled:
            raise ValueError("kd.pseudo_ctc_weight does nothing without data.unlabeled (pseudo transcripts are used "
                             "on utterances that have no transcript)")
        return self
