#!/usr/bin/env bash
# The scaling study: KD's gain as the *unlabeled* audio grows, with the labeled set fixed.
#
# One labeled set (the demo's 4,000 utterances, ~3 h), one unlabeled pool drawn from the demo profile's
# unlabeled distribution (its voices, variants and conditions, the accent heard only unlabeled),
# nested subsets of the pool at --multiples x the labeled hours, one teacher, one store over all of it,
# and streaming students that all train for the same S optimizer steps (conf/scaling/student_*.yaml).
#
# Usage (from anywhere): recipes/synth/scaling.sh [--stage N] [--stop-stage N] [--force] [--nj 2]
#                        [--pool-utts 56000] [--multiples "1.5 4.5 13"] [--data DIR] [--exp DIR]
#                        [--seeds "0 1"] [--kd0 false]
# --pool-utts N: utterances of the unlabeled pool (56,000 are ~41.5 h; utterance i is the demo's
#         utterance i, so the demo's 6,000 are inside it). Every multiple must fit in it.
# --multiples "A B C": the nested subsets, in labeled-hours multiples; the last one gets the second seed.
# --seeds "0 1": seeds of the baseline and of the largest KD point (their spread).
# --kd0 true: also a KD student on the labeled audio alone (no unlabeled), the curve's zero point.
# Stages (each skipped when its $exp/.done/NAME marker exists, which also records its seconds):
#   0 prepare      the corpus: labeled, pool, dev, test; dev_unl (--dev-unl-utts 400 after the pool's last,
#                  voices the labeled set never has); the speed-perturbed labeled set; feature caches
#   1 subsets      nested random subsets of the pool           -> $data/unl_<M>x (with the pool's cache)
#   2 teacher      conf/scaling/teacher.yaml, once              -> $exp/teacher
#   3 eval_teacher teacher on dev, dev_unl and test             -> $exp/teacher/eval_*
#   4 label        one store over labeled + the whole pool      -> $exp/targets
#   5 students     baselines and KD points, two side by side    -> $exp/{baseline_s*,kd_<M>x_s*}
#   6 eval         every student on dev, dev_unl, test; the baselines' best dev snapshot as well
#   7 report       scaling.md, scaling.json, scaling.png        -> $exp/
# Every command run is appended to $exp/commands.log; rerun the same command to resume after any stop.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage=0
stop_stage=7
nj=2
data=data/scaling
exp=exp/scaling
pool_utts=56000
multiples="1.5 4.5 13"
seeds="0 1"
kd0=false
dev_unl_utts=400
top_k=8
profile=demo
conf=recipes/synth/conf/scaling
. recipes/utils/stage.sh

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$exp"
largest=${multiples##* }
seed0=${seeds%% *}

if run_stage 0 prepare; then
  log_run asr-kd prepare synth --profile $profile --size train_unlabeled=$pool_utts --out $data --jobs $nj --no-progress
  log_run python recipes/synth/local/make_dev_unl.py --profile $profile --first $pool_utts --count $dev_unl_utts --out $data/dev_unl
  log_run asr-kd data perturb-speed $data/train_labeled --out $data/train_labeled_sp --factors 0.9,1.0,1.1 \
    --jobs $nj --force --no-progress
  start_beside "$data/fbank_pool.log" log_run asr-kd data fbank --no-progress $data/train_unlabeled
  log_run asr-kd data fbank --no-progress $data/train_labeled $data/train_labeled_sp $data/dev $data/dev_unl
  wait_beside "the feature cache of $data/train_unlabeled" "$data/fbank_pool.log"
  mark_done prepare
fi

labeled_hours() { awk '{s += $2} END {printf "%.4f", s / 3600}' "$data/train_labeled/utt2dur"; }

if run_stage 1 subsets; then
  after 0:prepare
  need "$data/train_labeled/utt2dur" "$data/train_unlabeled/utt2dur"
  hours=$(labeled_hours)
  log "labeled set: $hours h; subsets at $multiples x"
  for m in $multiples; do
    log_run asr-kd data subset --force --hours "$(awk -v h="$hours" -v m="$m" 'BEGIN {printf "%.4f", h * m}')" \
      --seed 0 --out $data/unl_${m}x $data/train_unlabeled
  done
  mark_done subsets
fi

if run_stage 2 teacher; then
  after 0:prepare
  need "$data/train_labeled_sp/text" "$data/dev/text"
  log_run asr-kd train --config $conf/teacher.yaml --out $exp/teacher --resume --workers $nj --no-progress \
    "data.train=[$data/train_labeled_sp]" data.dev=$data/dev
  mark_done teacher
fi

if run_stage 3 eval_teacher; then
  after 2:teacher
  need $exp/teacher/model.pt
  for set in dev dev_unl test; do
    log_run asr-kd evaluate --model $exp/teacher --data $data/$set --out $exp/teacher/eval_$set --no-progress
  done
  mark_done eval_teacher
fi

if run_stage 4 label; then
  after 0:prepare 2:teacher
  need $exp/teacher/model.pt "$data/train_unlabeled/wav.scp"
  log_run asr-kd data combine --force --out $data/train_all $data/train_labeled $data/train_unlabeled
  log_run asr-kd label --model $exp/teacher --data $data/train_all --out $exp/targets --top-k $top_k --actors $nj
  log_run asr-kd targets verify $exp/targets --data $data/train_all
  mark_done label
fi

# ------------------------------------------------------------------ students
# name config-kind seed [unlabeled-dir]: one student, resumable; its own marker so a stop loses one run
student() {
  local name=$1 kind=$2 seed=$3 unl=${4:-}
  [ "$force" != true ] && [ -f "$exp/.done/$name" ] && { log "student $name: done before"; return 0; }
  local t0=$SECONDS
  local args=(--config $conf/student_$kind.yaml --out $exp/$name --resume --no-progress
              "data.train=[$data/train_labeled]" data.dev=$data/dev units.from_model=$exp/teacher train.seed=$seed)
  if [ "$kind" = kd ]; then
    need $exp/targets/meta.json
    if [ -n "$unl" ]; then args+=("data.unlabeled=[$unl]"); else args+=("data.unlabeled=[]"); fi
    args+=(kd.store=$exp/targets)
  fi
  log_run asr-kd train "${args[@]}"
  mark_done "$name" $((SECONDS - t0))
}

# the study's students as "name kind seed unlabeled" lines, in the order they train (pairs side by side)
student_list() {
  local s
  for s in $seeds; do echo "baseline_s$s baseline $s"; done
  for m in $multiples; do
    [ "$m" = "$largest" ] || echo "kd_${m}x_s$seed0 kd $seed0 $data/unl_${m}x"
  done
  for s in $seeds; do echo "kd_${largest}x_s$s kd $s $data/unl_${largest}x"; done
  if [ "$kd0" = true ]; then echo "kd_0x_s$seed0 kd $seed0"; fi
}

# in_pairs SUFFIX FUNC LINE...: FUNC on the words of each LINE, two at a time side by side when --nj >= 2
# (one core each; the first of a pair logs to $exp/<its first word><SUFFIX>)
in_pairs() {
  local suffix=$1 fn=$2; shift 2
  local -a a b
  while [ $# -gt 0 ]; do
    read -r -a a <<< "$1"
    if [ "$nj" -ge 2 ] && [ $# -ge 2 ]; then
      read -r -a b <<< "$2"
      log "${a[0]} and ${b[0]} side by side; ${a[0]}'s log: $exp/${a[0]}$suffix"
      start_beside "$exp/${a[0]}$suffix" "$fn" "${a[@]}"
      "$fn" "${b[@]}"
      wait_beside "$fn ${a[0]}" "$exp/${a[0]}$suffix"
      grep -a '^trained ' "$exp/${a[0]}$suffix" || true
      shift 2
    else
      "$fn" "${a[@]}"
      shift
    fi
  done
}

if run_stage 5 students; then
  after 1:subsets 2:teacher 4:label
  need $exp/teacher/tokens.txt
  for m in $multiples; do need "$data/unl_${m}x/wav.scp"; done
  mapfile -t todo < <(student_list)
  in_pairs .log student "${todo[@]}"
  mark_done students
fi

evaluate_student() {  # name: dev, dev_unl and test; a baseline also at its best dev snapshot
  local name=$1 set
  for set in dev dev_unl test; do
    log_run asr-kd evaluate --model $exp/$name --data $data/$set --out $exp/$name/eval_$set --no-progress
  done
  if [[ $name == baseline_* ]]; then
    for set in dev dev_unl test; do
      log_run asr-kd evaluate --model $exp/$name --checkpoint best --data $data/$set \
        --out $exp/$name/eval_best_$set --no-progress
    done
  fi
}

if run_stage 6 eval; then
  after 3:eval_teacher 5:students
  mapfile -t names < <(student_list | cut -d' ' -f1)
  for name in "${names[@]}"; do need $exp/$name/model.pt; done
  in_pairs _eval.log evaluate_student "${names[@]}"
  mark_done eval
fi

if run_stage 7 report; then
  after 6:eval
  need $exp/teacher/eval_test/wer.json
  log_run asr-kd report --scaling $exp --data $data --out $exp/scaling.md
  cat $exp/scaling.md
fi
