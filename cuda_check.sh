#!/usr/bin/env bash
# The CUDA check: what to run once on a machine with an NVIDIA GPU, in one go.
#
#   ./cuda_check.sh [RESULTS_DIR]      (default: cuda-check/)
#
# 1. the CUDA-marked tests (samplers, pipeline, training on cuda against the CPU);
# 2. the benchmark on the GPU beside diffusers' UNet of the same shape;
# 3. one epoch of training on cuda (10,000 images), then a second one with --resume,
#    and the two-epoch run's log;
# 4. every notebook in quick mode with device=cuda.
# Everything it prints and writes goes into RESULTS_DIR (summary.txt first); it goes on after a
# failing step and exits non-zero if any failed. Needs ./kit setup done.
set -uo pipefail
cd "$(dirname "$0")"
OUT=$(realpath -m "${1:-cuda-check}")
mkdir -p "$OUT"
PY=.venv/bin/python
status=0
step() {  # step NAME COMMAND...: run, keep its output, note how it ended and how long it took
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    [ $rc -eq 0 ] || status=1
}

: > "$OUT/summary.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')" | tee -a "$OUT/summary.txt"
step tests "$PY" -m pytest -m cuda -q -p no:cacheprovider
step bench "$PY" -m diffusion_lib bench --device cuda --vs-diffusers
step train_epoch1 "$PY" -m diffusion_lib train --out "$OUT/run" --epochs 1 --limit 10000 --device cuda --no-progress
step train_resume "$PY" -m diffusion_lib train --out "$OUT/run" --epochs 2 --limit 10000 --device cuda --resume \
    --no-progress
cp "$OUT/run/train_log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null
mkdir -p "$OUT/notebooks"
for nb in notebooks/[0-9][0-9]_*.ipynb; do
    name=$(basename "$nb" .ipynb)
    step "notebook_$name" "$PY" -m papermill "$nb" "$OUT/notebooks/$name.ipynb" -p quick True -p device cuda \
        -p results_dir "$OUT/notebooks" --cwd notebooks -k python3 --no-progress-bar
done
exit $status
