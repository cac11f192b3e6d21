#!/usr/bin/env bash
# Synthetic voice-assistant corpus: teacher -> soft targets on unlabeled audio -> streaming student.
#
# Usage (from anywhere): recipes/synth/run.sh [--stage N] [--stop-stage N] [--profile tiny|demo|medium|large|FILE.yaml]
#                        [--force] [--nj N] [--data DIR] [--exp DIR] [--rounds 1|2] [--speed-perturb FACTORS]
# --speed-perturb FACTORS: train the teacher on a speed-perturbed copy of the labeled set (e.g. 0.9,1.0,1.1;
#         default: none). The students always train on the unperturbed audio.
# --nj N: parallel jobs for synthesis and labeling, data-parallel teacher training workers (Ray Train
#         DDP, one CPU thread each); with N >= 2 stages 4 and 5 train the two students side by side.
# Stages (each skipped when its $exp/.done/NAME marker exists; --force redoes them):
#   0 prepare      synthesize the corpus with espeak-ng/flite       -> $data/{train_labeled,train_unlabeled,dev,test}
#                  and cache the fbank of the training and dev sets  -> $data/*/feats.scp (asr-kd data fbank)
#                  speed-perturbed copy of the labeled set (Kaldi's convention) for the teacher
#                                                                    -> $data/train_labeled_sp (with --speed-perturb)
#   1 teacher      train the full-context Conformer teacher          -> $exp/teacher
#   2 eval_teacher score the teacher on dev and test                 -> $exp/teacher/eval_{dev,test}
#   3 label        teacher soft targets for labeled+unlabeled (Ray)  -> $exp/targets
#   4 baseline     streaming student, CTC on labeled data only       -> $exp/baseline
#   5 kd           streaming student distilled from the targets      -> $exp/kd   (beside stage 4)
#   6 eval         baseline and KD student on dev/test, streaming on test -> $exp/{baseline,kd}/eval_*
#   7 report       results table, plots, results.json                -> $exp/report.md
# With --rounds 2, a noisy-student round follows (Xie et al. 2020; stages 8-10, then the report again):
#   8 teacher_r2   the teacher config retrained on labeled (CTC) + unlabeled audio (KD toward the
#                  round-1 store), with SpecAugment                 -> $exp/teacher_r2 (+ eval on dev/test)
#   9 label_r2     soft targets of the round-2 teacher             -> $exp/targets_r2
#  10 kd_r2        the KD student distilled from them               -> $exp/kd_r2 (+ eval on dev/test)
# Every command run is appended to $exp/commands.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=0
stop_stage=
profile=demo
nj=2
data=data/synth
exp=exp/synth
top_k=8  # at most this many units per 40 ms frame; asr-kd label keeps the fewest reaching 0.999 of the mass
rounds=1
conf=recipes/synth/conf
speed_perturb=  # e.g. 0.9,1.0,1.1: not the default (no KD gain within seed noise at demo size; docs/experiments)
. recipes/utils/stage.sh
stop_stage=${stop_stage:-$([ "$rounds" -ge 2 ] && echo 10 || echo 7)}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # Ray: local runs bind loopback with a per-run token (README, Security)
mkdir -p "$exp"

if run_stage 0 prepare; then
  log_run asr-kd prepare synth --profile "$profile" --out "$data" --jobs "$nj"
  # feature cache: fbank once per training data dir, reused by the teacher and both students
  start_beside "$data/fbank_unlabeled.log" asr-kd data fbank --no-progress $data/train_unlabeled
  log_run asr-kd data fbank --no-progress $data/train_labeled $data/dev
  if [ -n "$speed_perturb" ]; then
    log_run asr-kd data perturb-speed $data/train_labeled --out $data/train_labeled_sp --factors "$speed_perturb" \
      --jobs "$nj" --force --no-progress
    log_run asr-kd data fbank --no-progress $data/train_labeled_sp
  fi
  wait_beside "the feature cache of $data/train_unlabeled" "$data/fbank_unlabeled.log"
  mark_done prepare
fi

teacher_train=$data/train_labeled  # the teacher's labeled data dir
[ -z "$speed_perturb" ] || teacher_train=$data/train_labeled_sp
if run_stage 1 teacher; then
  need "$teacher_train/text" "$data/dev/text"
  log_run asr-kd train --config $conf/teacher.yaml --out $exp/teacher --resume --workers $nj \
    "data.train=[$teacher_train]" data.dev=$data/dev
  mark_done teacher
fi

if run_stage 2 eval_teacher; then
  need $exp/teacher/model.pt
  for set in dev test; do
    log_run asr-kd evaluate --model $exp/teacher --data $data/$set --out $exp/teacher/eval_$set
  done
  mark_done eval_teacher
fi

