#!/usr/bin/env bash
# Labeling on a GPU, measured: run once on a machine with an NVIDIA GPU and asr-kd installed
# (`make install` or `pip install -e .`); writes three sections of BENCHMARKS.md:
#   label_throughput_gpu  the Ray pipeline vs a naive loop vs the teacher-forward ceiling on the GPU(s):
#                         audio-hours per GPU-hour, mean GPU utilization (nvidia-smi), GPU-hours for 1 M hours
#   label_precision_cuda  KL(fp32 || bf16 / fp16) of the targets and their speed on the GPU
#
# Usage: tools/bench/gpu_label.sh [--model TEACHER_DIR] [--utts N] [--precision fp32|bf16] [--preset NAME]
#   --model   a trained teacher (default: the LibriSpeech recipe's teacher architecture with random
#             weights and 39 character units: throughput does not depend on the weights; the KL figures
#             do, so give a trained teacher for those, e.g. exp/synth/teacher after `make demo`)
#   --preset  the architecture of the random teacher: a PRESETS name or a config YAML with a model section
#   --utts    synthetic 2-6 s utterances to label (default 2000, about 2.2 h)
#   --precision  the pipeline's teacher precision (default bf16; fp32 is measured as the ceiling anyway)
# Takes about 5-10 minutes on one GPU. Refuses (exit 2) where no CUDA GPU is usable.
set -euo pipefail
cd "$(dirname "$0")/../.."
model="" utts=2000 precision=bf16 preset=recipes/librispeech/conf/teacher.yaml
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --utts) utts=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    *) echo "gpu_label.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python}
if ! command -v nvidia-smi > /dev/null; then
  echo "gpu_label.sh: nvidia-smi not found: this needs a machine with an NVIDIA GPU and its driver" >&2; exit 2
fi
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_label.sh: torch sees no usable CUDA device (driver too old for torch $("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')?); see the README's GPU notes" >&2
  exit 2
fi
work=$(mktemp -d -t gpu-label-XXXX); trap 'rm -rf "$work"' EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
ngpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
if [ -z "$model" ]; then
  model=$work/teacher
  "$python" -c "import sys; from pathlib import Path; from tools.bench.fixtures import random_model_dir; random_model_dir(Path(sys.argv[1]), sys.argv[2])" "$model" "$preset"
fi
"$python" -c "import sys; from pathlib import Path; from tools.bench.fixtures import synthetic_data; synthetic_data(Path(sys.argv[1]), int(sys.argv[2]))" "$work/corpus" "$utts"
actors="1"; [ "$ngpu" -gt 1 ] && actors="1 $ngpu"
# shellcheck disable=SC2086
"$python" -m tools.bench.label_throughput --gpu --model "$model" --data "$work/corpus/data" --actors $actors \
  --precision "$precision" --naive-threads "$(nproc)"
"$python" -m tools.bench.label_precision --device cuda --model "$model" --data "$work/corpus/data" --max-utts 400 --batch-utts 64
echo "gpu_label.sh: done; sections label_throughput_gpu and label_precision_cuda of BENCHMARKS.md"
