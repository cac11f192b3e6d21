"""End to end with a trained non-native teacher: a tiny Hugging Face Wav2Vec2ForCTC is trained with plain
PyTorch on a tiny synthetic corpus, saved with save_pretrained, and used as the teacher of a streaming
student through ``asr-kd label`` (unit mapping + 20 -> 40 ms conversion, ``peak``). The student, trained
on the teacher's soft targets alone (the labeled audio with its transcripts dropped), must reach a WER
far below its untrained self's on that audio, and a CER far below on held-out dev audio. (Held-out WER
stays near 100 %: a raw-waveform teacher trained for ~2 CPU-minutes is itself at ~100 % dev WER, ~63 %
CER; no student beats its teacher's word rate from soft targets alone.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

pytest.importorskip("transformers", reason="Hugging Face teachers need the hf extra: pip install 'asr-kd[hf]'")

from hf_factories import english_vocab, filterbank_init, save_processor, train_hf_ctc  # noqa: E402
from factories import untrained_copy  # noqa: E402

from asr_kd.config import validate_config  # noqa: E402
from asr_kd.data.datadir import read_data_dir, write_data_dir  # noqa: E402
from asr_kd.data.units import CharTokenizer  # noqa: E402
from asr_kd.evaluate import evaluate  # noqa: E402
from asr_kd.label.pipeline import LabelOptions, label_local  # noqa: E402
from asr_kd.targets.reader import StoreReader  # noqa: E402
from asr_kd.train.config import TrainConfig  # noqa: E402
from asr_kd.train.loop import train  # noqa: E402

PROFILE = {
    "name": "clean-test",
    "sizes": {"train_labeled": 240, "train_unlabeled": 240, "dev": 30, "test": 10},
    "voices": {"labeled": 2, "unlabeled_new": 0, "unlabeled_accent": 0, "test_seen": 1, "test_new": 0,
               "test_unlabeled_accent": 0, "test_unseen_accent": 1},
    "train_families": ["en-us"], "unlabeled_only_families": [], "unseen_families": ["en-gb"],
    "max_words": 6, "augment": {"noise_prob": 0.0, "reverb_prob": 0.0},
}
TINY_STUDENT = {"kind": "conformer", "streaming": True, "d_model": 64, "num_layers": 2, "nhead": 2, "d_ffn": 128,
                "kernel_size": 7, "frontend_channels": 8, "chunk_size": 8, "left_chunks": 4, "dropout": 0.0}
TEACHER_EPOCHS = 60


def load_normalized(data_dir: Path) -> list[tuple[torch.Tensor, str]]:
    data = read_data_dir(data_dir)
    out = []
    for utt in data.utt_ids:
        wave, _ = sf.read(data.source(utt).path, dtype="float32")
        out.append((torch.from_numpy((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)), data.text[utt]))
    return out


def student_config(corpus: Path, train_dirs: list[str], unlabeled: list[str], units_dir: Path, store: Path | None,
                   epochs: int) -> TrainConfig:
    data = {
        "model": TINY_STUDENT, "specaug": None,
        "data": {"train": train_dirs, "unlabeled": unlabeled, "dev": str(corpus / "dev")},
        "units": {"from_model": str(units_dir)},
        "batch": {"max_frames": 4000, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 30},
        "train": {"max_epochs": epochs, "checkpoint_every_steps": 1000, "log_every_steps": 10},
    }
    if store is not None:
        data["kd"] = {"store": str(store), "ctc_weight": 0.0, "target_delay": 0}
    return validate_config(data, TrainConfig, source="test")


@pytest.mark.slow
def test_student_distilled_from_a_trained_wav2vec2_learns(tmp_path):
    import transformers

    root = tmp_path
    (root / "profile.yaml").write_text(yaml.safe_dump(PROFILE))
    proc = subprocess.run([sys.executable, "-m", "asr_kd.cli", "prepare", "synth", "--profile", str(root / "profile.yaml"),
                           "--out", str(root / "data"), "--jobs", "2"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    corpus = root / "data"

    # the teacher: Hugging Face Wav2Vec2ForCTC, 20 ms frames, upper-case letters + '|' + '<pad>' blank
    vocab = english_vocab()
    cfg = transformers.Wav2Vec2Config(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192, conv_dim=(96, 96),
        conv_kernel=(400, 2), conv_stride=(160, 2), conv_bias=False, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=4,
        vocab_size=len(vocab),
        pad_token_id=vocab["<pad>"], ctc_loss_reduction="mean", feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(cfg)
    filterbank_init(model)
    losses = train_hf_ctc(model, load_normalized(corpus / "train_labeled"), vocab, TEACHER_EPOCHS, lr=5e-3)
    assert losses[-1] < 0.5 * losses[1], losses
    print(f"teacher greedy dev WER/CER at its own 20 ms frames: {greedy_dev(model, vocab, corpus)}")
    teacher = root / "w2v_teacher"
    model.save_pretrained(str(teacher))
    save_processor(teacher, vocab, layer_norm=True)
    assert (teacher / "model.safetensors").is_file() and not (teacher / "model.yaml").exists()

    # the student's units: characters of the labeled transcripts (a tokens.txt; default 40 ms framing)
    units = root / "units"
    units.mkdir()
    texts = read_data_dir(corpus / "train_labeled").text
    CharTokenizer.build(texts.values()).save(units)

    # the labeled audio with its transcripts dropped: the student sees only the teacher's soft targets
    audio_only = read_data_dir(corpus / "train_labeled")
    audio_only.text = None
    write_data_dir(audio_only, root / "audio_only")
    wers = {}
    for conversion in ("mean", "peak"):
        label_local([str(teacher)], str(root / "audio_only"), str(root / f"store_{conversion}"),
                    LabelOptions(top_k=4, progress=False, units_from=str(units), frame_conversion=conversion))
        wers[conversion] = pseudo_wer(root / f"store_{conversion}", corpus)
    store = root / "store_peak"
    reader = StoreReader(store)
    assert len(reader) == 240 and reader.meta.teacher_details[0]["frame_shift_ms"] == 20.0
    assert reader.meta.unmapped_mass is not None and reader.meta.unmapped_mass < 0.05
    teacher_wer = wers["peak"]
    print(f"teacher greedy WER on its (training) audio at 40 ms: mean conversion {wers['mean']:.1f} %, peak {wers['peak']:.1f} %")

    student = root / "student"
    train(student_config(corpus, [], [str(root / "audio_only")], units, store, epochs=60), student, progress=False)
    kd = evaluate(str(student), str(corpus / "dev"), str(root / "eval_kd"), progress=False)
    fresh_dir = untrained_copy(student, root / "fresh")
    fresh = evaluate(str(fresh_dir), str(corpus / "dev"), str(root / "eval_fresh"), progress=False)
    # the distilled audio: the student never saw its transcripts, only the teacher's targets
    kd_tr = evaluate(str(student), str(corpus / "train_labeled"), str(root / "eval_kd_tr"), progress=False)
    fresh_tr = evaluate(str(fresh_dir), str(corpus / "train_labeled"), str(root / "eval_fresh_tr"), progress=False)
    print(f"student dev WER {kd['wer']:.1f} % CER {kd['cer']:.1f} % (untrained {fresh['wer']:.1f} % / {fresh['cer']:.1f} %); "
          f"on the distilled audio WER {kd_tr['wer']:.1f} % CER {kd_tr['cer']:.1f} % (untrained {fresh_tr['wer']:.1f} % / "
          f"{fresh_tr['cer']:.1f} %); teacher greedy on it at 40 ms {teacher_wer:.1f} % WER")
    # held out: characters come far closer (a teacher at ~100 % dev WER cannot lift the student's word rate)
    assert kd["cer"] <= fresh["cer"] - 30.0, (kd, fresh)
    # the audio it distilled on, transcripts never seen: words too
    assert kd_tr["wer"] <= fresh_tr["wer"] - 15.0, (kd_tr, fresh_tr)
    assert kd_tr["cer"] <= fresh_tr["cer"] - 40.0, (kd_tr, fresh_tr)


def greedy_dev(model, vocab: dict[str, int], corpus: Path) -> tuple[float, float]:
    """The HF teacher's own greedy CTC WER and CER (%) on the dev set (20 ms frames, its vocabulary)."""
    import jiwer

    inv = {i: s for s, i in vocab.items()}
    refs, hyps = [], []
    with torch.no_grad():
        for wave, text in load_normalized(corpus / "dev"):
            ids = model(wave[None]).logits[0].argmax(-1).tolist()
            out = [inv[i] for j, i in enumerate(ids) if i != 0 and (j == 0 or ids[j - 1] != i) and inv[i][0] != "<"]
            hyps.append(" ".join("".join(out).replace("|", " ").lower().split()) or "<empty>")
            refs.append(text)
    return round(100 * jiwer.wer(refs, hyps), 1), round(100 * jiwer.cer(refs, hyps), 1)


def pseudo_wer(store: Path, corpus: Path) -> float:
    """WER (%) of the store's text.pseudo (the teacher's greedy 1-best) against the labeled transcripts."""
    import jiwer

    ref = read_data_dir(corpus / "train_labeled").text
    hyp = dict(line.split(" ", 1) if " " in line else (line, "") for line in (store / "text.pseudo").read_text().splitlines())
    utts = sorted(u for u in ref if u in hyp)
    return 100.0 * jiwer.wer([ref[u] for u in utts], [hyp[u] or "<empty>" for u in utts])
