#!/usr/bin/env bash
# LibriSpeech: 100 h labeled (train-clean-100) + 860 h unlabeled (train-clean-360 + train-other-500,
# transcripts ignored), WER on dev/test clean and other. Sized for GPUs and a Ray cluster.
# Before the full run, recipes/librispeech/gpu_smoke.sh checks the GPU machine and measures the teacher.
#
# Usage: recipes/librispeech/run.sh --corpus-dir /corpora [--stage N] [--stop-stage N] [--address auto]
#        [--workers N] [--actors N] [--nj N] [--data DIR] [--exp DIR] [--conf DIR] [--force]
#   --corpus-dir  folder holding LibriSpeech/ (as extracted from openslr.org/12; nothing is downloaded)
#   --address     Ray cluster for labeling and training ('auto' after 'ray start'; empty = this machine).
#                 Multi-node assumption: every node sees --corpus-dir, --data and --exp (the teacher dir,
#                 the store, the DDP rendezvous file under each model dir) at the same absolute paths,
#                 i.e. a shared filesystem mounted identically everywhere (NFS, Lustre, ...); nothing is
#                 copied between nodes. Start the cluster with token auth (README, Security).
#   --workers     Ray Train (DDP) workers for teacher and student training; default: one per GPU of the
#                 cluster (num_gpus=1 each), one process on a machine with one GPU or none
#   --actors      teacher actors for labeling; default: one per GPU of the cluster (num_gpus=1 each), 2 without GPUs
#   --nj          parallel jobs for speed perturbation (stage 0)
# Each stage logs its layout first ("train: layout 8 Ray Train (DDP) worker(s) x 1 GPU each, device cuda,
# dtype bfloat16 autocast ..."); a GPU that is present but unusable stops the stage (README, GPUs).
# Stages (skipped when $exp/.done/NAME exists; --force redoes):
#   0 prepare   data dirs for every subset; the unlabeled ones keep their text aside as text.ref;
#               train-clean-100 speed-perturbed x 0.9/1.0/1.1 (Kaldi's sp ids; audio rendered to FLAC, ~2x its size)
#   1 teacher   full-context Conformer on train-clean-100 with speed perturbation (300 h of audio per epoch)
#   2 label     teacher soft targets for train-clean-100 + 360 + other-500 (Ray)
#   3 baseline  streaming student, CTC on train-clean-100 only
#   4 kd        streaming student distilled on all 960 h
#   5 eval      all models on dev/test clean/other, offline on the GPU when there is one (--device auto);
#               students also streaming, on one CPU thread (the on-device RTF)
#   6 report
# Run times: ESTIMATES, none measured on a GPU yet (README, "LibriSpeech: how long", has the derivation).
# For 8 A100-class GPUs on 2 nodes with 64 CPU cores: prepare ~20 min, teacher (30 epochs x 300 h
# = 9,000 audio-h) ~20 min, label (960 h) ~20 min, baseline (30 x 100 h = 3,000 h) ~5 min, kd
# (20 x 960 h = 19,200 h) ~35 min, eval ~3.5 h (the two streaming students on one CPU thread each),
# ~5 h in all. Derivation: audio-hours x a rate measured on CPU (BENCHMARKS.md, 2-core machine, 1
# thread; scaled by parameter count to these models) x a FLOP-projected GPU speed-up (an A100 assumed
# to sustain 10 % of its 312 TFLOP/s bf16 peak), capped by the measured fbank rate of the 6 data-loader
# processes per GPU. Projections like these are usually optimistic: measure first with gpu_smoke.sh
# (steps/s of the teacher on one GPU; teacher time ~ 30 epochs x ~950 steps / (steps/s x GPUs)).
set -euo pipefail
cd "$(dirname "$0")/../.."

corpus_dir=
stage=0
stop_stage=6
address=
workers=   # empty: one per GPU of the Ray cluster (asr-kd train's default)
actors=    # empty: one per GPU of the Ray cluster (asr-kd label's default)
nj=8
data=data/librispeech
exp=exp/librispeech
conf=recipes/librispeech/conf
top_k=8  # at most this many units per 40 ms frame; asr-kd label keeps the fewest reaching 0.999 of the mass
. recipes/utils/stage.sh

