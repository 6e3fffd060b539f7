#!/usr/bin/env bash
# Turn a finished training run into the shipped checkpoints and measure the model card's numbers.
#
#   training/ship_run.sh RUN_DIR [NUM_IMAGES] [DDPM_IMAGES]
#
# RUN_DIR      a run folder of `python -m diffusion_lib train` that has finished all its epochs
# NUM_IMAGES   generated images per measurement (default 10000: 1,000 per class, as the card asks)
# DDPM_IMAGES  images for the DDPM 1000-step comparison (default 1000: DDPM needs 50x the U-Net passes
#              of DPM-Solver++ 20, about 25 minutes per 1,000 images on a 2-core CPU; DPM-Solver++ 20
#              is measured again at the same size, since FID depends on the sample size)
#
# Copies the run's denoiser and ladder into checkpoints/ (or $SHIP_TO), records the checksums, draws the
# loss curve, the samples and the ladder plot, and writes every measurement to
# checkpoints/metrics/*.json, then prints the model card's tables from them (training/card_tables.py).
#
# Order: the final model at every guidance scale first, then DDPM 1000 and DDIM 50 at the guidance
# scale of lowest FID, then the ladder at guidance 3 and at that scale. A measurement whose JSON is
# newer than the weights it measured is kept, so an interrupted shipment is continued by running the
# same command again.
set -euo pipefail

RUN=${1:?usage: training/ship_run.sh RUN_DIR [NUM_IMAGES] [DDPM_IMAGES]}
N=${2:-10000}
N_DDPM=${3:-1000}
OUT=${SHIP_TO:-checkpoints}
PY=${PYTHON:-.venv/bin/python}
cd "$(dirname "$0")/.."

epochs=$("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); c=m['train_config']; \
print(m['epoch'] if m['epoch'] >= c['epochs'] else sys.exit(f'{sys.argv[1]}: epoch {m[\"epoch\"]} of {c[\"epochs\"]}; finish the run first'))" \
    "$RUN/train_state.json")
echo "shipping $RUN after epoch $epochs, measuring with $N images ($N_DDPM for DDPM 1000)"

# 1. the files: EMA weights, the ladder, the log (copied only when they differ, so that the
#    measurements of an interrupted shipment stay newer than the weights they measured)
ship() {  # FILE...
    for f in "$@"; do cmp -s "$f" "$OUT/$(basename "$f")" || cp "$f" "$OUT"/; done
}
ship "$RUN"/denoiser.json "$RUN"/denoiser.safetensors "$RUN"/train_log.jsonl
for old in "$OUT"/denoiser_epoch*.safetensors; do
    [ -e "$RUN/$(basename "$old")" ] || rm -f "$old" "${old%.safetensors}.json"
done
ship "$RUN"/denoiser_epoch*.json "$RUN"/denoiser_epoch*.safetensors
"$PY" -m diffusion_lib checksums "$OUT"

# 2. pictures: loss curve and 10 samples per class
"$PY" -c "from diffusion_lib.plotting import plot_training_log; plot_training_log('$OUT/train_log.jsonl', '$OUT/loss_curve.png')"
samples="$OUT/samples_epoch$(printf %03d "$epochs").png"
rm -f $(ls "$OUT"/samples_epoch*.png 2>/dev/null | grep -vx "$samples")
[ "$samples" -nt "$OUT/denoiser.safetensors" ] || "$PY" -m diffusion_lib sample --overwrite --checkpoint "$OUT" --all-classes \
    --num-images 10 --steps 20 --guidance 3 --seed 0 --out "$samples" --no-progress

# 3. quality: every sampler and guidance scale the card lists, the floors beside them
eval_run() {  # NAME WEIGHTS, then evaluate's options; skipped when NAME's JSON is newer than WEIGHTS
    local name=$1 weights=$2
    shift 2
    local json="$OUT/metrics/$name.json"
    if [ "$json" -nt "$weights" ]; then echo "kept $json"; return; fi
    "$PY" -m diffusion_lib evaluate --overwrite --checkpoint "$OUT" --seed 0 --no-progress --json "$json" "$@"
}
final="$OUT/denoiser.safetensors"
eval_run dpmsolver++_20 "$final" --num-images "$N" --sampler dpmsolver++ --steps 20 --guidance 0 1 2 3 5 \
    --autoencoder-floor
# the guidance scale of lowest FID-FMNIST with DPM-Solver++ 20 at NUM_IMAGES
best=$("$PY" training/card_tables.py "$OUT/metrics" --best-guidance)
echo "lowest FID at guidance $best"
eval_run ddpm_1000 "$final" --num-images "$N_DDPM" --sampler ddpm --steps 1000 --guidance "$best"
eval_run dpmsolver++_20_at_ddpm_size "$final" --num-images "$N_DDPM" --sampler dpmsolver++ --steps 20 --guidance "$best"
eval_run ddim_50 "$final" --num-images "$N" --sampler ddim --steps 50 --guidance "$best"
# the ladder at the card's guidance 3, and again at the guidance of lowest FID: a stronger model is
# over-guided sooner, so the two tell different stories about what later epochs buy
scales=3
[ "$best" = 3 ] || scales="3 $best"
for snapshot in "$OUT"/denoiser_epoch*.safetensors; do
    rung=$(basename "$snapshot" .safetensors)
    for w in $scales; do
        name="ladder_${rung#denoiser_}"
        [ "$w" = 3 ] || name="${name}_guidance$w"
        eval_run "$name" "$snapshot" --denoiser "$rung" --num-images "$N" --sampler dpmsolver++ --steps 20 --guidance "$w"
    done
done

# 4. the model card's tables, and the ladder plot: FID and accuracy against epochs (the final model is the last rung)
"$PY" training/card_tables.py "$OUT/metrics" --ladder-png "$OUT/ladder.png"
du -sh "$OUT"