if run_stage 3 label; then
  need $exp/teacher/model.pt "$data/train_unlabeled/wav.scp"
  log_run asr-kd data combine --force --out $data/train_all $data/train_labeled $data/train_unlabeled
  log_run asr-kd label --model $exp/teacher --data $data/train_all --out $exp/targets --top-k $top_k --actors $nj
  log_run asr-kd targets verify $exp/targets --data $data/train_all
  log_run asr-kd targets stats $exp/targets --json --teacher $exp/teacher --data $data/train_all --sample 30
  mark_done label
fi

student_baseline() {  # extra arguments go to asr-kd train
  need $exp/teacher/tokens.txt
  log_run asr-kd train --config $conf/student_baseline.yaml --out $exp/baseline --resume "$@" \
    "data.train=[$data/train_labeled]" data.dev=$data/dev units.from_model=$exp/teacher
}

student_kd() {
  need $exp/targets/meta.json $exp/teacher/tokens.txt
  log_run asr-kd train --config $conf/student_kd.yaml --out $exp/kd --resume "$@" \
    "data.train=[$data/train_labeled]" "data.unlabeled=[$data/train_unlabeled]" data.dev=$data/dev \
    units.from_model=$exp/teacher kd.store=$exp/targets
}

do_baseline=false
do_kd=false
if run_stage 4 baseline; then do_baseline=true; fi
if run_stage 5 kd; then do_kd=true; fi
if $do_baseline && $do_kd && [ "$nj" -ge 2 ]; then
  # The students are independent: train them side by side, one core each (two 1-thread processes
  # beat one 2-thread process on small models). The baseline's output goes to a log file.
  log "stage 4 (baseline) runs beside stage 5 (kd); its log: $exp/baseline.log"
  start_beside "$exp/baseline.log" student_baseline --no-progress
  student_kd
  mark_done kd
  wait_beside "stage 4 (baseline)" "$exp/baseline.log"
  grep -a '^trained ' "$exp/baseline.log" || true
  mark_done baseline
else
  if $do_baseline; then student_baseline; mark_done baseline; fi
  if $do_kd; then student_kd; mark_done kd; fi
fi

evaluate_student() {
  local model=$1
  for set in dev test; do
    log_run asr-kd evaluate --model $exp/$model --data $data/$set --out $exp/$model/eval_$set
  done
  log_run asr-kd evaluate --model $exp/$model --data $data/test --out $exp/$model/eval_test_streaming --streaming
}

if run_stage 6 eval; then
  need $exp/baseline/model.pt $exp/kd/model.pt
  if [ "$nj" -ge 2 ]; then  # one core per student, as in stages 4-5
    start_beside "$exp/baseline_eval.log" evaluate_student baseline
    evaluate_student kd
    wait_beside "evaluating the baseline" "$exp/baseline_eval.log"
    grep -a '^baseline on ' "$exp/baseline_eval.log" || true
  else
    evaluate_student baseline
    evaluate_student kd
  fi
  mark_done eval
fi

if [ "$rounds" -ge 2 ]; then
  spec="specaug={freq_masks: 2, freq_width: 10, time_masks: 2, time_width_ratio: 0.05}"
  if run_stage 8 teacher_r2; then
    need $exp/targets/meta.json $exp/teacher/tokens.txt
    log_run asr-kd train --config $conf/teacher.yaml --out $exp/teacher_r2 --resume --workers $nj \
      "data.train=[$teacher_train]" "data.unlabeled=[$data/train_unlabeled]" data.dev=$data/dev \
      units.from_model=$exp/teacher "kd={store: $exp/targets, ctc_weight: 0.5, unlabeled_per_labeled: 1.0}" "$spec"
    for set in dev test; do
      log_run asr-kd evaluate --model $exp/teacher_r2 --data $data/$set --out $exp/teacher_r2/eval_$set
    done
    mark_done teacher_r2
  fi
  if run_stage 9 label_r2; then
    need $exp/teacher_r2/model.pt
    log_run asr-kd label --model $exp/teacher_r2 --data $data/train_all --out $exp/targets_r2 --top-k $top_k --actors $nj
    mark_done label_r2
  fi
  if run_stage 10 kd_r2; then
    need $exp/targets_r2/meta.json
    log_run asr-kd train --config $conf/student_kd.yaml --out $exp/kd_r2 --resume \
      "data.train=[$data/train_labeled]" "data.unlabeled=[$data/train_unlabeled]" data.dev=$data/dev \
      units.from_model=$exp/teacher_r2 kd.store=$exp/targets_r2
    for set in dev test; do
      log_run asr-kd evaluate --model $exp/kd_r2 --data $data/$set --out $exp/kd_r2/eval_$set
    done
    log_run asr-kd evaluate --model $exp/kd_r2 --data $data/test --out $exp/kd_r2/eval_test_streaming --streaming
    mark_done kd_r2
  fi
fi

if run_stage 7 report || { [ "$rounds" -ge 2 ] && [ "$stop_stage" -ge 10 ]; }; then
  log_run asr-kd report --exp $exp --data $data --out $exp/report.md
  cat $exp/report.md
fi
