#!/usr/bin/env bash
# GPU smoke test of the LibriSpeech recipe: before the 960 h run, check on the GPU machine that the
# teacher trains there and measure it. Builds a tree in the LibriSpeech layout (synthetic
# speech-like audio, nothing downloaded), prepares it with 'asr-kd prepare librispeech', trains the
# recipe's teacher config (conf/teacher.yaml as is: 19.5 M params, 120,000 padded frames per step) for
# --max-steps optimizer steps, and writes OUT/smoke.json and OUT/smoke.md: device, dtype, steps/s,
# audio-s per s, peak GPU memory (torch.cuda.max_memory_allocated).
#
# Usage: recipes/librispeech/gpu_smoke.sh [--out DIR] [--max-steps N] [--hours H] [--device cuda|cpu]
#        [--python PY] [key=value ...]
#   --out        work dir (default exp/librispeech_gpu_smoke)
#   --max-steps  optimizer steps (default 300)
#   --hours      training audio (default 10: ~30 batches per epoch at the recipe's batch size, so epoch-end
#                dev scoring and checkpoints stay rare; beyond 0.5 h the audio files repeat through hard links)
#   --device     cuda (default): refuses with exit 3 and the reason when no usable GPU is here;
#                cpu: dry mode for a machine without a GPU, e.g.
#                --device cpu --max-steps 5 --hours 0.1 batch.max_frames=6000
#   key=value    extra overrides of the teacher config (e.g. batch.max_frames=60000 to find what fits)
# Time: synthesizing the 0.5 h of distinct audio takes ~25 s (measured: 0.1 h in 5 s on the 2-core
# Intel Xeon dev machine); the 300 steps are 300 x 1,200 s = 100 h of audio, ~1.5 min at the
# FLOP-projected 4,200 audio-s per s of one A100 (an ESTIMATE: README, "LibriSpeech: how long");
# smoke.md reports the measured steps/s.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=exp/librispeech_gpu_smoke
max_steps=300
hours=10
device=cuda
python=${PYTHON:-python}
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--max-steps|--hours|--device|--python)
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 2; }
      v=${1#--}; printf -v "${v//-/_}" '%s' "$2"; shift 2 ;;
    --help|-h) sed -n '2,/^set -/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) echo "$0: unknown option $1" >&2; exit 2 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "$0: unexpected argument $1 (config overrides are key=value)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "$0: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac
command -v "$python" > /dev/null || { echo "$0: '$python' not found: activate the asr-kd environment or pass --python" >&2; exit 2; }

exec "$python" -m tools.gpu_smoke --out "$out" --device "$device" --max-steps "$max_steps" --hours "$hours" \
  "${overrides[@]}"
