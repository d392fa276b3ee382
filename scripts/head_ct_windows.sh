#!/usr/bin/env bash
# docs/head-ct.md: the default model on the synthetic head CT through the lung window, the
# brain window and three windows stacked as channels (brain, subdural, bone), same cases, same
# budget, several seeds. Resumable per run; scores are kept in KEEP (committed).
#   cargo build --release && OUT=/tmp/hw scripts/head_ct_windows.sh
#   ROWS=stacked OUT=/tmp/hw scripts/head_ct_windows.sh      # one row only
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/apunet}
OUT=${OUT:-head-ct-windows}
KEEP=${KEEP:-docs/head-ct-runs}
EPOCHS=${EPOCHS:-100}
SEEDS=${SEEDS:-"1 2 3"}
ROWS=${ROWS:-"lung brain stacked"}
BIN_COMMIT=${BIN_COMMIT:-$(git rev-parse --short HEAD)}
declare -A WINDOWS=([lung]=lung [brain]=brain [stacked]=brain,subdural,bone)
mkdir -p "$OUT"
# Training and test cases from different generator seeds: different "patients".
[ -d "$OUT/train" ] || "$BIN" synth --kind head-ct --out "$OUT/train" --count 40 --seed 0
[ -d "$OUT/test" ] || "$BIN" synth --kind head-ct --out "$OUT/test" --count 20 --seed 1
for w in $ROWS; do
    for part in train test; do
        [ -f "$OUT/$part-$w.npz" ] || "$BIN" import --input "$OUT/$part" --out "$OUT/$part-$w.npz" --windows "${WINDOWS[$w]}" --spacing 0.5 --crop 64 --background-share 0
    done
done
for seed in $SEEDS; do
    for w in $ROWS; do
        run="$OUT/$w/seed$seed"
        kept="$KEEP/$w/seed$seed"
        [ -f "$kept/eval/metrics.json" ] && continue
        if [ -f "$run/checkpoints/state.json" ]; then
            "$BIN" train --resume "$run" --quiet
        else
            "$BIN" train --data "$OUT/train-$w.npz" --out "$run" --seed "$seed" --epochs "$EPOCHS" --batch-size 8 --lr 5e-4 \
                --filters 16,32,64,96 --val-fraction 0 --figure-every 100000 --quiet
        fi
        "$BIN" eval --run "$run" --data "$OUT/test-$w.npz" --out "$run/eval" --n 16 --checkpoint last --seed "$seed" --no-review >/dev/null
        mkdir -p "$kept/eval"
        cp "$run/eval/per_image.csv" "$kept/eval/"
        cp "$run/eval/metrics.json" "$kept/eval/metrics.json.tmp" && mv "$kept/eval/metrics.json.tmp" "$kept/eval/metrics.json"
        echo "$BIN_COMMIT" > "$kept/binary_commit"
        echo "$w seed $seed: $(python3 -c "import json;m=json.load(open('$run/eval/metrics.json'));print('GED %.3f HM-IoU %.3f Dice %.3f' % (m['metrics']['ged']['mean'], m['metrics']['hm_iou']['mean'], m['metrics']['dice_majority']['mean']))")"
    done
done