[ -n "$corpus_dir" ] || { echo "$0: --corpus-dir is required (the folder holding LibriSpeech/)" >&2; exit 2; }
addr_opt=(); [ -z "$address" ] || addr_opt=(--address "$address")
workers_opt=(); [ -z "$workers" ] || workers_opt=(--workers "$workers")
actors_opt=(); [ -z "$actors" ] || actors_opt=(--actors "$actors")
mkdir -p "$exp"

if run_stage 0 prepare; then
  need "$corpus_dir/LibriSpeech"
  log_run asr-kd prepare librispeech --corpus-dir "$corpus_dir" --out $data \
    --subsets train-clean-100 dev-clean dev-other test-clean test-other
  log_run asr-kd prepare librispeech --corpus-dir "$corpus_dir" --out $data --unlabeled \
    --subsets train-clean-360 train-other-500
  log_run asr-kd data combine --force --out $data/train_960_audio $data/train_clean_100 $data/train_clean_360 $data/train_other_500
  log_run asr-kd data perturb-speed $data/train_clean_100 --out $data/train_clean_100_sp --factors 0.9,1.0,1.1 \
    --jobs "$nj" --force --no-progress
  mark_done prepare
fi

if run_stage 1 teacher; then
  need $data/train_clean_100_sp/text $data/dev_clean/text
  log_run asr-kd train --config $conf/teacher.yaml --out $exp/teacher --resume "${workers_opt[@]}" "${addr_opt[@]}" \
    "data.train=[$data/train_clean_100_sp]" data.dev=$data/dev_clean
  mark_done teacher
fi

if run_stage 2 label; then
  need $exp/teacher/model.pt $data/train_960_audio/wav.scp
  log_run asr-kd label --model $exp/teacher --data $data/train_960_audio --out $exp/targets --top-k $top_k \
    "${actors_opt[@]}" "${addr_opt[@]}"
  log_run asr-kd targets verify $exp/targets --data $data/train_960_audio
  mark_done label
fi

if run_stage 3 baseline; then
  need $exp/teacher/tokens.txt
  log_run asr-kd train --config $conf/student_baseline.yaml --out $exp/baseline --resume "${workers_opt[@]}" "${addr_opt[@]}" \
    "data.train=[$data/train_clean_100]" data.dev=$data/dev_clean units.from_model=$exp/teacher
  mark_done baseline
fi

if run_stage 4 kd; then
  need $exp/targets/meta.json
  log_run asr-kd train --config $conf/student_kd.yaml --out $exp/kd --resume "${workers_opt[@]}" "${addr_opt[@]}" \
    "data.train=[$data/train_clean_100]" "data.unlabeled=[$data/train_clean_360,$data/train_other_500]" \
    data.dev=$data/dev_clean units.from_model=$exp/teacher kd.store=$exp/targets
  mark_done kd
fi

if run_stage 5 eval; then
  for model in teacher baseline kd; do
    need $exp/$model/model.pt
    for set in dev_clean dev_other test_clean test_other; do
      log_run asr-kd evaluate --model $exp/$model --data $data/$set --out $exp/$model/eval_$set --device auto
      if [ $model != teacher ]; then
        log_run asr-kd evaluate --model $exp/$model --data $data/$set --out $exp/$model/eval_${set}_streaming --streaming
      fi
    done
  done
  mark_done eval
fi

if run_stage 6 report; then
  for model in teacher baseline kd; do   # the report reads eval_test / eval_dev: point them at test-clean/dev-clean
    for s in test dev; do [ -e $exp/$model/eval_$s ] || ln -s eval_${s}_clean $exp/$model/eval_$s; done
    [ $model = teacher ] || [ -e $exp/$model/eval_test_streaming ] || ln -s eval_test_clean_streaming $exp/$model/eval_test_streaming
  done
  log_run asr-kd report --exp $exp --out $exp/report.md
fi
