#!/usr/bin/env bash
# The ablation of docs/ablation.md: every model on the real LIDC crops, one series-grouped
# split, the same training budget for every row, several seeds. Resumable: a row whose run or
# evaluation is complete is skipped; an interrupted run continues (train --resume).
#
#   cargo build --release && scripts/ablation.sh            # EPOCHS=60 SEEDS="1 2 3"
#   EPOCHS=20 SEEDS=1 OUT=/tmp/abl scripts/ablation.sh       # a quick look
#   ONLY="3_coarsest 3f_recipe" scripts/ablation.sh           # some rows only
#
# Then: python3 scripts/ablation_table.py ablation > table.md
#
# Each finished row's scores (eval/metrics.json, eval/per_image.csv, train_seconds) are also
# copied to KEEP (default docs/ablation-runs, committed), and a row found there is not run
# again: OUT may live on a disk that does not outlast the machine, the scores do.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/apunet}
DATA=${DATA:-../shared/data/lidc/lidc-small-train.npz}
OUT=${OUT:-ablation}
EPOCHS=${EPOCHS:-60}
SEEDS=${SEEDS:-"1 2 3"}
KEEP=${KEEP:-docs/ablation-runs}
# The commit BIN was built from, recorded beside each kept row (a copied binary may be older).
BIN_COMMIT=${BIN_COMMIT:-$(git rev-parse --short HEAD)}
# 64-px patches (a third over a lesion), evaluated on whole 128-px crops of held-out series.
COMMON=(--patch 64 --batch-size 8 --lr 5e-4 --val-fraction 0 --figure-every 100000 --quiet)
PU=(--filters 16,32,64,96)
RECIPE=(--spatial-augment --intensity-augment --copy-paste 0.5 --lr-schedule poly --lr-warmup-epochs 5 --ema 0.99)
declare -A ROWS=(
    [1_punet]="${PU[*]} --no-attention"
    [2_gates]="${PU[*]} --transformer-levels none"
    [3_coarsest]="${PU[*]}"
    [4_every_level]="${PU[*]} --transformer-levels all"
    [5_hpunet_elbo]="--model hpunet --loss elbo"
    [6_hpunet_geco]="--model hpunet --loss geco"
    [7_hpaunet_geco]="--model hpunet --attention --loss geco"
    # The small-data recipe (issue 27) on the default model: each part alone, then together.
    [3a_spatial]="${PU[*]} --spatial-augment"
    [3b_intensity]="${PU[*]} --intensity-augment"
    [3c_schedule]="${PU[*]} --lr-schedule poly --lr-warmup-epochs 5"
    [3d_ema]="${PU[*]} --ema 0.99"
    [3e_paste]="${PU[*]} --copy-paste 0.5"
    [3f_recipe]="${PU[*]} ${RECIPE[*]}"
    [4f_every_level_recipe]="${PU[*]} --transformer-levels all ${RECIPE[*]}"
    [6f_hpunet_geco_recipe]="--model hpunet --loss geco ${RECIPE[*]}"
    # GECO with top-k 10%: with the reference's 2%, the HPU-Net takes 5x the steps to sample
    # findings only some experts marked on the known-truth set (docs/small-data.md).
    [6g_hpunet_geco_topk10]="--model hpunet --loss geco --topk 0.1"
    # The reference's GECO with its multiplier moving at the network's learning rate, as one Adam
    # over the network and the multiplier moves it in DeepMind's code (bench/torch_hpunet_train.py).
    [6r_hpunet_geco_rate]="--model hpunet --loss geco --geco-rate 5e-4"
    # ... and with the output starting at p = 0.5 as DeepMind's does (apunet's starts at 0.05).
    [6s_hpunet_geco_rate_prior]="--model hpunet --loss geco --geco-rate 5e-4 --output-prior 0.5"
    # ... and with orthogonal convolution weights: DeepMind's training, as far as apunet goes.
    [6t_hpunet_deepmind]="--model hpunet --loss geco --geco-rate 5e-4 --output-prior 0.5 --init orthogonal"
    # ... with the recipe's learning-rate schedule and weight average: 6t's checkpoints swing
    # from marking both crops all four experts marked to marking neither (docs/small-data.md).
    [6u_hpunet_deepmind_schedule]="--model hpunet --loss geco --geco-rate 5e-4 --output-prior 0.5 --init orthogonal --lr-schedule poly --lr-warmup-epochs 5 --ema 0.99"
    # Synthetic lesions (issue 27): real lesions' masks placed in other training crops, painted
    # by the lesion painter or pasted with the donor's pixels (the same masks and places), as
    # half of every batch. An epoch is then 10 steps of 4 real crops: half the epochs.
    [3p_painted]="${PU[*]} --extra $OUT/painted.npz --extra-ratio 0.5"
    [3q_pasted]="${PU[*]} --extra $OUT/pasted.npz --extra-ratio 0.5"
)
# Rows trained for half the epochs to keep the same number of steps.
declare -A HALF=([3p_painted]=1 [3q_pasted]=1)
ONLY=${ONLY:-$(printf '%s\n' "${!ROWS[@]}" | sort | tr '\n' ' ')}
mkdir -p "$OUT"
if [ ! -f "$OUT/test.npz" ]; then
    "$BIN" split --data "$DATA" --val-fraction 0.25 --seed 0 --train-out "$OUT/train.npz" --val-out "$OUT/test.npz"
