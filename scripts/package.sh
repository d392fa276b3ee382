#!/usr/bin/env bash
# Builds the release binary (default: the GPU build, feature wgpu) and packs it to travel:
# dist/apunet-VERSION-TARGET-FEATURE.tar.xz holding the stripped binary, the Vulkan loader this
# machine has (for GPU machines without one), a launcher that finds that loader, and the README.
#
#   scripts/package.sh            # wgpu
#   FEATURE=cuda scripts/package.sh
#
# Run it as `dist/NAME/apunet-run ARGS` (or plain `apunet` where the system has libvulkan.so.1).
set -euo pipefail
cd "$(dirname "$0")/.."
feature="${FEATURE:-wgpu}"

cargo build --release --locked --features "$feature"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target=$(rustc -vV | sed -n 's/^host: //p')
name="apunet-$version-$target-$feature"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/lib" dist

cp target/release/apunet "$stage/$name/apunet"
strip "$stage/$name/apunet"
cp README.md "$stage/$name/"

# wgpu opens libvulkan.so.1 at run time; ship this machine's loader beside the binary.
libs="$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)"
loader=$(awk '/libvulkan\.so\.1 .*(x86-64|AArch64)/ {print $NF; exit}' <<<"$libs")
if [ "$feature" = wgpu ] && [ -n "$loader" ]; then
    cp -L "$loader" "$stage/$name/lib/libvulkan.so.1"
else
    echo "note: no Vulkan loader found here; the package relies on the target's libvulkan.so.1" >&2
fi
cat > "$stage/$name/apunet-run" <<'LAUNCH'
#!/bin/sh
# Prefers the system's Vulkan loader, falls back to the one shipped in lib/.
here=$(dirname "$(readlink -f "$0")")
if ! { ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null; } | grep -q 'libvulkan\.so\.1'; then
    export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$here/apunet" "$@"
LAUNCH
chmod +x "$stage/$name/apunet-run"

# Written under a temporary name and renamed: an interrupted run leaves no half archive.
tar -C "$stage" -cf - "$name" | xz -T0 -6 > "dist/.$name.tar.xz.tmp"
mv "dist/.$name.tar.xz.tmp" "dist/$name.tar.xz"
ls -l "dist/$name.tar.xz"
echo "unpacked: $(du -sh "$stage/$name" | cut -f1); binary $(du -h "$stage/$name/apunet" | cut -f1)"
