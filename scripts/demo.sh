#!/usr/bin/env bash
# The README's main job (`make demo`), on the real samples in ../shared/data:
# prepare -> train a tiny segmenter -> evaluate vs baselines -> tiled predict ->
# validate a webcam stream, pair it, train a tiny translator, translate with a sky-only composite ->
# export the segmenter to a TF Serving repository -> segment one image through `tfsky serve` + `tfsky client`.
# Everything lands in $OUT (default demo_out/); a re-run starts the trainings afresh.
set -euo pipefail

OUT=${OUT:-demo_out}
DATA=${DATA:-../shared/data}
GRPC_PORT=${GRPC_PORT:-8500}
REST_PORT=${REST_PORT:-8501}
[ -d "$DATA" ] || { echo "demo: sample data not found at $DATA (set DATA=...)" >&2; exit 1; }
rm -rf "$OUT/runs" "$OUT/models"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
newest_run() { ls -td "$OUT/runs/$1"/*/ | head -n 1; }

step "1/8 prepare the sky cache (ADE20K photos + SkyFinder webcams)"
tfsky data prepare -c configs/sky_tiny.yaml --set data.cache="$OUT/cache/sky_tiny"

step "2/8 train the tiny segmenter (a CPU minute; not a good model)"
tfsky train segmenter -c configs/sky_tiny.yaml --set data.cache="$OUT/cache/sky_tiny" --set train.runs_root="$OUT/runs"
MODEL="$(newest_run sky_tiny)best.keras"

step "3/8 evaluate on the validation split against the naive baselines"
tfsky evaluate segmenter --model "$MODEL" --data "$OUT/cache/sky_tiny" --out "$OUT/eval"

step "4/8 tiled prediction on a webcam stream (overlays, probability maps, JSON sidecars)"
tfsky predict --model "$MODEL" "$DATA/skyfinder_webcams/623" --out "$OUT/predict" --overwrite

step "5/8 validate the camera-623 stream, build clear->overcast pairs, train a tiny translator"
TRANSLATOR_SETS=(--set streams.manifests="$OUT/streams/skyfinder" --set pairs.file="$OUT/streams/pairs.json" --set train.runs_root="$OUT/runs")
tfsky streams validate -c configs/translator_tiny.yaml "${TRANSLATOR_SETS[@]}"
tfsky streams pairs -c configs/translator_tiny.yaml "${TRANSLATOR_SETS[@]}"
tfsky train translator -c configs/translator_tiny.yaml "${TRANSLATOR_SETS[@]}"
TRANSLATOR="$(newest_run translator_tiny)best.keras"

step "6/8 translate a clear frame, keeping everything but the sky"
CLEAR="$DATA/skyfinder_webcams/623/$(awk -F, 'tolower($0) ~ /,clear/ {print $1; exit}' "$DATA/skyfinder_webcams/weather_labels_cam623.csv" | xargs basename)"
tfsky translate --model "$TRANSLATOR" "$CLEAR" --out "$OUT/translate" --composite \
  --mask "$DATA/skyfinder_webcams/623-mask.png" --overwrite

step "7/8 export to a TF Serving model repository"
tfsky export --model "$MODEL" --name sky_segmenter --repo "$OUT/models"
tfsky export --info "$OUT/models/sky_segmenter/1"

step "8/8 segment one image through tfsky serve + tfsky client (gRPC)"
tfsky serve --repo "$OUT/models" --grpc-port "$GRPC_PORT" --rest-port "$REST_PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  tfsky client status --server "127.0.0.1:$GRPC_PORT" --model sky_segmenter >/dev/null 2>&1 && break
  sleep 1
done
tfsky client status --server "127.0.0.1:$GRPC_PORT" --model sky_segmenter
tfsky client predict --server "127.0.0.1:$GRPC_PORT" --model sky_segmenter \
  "$DATA/sky_ade20k/images/$(ls "$DATA/sky_ade20k/images" | head -n 1)" --out "$OUT/client" --overwrite
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
trap - EXIT

step "done: outputs in $OUT/ (eval/eval.md, predict/*_overlay.jpg, translate/, models/, client/)"