fi
# The painter (on the training crops only) and its 200 examples with their copy-paste twins.
if [[ " $ONLY " == *" 3p_painted "* || " $ONLY " == *" 3q_pasted "* ]] && [ ! -f "$OUT/pasted.npz" ]; then
    if [ -f "$OUT/painter/checkpoints/state.json" ]; then
        "$BIN" gan train --resume --out "$OUT/painter" --quiet
    else
        "$BIN" gan train --mode painter --data "$OUT/train.npz" --out "$OUT/painter" --epochs 60 --base 16 --blocks 6 --seed 0 --quiet
    fi
    "$BIN" gan generate --gan "$OUT/painter" --data "$OUT/train.npz" --count 200 --seed 1 --out "$OUT/painted.npz" --copy-out "$OUT/pasted.npz"
fi
for seed in $SEEDS; do
    for row in $ONLY; do
        run="$OUT/$row/seed$seed"
        kept="$KEEP/$row/seed$seed"
        if [ -f "$kept/eval/metrics.json" ] || grep -q "^$row,$seed," "$KEEP/earlier-seeds.csv" 2>/dev/null; then
            echo "$row seed $seed: kept in $KEEP"
            continue
        fi
        read -r -a flags <<< "${ROWS[$row]}"
        epochs=$EPOCHS
        [ -n "${HALF[$row]:-}" ] && epochs=$(( EPOCHS / 2 ))
        done_epochs=$(tail -n +2 "$run/metrics.csv" 2>/dev/null | wc -l || true)
        if [ "$done_epochs" -lt "$epochs" ]; then
            start=$(date +%s)
            if [ -f "$run/checkpoints/state.json" ]; then
                "$BIN" train --resume "$run" --epochs "$epochs" --quiet
            else
                "$BIN" train --data "$OUT/train.npz" --out "$run" --seed "$seed" --epochs "$epochs" "${COMMON[@]}" "${flags[@]}"
            fi
            echo $(( $(date +%s) - start )) >> "$run/train_seconds"
        fi
        if [ ! -f "$run/eval/metrics.json" ]; then
            "$BIN" eval --run "$run" --data "$OUT/test.npz" --out "$run/eval" --n 16 --checkpoint last --seed "$seed" >/dev/null
        fi
        mkdir -p "$kept/eval"
        cp "$run/eval/per_image.csv" "$kept/eval/"
        [ -f "$run/train_seconds" ] && cp "$run/train_seconds" "$kept/"
        echo "$BIN_COMMIT" > "$kept/binary_commit"
        cp "$run/eval/metrics.json" "$kept/eval/metrics.json.tmp" && mv "$kept/eval/metrics.json.tmp" "$kept/eval/metrics.json"
        echo "$row seed $seed: $(python3 -c "import json;m=json.load(open('$run/eval/metrics.json'))['metrics'];print('GED %.3f HM-IoU %.3f' % (m['ged']['mean'], m['hm_iou']['mean']))")"
    done
done
# Throughput of each row in one quiet stretch: training at the patch size, sampling at 128 px
# (BENCH=0 skips it; the recipe rows share their model's figures).
[ "${BENCH:-1}" = 0 ] && exit 0
for row in $ONLY; do
    [[ "$row" == 3[a-f]_* || "$row" == *_recipe ]] && continue
    f="$OUT/$row/bench.json"
    [ -f "$KEEP/$row/bench.json" ] && continue
    mkdir -p "$OUT/$row"    # a row kept from an earlier machine has no run folder here
    read -r -a flags <<< "${ROWS[$row]}"
    bflags=()
    for x in "${flags[@]}"; do
        case "$x" in --loss|elbo|geco) ;; *) bflags+=("$x");; esac
    done
    # The HPU-Net trained on 64-px patches has 7 levels; time that model at 128 px too.
    [[ "$row" == *hpu* ]] && bflags+=(--filters 24,48,96,192,192,192,192)
    train=$("$BIN" bench --device cpu --size 64 --steps 5 --warmup 2 "${bflags[@]}")
    sample=$("$BIN" bench --device cpu --size 128 --steps 3 --warmup 1 "${bflags[@]}")
    python3 -c "import json,sys; t=json.loads(sys.argv[1]); s=json.loads(sys.argv[2]); json.dump({'train_images_per_s_64': t['train_images_per_s'], 'sampled_masks_per_s_128': s['sampled_masks_per_s'], 'params': t['params']}, open('$f','w'))" "$train" "$sample"
    mkdir -p "$KEEP/$row" && cp "$f" "$KEEP/$row/bench.json"
done
