"""Training losses: CTC on transcripts and frame-level KL distillation from stored top-k targets.

Distillation loss (per frame ``t`` at the 40 ms output rate, temperature ``T``)::

    p_t   = stored teacher top-k probabilities at temperature T, renormalized over the k ids
    q_t   = softmax(student_logits_t / T)               (over all V units)
    KD_t  = T^2 * sum_k p_t[k] * (log p_t[k] - log q_t[id_k])
    KD    = sum over the utterance's valid frames of KD_t, averaged over utterances (the scale of CTC)

Ragged frames: a format-v2 store keeps a variable number of units per frame (the fewest whose mass
reaches ``top_p``, at most k_max); the reader pads each frame to k_max with probability-0 entries,
which contribute ``0 * (...) = 0`` to ``KD_t`` and nothing to the renormalization, so the sum above
runs over each frame's stored units only.

Missing mass: the store keeps only the k most probable units; the remaining ``1 - sum(p)`` is
dropped and the k probabilities renormalized to sum to 1 (Amazon's million-hour student kept only
the highest teacher outputs the same way). The student is thus not pushed toward any particular
shape outside the teacher's top k; with k=8 the missing mass of a trained CTC teacher is typically
below 1e-3. The ``T^2`` factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).

Training loss of a distilled student (``kd.ctc_weight`` = alpha, ``kd.pseudo_ctc_weight`` = beta)::

    L = alpha * CTC + (1 - alpha) * KD + beta * CTC_pseudo

where each term is the mean, over the batches of an epoch that carry it, of its per-utterance loss:
``CTC`` on utterances with transcripts, ``KD`` on utterances with stored targets (unlabeled ones,
and labeled ones with ``kd.kd_on_labeled``), ``CTC_pseudo`` toward the teacher's 1-best transcript
(the store's ``text.pseudo``) on utterances without a transcript. Labeled and unlabeled utterances
come in separate batches (``batching.mix_batches``), so a batch's weights are the epoch shares
divided by how often its terms occur (``epoch_loss_weights``): with 4 unlabeled batches per labeled
one, alpha = 0.3 puts 1.5 x CTC on each labeled batch and 0.7 x KD on every batch, and CTC is 30 %
of the epoch's loss — not the 6 % that weighting each batch alone would give.

Target delay ``d`` (output frames): the student at frame ``t`` is trained toward the teacher's frame
``t - d``, so a causal student may emit a token ``d`` frames (``d * 40`` ms) after the full-context
teacher did. Student frames ``t < d`` have no target and are masked out; the teacher's last ``d``
frames are not used. ``d = 0`` is plain frame-synchronous distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asr_kd.errors import StoreError


def ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, targets: list[list[int]], blank: int = 0) -> torch.Tensor:
    """Mean CTC loss per utterance (summed over its frames); impossible alignments count as zero.

    ``log_probs`` (B, T, V) log-softmax outputs; ``out_lens`` (B,) valid output frames;
    ``targets`` token ids per utterance (no blanks). ``kd_loss`` uses the same per-utterance scale.
    """
    target_lens = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    loss = F.ctc_loss(
        log_probs.transpose(0, 1).float(), flat, out_lens.cpu(), target_lens, blank=blank, reduction="sum", zero_infinity=True
    )
    return loss / max(len(targets), 1)


def delay_targets(ids: torch.Tensor, probs: torch.Tensor, delay: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shift one utterance's teacher targets ``delay`` frames later.

    ``ids``/``probs`` are (T, k). Returns ``(ids, probs, valid)`` of the same length T where row ``t``
    holds teacher frame ``t - delay`` and ``valid[t]`` is False for ``t < delay`` (no target).
    """
    if delay < 0:
        raise ValueError(f"target delay must be >= 0 output frames, got {delay}")
    T = ids.shape[0]
    valid = torch.ones(T, dtype=torch.bool)
    if delay == 0:
        return ids, probs, valid
    shifted_ids = torch.zeros_like(ids)
    shifted_probs = torch.zeros_like(probs)
    if delay < T:
        shifted_ids[delay:] = ids[: T - delay]
        shifted_probs[delay:] = probs[: T - delay]
    valid[: min(delay, T)] = False
    return shifted_ids, shifted_probs, valid


