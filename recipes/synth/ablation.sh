#!/usr/bin/env bash
# Ablations of the synth recipe: each change alone against the recipe's own configuration, scored by
# dev WER (decide on dev; run.sh reports test once). Run after recipes/synth/run.sh (its data, teacher
# and store are the references); every variant trains its own model under $out/<name>/.
#
# Usage: recipes/synth/ablation.sh [--data data/synth] [--exp exp/synth] [--out exp/synth/ablation]
#                                  [--only "name1 name2"] [--nj 2]
# Variants (teacher side: each trains a teacher; student side: each trains a KD or baseline student):
#   teacher_ref      the recipe's teacher, $exp/teacher (reference for the teacher rows; not retrained)
#   teacher_bpe128   units: sentencepiece BPE, 128 pieces         (units)
#   teacher_20ms     model.subsampling=2: 20 ms output frames     (frame rate)
#   teacher_spec     SpecAugment on (2 x 10 bins, 2 x 5 % time)   (SpecAugment)
#   teacher_lr1      optim.lr=1e-3, warmup 200: the learning rate before 2026-12-02
#   teacher_sp       speed-perturbed labeled set x0.9/1.0/1.1 (needs run.sh --speed-perturb 0.9,1.0,1.1)
#   teacher_sp_d0    the same with model.dropout=0.0
#   kd_ref           the recipe's KD student, $exp/kd (reference for the student rows; not retrained)
#   kd_alpha_old     kd.ctc_weight=0.06: CTC's share of the loss before the loss-weight fix
#   kd_last          train.final=last: no weight averaging       (averaging)
#   kd_T2            targets relabeled at temperature 2           (temperature)
#   kd_ratio1        one unlabeled batch per labeled batch        (unlabeled ratio)
#   kd_filter        teacher rejects utterances with mean max prob < 0.7  (label filtering)
#   kd_spec          SpecAugment on the KD student
#   kd_lr3           optim.lr=3e-3: the baseline's learning rate (the KD student's own is 8e-3)
#   kd_chunk8        8-frame chunks (335 ms latency) instead of 15 (615 ms); baseline_chunk8 likewise
#   kd_seed1         train.seed=1: the reference again with another seed (run-to-run noise)
#   kd_a06_r1        kd_alpha_old and kd_ratio1 together
#   kd_a0_r1         kd.ctc_weight=0 (KD only, no transcripts) with one unlabeled batch per labeled batch
#   kd_v1            the store in format 1: fixed top-8 (16 B/frame) instead of the default top-p 0.999 (store size)
#   baseline_ref     the recipe's baseline student, $exp/baseline;  baseline_spec: with SpecAugment
# The table goes to $out/ablation.md (asr-kd report --ablation); every command to $out/commands.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

data=data/synth
exp=exp/synth
out=
only=
nj=2
conf=recipes/synth/conf
stage=0
stop_stage=0
. recipes/utils/stage.sh
out=${out:-$exp/ablation}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

need "$exp/teacher/model.pt" "$exp/targets/meta.json" "$data/train_all/wav.scp"
mkdir -p "$out"
exp_saved=$exp
exp=$out  # log_run appends to $out/commands.log

spec="specaug={freq_masks: 2, freq_width: 10, time_masks: 2, time_width_ratio: 0.05}"
lab="data.train=[$data/train_labeled]"
unl="data.unlabeled=[$data/train_unlabeled]"
dev="data.dev=$data/dev"

wanted() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }

teacher() {  # name overrides...
  local name=$1; shift
  log_run asr-kd train --config $conf/teacher.yaml --out "$out/$name" --resume --no-progress "$lab" "$dev" "$@"
  log_run asr-kd evaluate --model "$out/$name" --data $data/dev --out "$out/$name/eval_dev"
}

store() {  # name label-args... -> $out/stores/<name>
  local name=$1; shift
  log_run asr-kd label --model $exp_saved/teacher --data $data/train_all --out "$out/stores/$name" \
    --top-k 8 --actors 1 --no-progress "$@"
}

