#!/usr/bin/env bash
# Synthetic voice-assistant corpus: teacher -> soft targets on unlabeled audio -> streaming student.
#
# Usage (from anywhere): recipes/synth/run.sh [--stage N] [--stop-stage N] [--profile tiny|demo|large]
#                        [--force] [--nj N] [--data DIR] [--exp DIR]
# Stages (each skipped when its $exp/.done/NAME marker exists; --force redoes them):
#   0 prepare      synthesize the corpus with espeak-ng/flite       -> $data/{train_labeled,train_unlabeled,dev,test}
#   1 teacher      train the full-context Conformer teacher          -> $exp/teacher
#   2 eval_teacher score the teacher on dev and test                 -> $exp/teacher/eval_{dev,test}
#   3 label        teacher soft targets for labeled+unlabeled (Ray)  -> $exp/targets
#   4 baseline     streaming student, CTC on labeled data only       -> $exp/baseline
#   5 kd           streaming student distilled from the targets      -> $exp/kd
#   6 eval         baseline and KD student on dev/test, streaming on test -> $exp/{baseline,kd}/eval_*
#   7 report       results table, plots, results.json                -> $exp/report.md
# Every command run is appended to $exp/commands.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=0
stop_stage=7
profile=demo
nj=2
data=data/synth
exp=exp/synth
top_k=8
conf=recipes/synth/conf
. recipes/utils/stage.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
mkdir -p "$exp"

if run_stage 0 prepare; then
  log_run asr-kd prepare synth --profile "$profile" --out "$data" --jobs "$nj"
  mark_done prepare
fi

if run_stage 1 teacher; then
  need "$data/train_labeled/text" "$data/dev/text"
  log_run asr-kd train --config $conf/teacher.yaml --out $exp/teacher --resume \
    "data.train=[$data/train_labeled]" data.dev=$data/dev
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

if run_stage 4 baseline; then
  need $exp/teacher/tokens.txt
  log_run asr-kd train --config $conf/student_baseline.yaml --out $exp/baseline --resume \
    "data.train=[$data/train_labeled]" data.dev=$data/dev units.from_model=$exp/teacher
  mark_done baseline
fi

if run_stage 5 kd; then
  need $exp/targets/meta.json $exp/teacher/tokens.txt
  log_run asr-kd train --config $conf/student_kd.yaml --out $exp/kd --resume \
    "data.train=[$data/train_labeled]" "data.unlabeled=[$data/train_unlabeled]" data.dev=$data/dev \
    units.from_model=$exp/teacher kd.store=$exp/targets
  mark_done kd
fi

if run_stage 6 eval; then
  for model in baseline kd; do
    need $exp/$model/model.pt
    for set in dev test; do
      log_run asr-kd evaluate --model $exp/$model --data $data/$set --out $exp/$model/eval_$set
    done
    log_run asr-kd evaluate --model $exp/$model --data $data/test --out $exp/$model/eval_test_streaming --streaming
  done
  mark_done eval
fi

if run_stage 7 report; then
  log_run asr-kd report --exp $exp --data $data --out $exp/report.md
  cat $exp/report.md
fi
