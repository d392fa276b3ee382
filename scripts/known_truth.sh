#!/usr/bin/env bash
# The HPU-Net and PU-Net on the known-truth set (docs/small-data.md), one run per setting:
#   OUT=/tmp/kt scripts/known_truth.sh     (numpy needed; results appended to $OUT/results.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/apunet}
OUT=${OUT:-known-truth}
mkdir -p "$OUT"
python3 scripts/known_truth.py make "$OUT"
run() {  # NAME EPOCHS flags...
    local name=$1 ep=$2
    shift 2
    "$BIN" train --data "$OUT/train.npz" --out "$OUT/$name" --epochs "$ep" --filters 8,16,32 --batch-size 8 --lr 1e-3 \
        --val-fraction 0 --quiet --figure-every 100000 "$@"
    "$BIN" sample --run "$OUT/$name" --data "$OUT/test.npz" --n 32 --out "$OUT/$name/s.npz" >/dev/null
    { echo "== $name: $ep epochs, $*"; python3 scripts/known_truth.py check "$OUT" "$OUT/$name/s.npz"; } >> "$OUT/results.txt"
}
run pu 60 --transformer-levels none --latent-dim 2
HP=(--model hpunet --latent-scales 2)
run hpu_elbo_60 60 "${HP[@]}" --loss elbo
run hpu_elbo_100 100 "${HP[@]}" --loss elbo
run hpu_elbo_200 200 "${HP[@]}" --loss elbo
run hpu_geco_topk2_60 60 "${HP[@]}" --loss geco
run hpu_geco_topk2_200 200 "${HP[@]}" --loss geco
run hpu_geco_topk2_400 400 "${HP[@]}" --loss geco
run hpu_geco_topk10_80 80 "${HP[@]}" --loss geco --topk 0.1
run hpu_geco_topk10_200 200 "${HP[@]}" --loss geco --topk 0.1
run hpu_geco_all_80 80 "${HP[@]}" --loss geco --topk 1
run hpu_geco_all_200 200 "${HP[@]}" --loss geco --topk 1