student() {  # name config store overrides...
  local name=$1 cfg=$2 st=$3; shift 3
  local extra=()
  [ "$cfg" = student_kd ] && extra=("$unl" "kd.store=$st")
  log_run asr-kd train --config $conf/$cfg.yaml --out "$out/$name" --resume --no-progress "$lab" "$dev" \
    units.from_model=$exp_saved/teacher "${extra[@]}" "$@"
  log_run asr-kd evaluate --model "$out/$name" --data $data/dev --out "$out/$name/eval_dev"
}

reference() {  # name model: the recipe's own model (trained and scored on dev by run.sh) is the reference row
  need "$exp_saved/$2/eval_dev/wer.json"
  ln -sfn "$(cd "$exp_saved/$2" && pwd)" "$out/$1"
}

# one job per line: name, then the command; run $nj at a time (one thread each)
jobs_list=(
  "teacher_ref|reference teacher_ref teacher"
  "teacher_bpe128|teacher teacher_bpe128 units.kind=bpe units.bpe_vocab_size=128"
  "teacher_20ms|teacher teacher_20ms model.subsampling=2"
  "teacher_spec|teacher teacher_spec '$spec'"
  "teacher_lr1|teacher teacher_lr1 optim.lr=1e-3 optim.warmup_steps=200"
  "teacher_sp|teacher teacher_sp data.train=[$data/train_labeled_sp]"
  "teacher_sp_d0|teacher teacher_sp_d0 data.train=[$data/train_labeled_sp] model.dropout=0.0"
  "kd_ref|reference kd_ref kd"
  "kd_alpha_old|student kd_alpha_old student_kd $exp_saved/targets kd.ctc_weight=0.06"
  "kd_last|student kd_last student_kd $exp_saved/targets train.final=last"
  "kd_T2|store T2 --temperature 2 && student kd_T2 student_kd $out/stores/T2 kd.temperature=2"
  "kd_ratio1|student kd_ratio1 student_kd $exp_saved/targets kd.unlabeled_per_labeled=1"
  "kd_filter|store filter --min-max-prob 0.7 && student kd_filter student_kd $out/stores/filter"
  "kd_spec|student kd_spec student_kd $exp_saved/targets '$spec'"
  "baseline_ref|reference baseline_ref baseline"
  "baseline_spec|student baseline_spec student_baseline - '$spec'"
  "kd_lr3|student kd_lr3 student_kd $exp_saved/targets optim.lr=3e-3"
  "kd_chunk8|student kd_chunk8 student_kd $exp_saved/targets model.chunk_size=8 model.left_chunks=4"
  "baseline_chunk8|student baseline_chunk8 student_baseline - model.chunk_size=8 model.left_chunks=4"
  "kd_seed1|student kd_seed1 student_kd $exp_saved/targets train.seed=1"
  "kd_a06_r1|student kd_a06_r1 student_kd $exp_saved/targets kd.ctc_weight=0.06 kd.unlabeled_per_labeled=1"
  "kd_a0_r1|student kd_a0_r1 student_kd $exp_saved/targets kd.ctc_weight=0 kd.unlabeled_per_labeled=1"
  "kd_v1|store v1 --format-version 1 --top-p 1 && student kd_v1 student_kd $out/stores/v1"
)

running=0
for job in "${jobs_list[@]}"; do
  name=${job%%|*}
  cmd=${job#*|}
  wanted "$name" || continue
  if [ -f "$out/.done/$name" ]; then log "$name: done before, skipping"; continue; fi
  log "ablation $name (log: $out/$name.log)"
  ( eval "$cmd" && mark_done "$name" ) > "$out/$name.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge "$nj" ]; then wait -n || log "a variant failed; see its log in $out"; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n || log "a variant failed; see its log in $out"; running=$((running - 1)); done

log_run asr-kd report --ablation "$out" --out "$out/ablation.md"
cat "$out/ablation.md"
