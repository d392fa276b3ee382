#!/usr/bin/env bash
# GPU figures on a machine with an NVIDIA GPU and no Rust toolchain: the prebuilt wgpu binary
# (scripts/package.sh) against the PyTorch peer on CUDA, same models and flags, one after the
# other. Every measured step prints a line as it ends, so a run cut short still reports.
#
#   bench/gpu.sh path/to/apunet-run [python3]
set -uo pipefail
bin="${1:?usage: bench/gpu.sh path/to/apunet-run-or-apunet [python]}"
py="${2:-python3}"
here="$(dirname "$0")"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}" PYTHONUNBUFFERED=1

run() {
    echo "== $*"
    local t0=$SECONDS
    "$@" 2>&1
    echo "== exit $? after $((SECONDS - t0)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
# The default model at 128 px, batch 32; then the LIDC recipe (filters 16-32-64-96, 64 px).
for flags in "--size 128 --batch-size 32" "--size 64 --batch-size 32 --filters 16,32,64,96"; do
    # shellcheck disable=SC2086
    run "$bin" bench --device wgpu --steps 10 --warmup 3 $flags
    # shellcheck disable=SC2086
    run "$py" "$here/torch_peer.py" --device cuda --steps 10 --warmup 3 $flags
done
run "$bin" gan bench --device wgpu --sizes 128,256 --steps 5
run "$py" "$here/torch_cyclegan.py" --device cuda --sizes 128,256 --steps 5
