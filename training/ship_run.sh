#!/usr/bin/env bash
# Turn a finished training run into the shipped checkpoints and measure the model card's numbers.
#
#   training/ship_run.sh RUN_DIR [NUM_IMAGES] [DDPM_IMAGES]
#
# RUN_DIR      a run folder of `python -m diffusion_lib train` that has finished all its epochs
# NUM_IMAGES   generated images per measurement (default 10000: 1,000 per class, as the card asks)
# DDPM_IMAGES  images for the DDPM 1000-step comparison (default 2000: 20 million U-Net passes at
#              10,000 images take hours on a CPU; DPM-Solver++ 20 is measured again at the same size)
#
# Copies the run's denoiser and ladder into checkpoints/ (or $SHIP_TO), records the checksums, draws the
# loss curve, the samples and the ladder plot, and writes every measurement to
# checkpoints/metrics/*.json. The model card's tables are then read off those files.
set -euo pipefail

RUN=${1:?usage: training/ship_run.sh RUN_DIR [NUM_IMAGES] [DDPM_IMAGES]}
N=${2:-10000}
N_DDPM=${3:-2000}
OUT=${SHIP_TO:-checkpoints}
PY=${PYTHON:-.venv/bin/python}
cd "$(dirname "$0")/.."

epochs=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); c=m['train_config']; \
print(m['epoch'] if m['epoch'] >= c['epochs'] else sys.exit(f'{sys.argv[1]}: epoch {m[\"epoch\"]} of {c[\"epochs\"]}; finish the run first'))" \
    "$RUN/train_state.json")
echo "shipping $RUN after epoch $epochs, measuring with $N images ($N_DDPM for DDPM 1000)"

# 1. the files: EMA weights, the ladder, the log
cp "$RUN"/denoiser.json "$RUN"/denoiser.safetensors "$OUT"/
rm -f "$OUT"/denoiser_epoch*.json "$OUT"/denoiser_epoch*.safetensors
cp "$RUN"/denoiser_epoch*.json "$RUN"/denoiser_epoch*.safetensors "$OUT"/
cp "$RUN"/train_log.jsonl "$OUT"/train_log.jsonl
"$PY" -m diffusion_lib checksums "$OUT"

# 2. pictures: loss curve and 10 samples per class
"$PY" -c "from diffusion_lib.plotting import plot_training_log; plot_training_log('$OUT/train_log.jsonl', '$OUT/loss_curve.png')"
rm -f "$OUT"/samples_epoch*.png
"$PY" -m diffusion_lib sample --checkpoint "$OUT" --all-classes --num-images 10 --steps 20 --guidance 3 --seed 0 \
    --out "$OUT/samples_epoch$(printf %03d "$epochs").png" --no-progress

# 3. quality: every sampler and guidance scale the card lists, the floors beside them
eval_run() {  # NAME, then evaluate's options
    local name=$1
    shift
    "$PY" -m diffusion_lib evaluate --checkpoint "$OUT" --seed 0 --no-progress --json "$OUT/metrics/$name.json" "$@"
}
eval_run dpmsolver++_20 --num-images "$N" --sampler dpmsolver++ --steps 20 --guidance 0 1 2 3 5 --autoencoder-floor
eval_run ddim_50 --num-images "$N" --sampler ddim --steps 50 --guidance 2 3
eval_run ddpm_1000 --num-images "$N_DDPM" --sampler ddpm --steps 1000 --guidance 2 3
eval_run dpmsolver++_20_at_ddpm_size --num-images "$N_DDPM" --sampler dpmsolver++ --steps 20 --guidance 2 3
for snapshot in "$OUT"/denoiser_epoch*.safetensors; do
    rung=$(basename "$snapshot" .safetensors)
    eval_run "ladder_${rung#denoiser_}" --denoiser "$rung" --num-images "$N" --sampler dpmsolver++ --steps 20 --guidance 3
done

# 4. the ladder plot: FID and accuracy against epochs (the final model is the last rung)
"$PY" - "$OUT" "$epochs" <<'PLOT'
import json, sys
from pathlib import Path
from diffusion_lib.plotting import plot_ladder

out, final = Path(sys.argv[1]), int(sys.argv[2])
rungs = {int(p.stem.split("epoch")[1]): json.loads(p.read_text()) for p in (out / "metrics").glob("ladder_epoch*.json")}
main = json.loads((out / "metrics" / "dpmsolver++_20.json").read_text())
results = {epoch: r["results"][0] for epoch, r in rungs.items()}
results[final] = next(r for r in main["results"] if r["guidance"] == 3.0)
plot_ladder(dict(sorted(results.items())), main["real_floor"], out / "ladder.png")
print(f"wrote {out / 'ladder.png'}")
PLOT
du -sh "$OUT"