def pad_targets(
    items: list[tuple[torch.Tensor, torch.Tensor]], out_lens: torch.Tensor, utt_ids: list[str], delay: int = 0, tolerance: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch per-utterance top-k targets to the student's output frames.

    ``items[i] = (ids (T_i, k), probs (T_i, k))`` from the store; ``out_lens`` are the student's
    output frames. Teacher and student frame counts may differ by ``tolerance`` frames (front ends
    round the last partial frame differently); the shorter one wins. A larger difference means the
    store was made with another frame rate or front end and is an error naming the utterance.
    Returns ``ids (B, T, k)``, ``probs (B, T, k)``, ``mask (B, T)``; ``k`` is the widest item's.

    Ragged frames (store format v2 keeps 1..k_max units per frame) arrive padded with probability 0,
    as do items narrower than ``k``: a zero-probability entry adds nothing to ``kd_loss``.
    """
    B = len(items)
    T = int(out_lens.max()) if B else 0
    k = max(ids.shape[1] for ids, _ in items) if B else 1
    ids_b = torch.zeros(B, T, k, dtype=torch.long)
    probs_b = torch.zeros(B, T, k, dtype=torch.float32)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (ids, probs) in enumerate(items):
        n_student = int(out_lens[b])
        n_teacher = ids.shape[0]
        if abs(n_student - n_teacher) > tolerance:
            raise StoreError(
                f"utterance {utt_ids[b]!r}: the store has {n_teacher} frames but the student produces {n_student}; "
                "the store was made with a different frame rate or front end — relabel with a matching teacher"
            )
        ids_d, probs_d, valid = delay_targets(ids.long(), probs.float(), delay)
        n = min(n_student, n_teacher)
        ids_b[b, :n, : ids.shape[1]] = ids_d[:n]
        probs_b[b, :n, : ids.shape[1]] = probs_d[:n]
        mask[b, :n] = valid[:n]
    return ids_b, probs_b, mask


def kd_loss(
    student_log_probs: torch.Tensor, teacher_ids: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Frame-level KL(teacher_T || student_T) * T^2 on top-k targets, summed over an utterance's
    valid frames and averaged over utterances.

    Per utterance, like ``ctc_loss``: both terms of the training loss (and labeled and unlabeled
    batches) then have the same scale. A per-frame KL (~1 nat) beside a per-utterance CTC (~100
    nats) would leave the distillation batches with vanishing updates.
    ``student_log_probs`` (B, T, V) log-probabilities (any temperature-1 log-softmax output);
    ``teacher_ids``/``teacher_probs`` (B, T, k) stored top-k at temperature ``T``; ``mask`` (B, T).
    """
    student_t = torch.log_softmax(student_log_probs.float() / temperature, dim=-1)
    p = teacher_probs.clamp_min(0.0)
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    log_q = student_t.gather(-1, teacher_ids)
    log_p = torch.where(p > 0, p.clamp_min(1e-30).log(), torch.zeros_like(p))
    per_frame = (p * (log_p - log_q)).sum(dim=-1) * temperature**2
    m = mask.to(per_frame.dtype)
    utterances = (m.sum(dim=1) > 0).sum().clamp_min(1)
    return (per_frame * m).sum() / utterances


def epoch_loss_weights(batches_with_term: dict[str, int], total_batches: int, shares: dict[str, float]) -> dict[str, float]:
    """Per-batch weight of each loss term so that, over an epoch, term ``name`` makes up ``shares[name]``.

    ``batches_with_term[name]`` is how many of the epoch's ``total_batches`` carry the term. A term in
    every batch gets its share as is; one in a fifth of the batches gets five times its share on those
    batches, so the epoch mean of the training loss is ``sum(shares[name] * mean of term name)``.
    A term no batch carries gets weight 0.
    """
    weights = {}
    for name, share in shares.items():
        n = batches_with_term.get(name, 0)
        weights[name] = share * total_batches / n if n > 0 else 0.0
    return weights
