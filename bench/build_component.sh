#!/usr/bin/env bash
# Builds bench/modules/hello-http-component (a wasi:http@0.2 proxy component, the benchmark's
# baseline for native `wasmtime serve`) into build/modules/hello-http-component.wasm:
#   1. lib.rs -> a core module, by Debian's rustc (the only one here with a wasm32 `core`);
#   2. `wasm-tools component embed` with wit/world.wit and the WASI 0.2 WIT it refers to;
#   3. `wasm-tools component new` -> the component, then `wasm-tools validate`.
# Tools and inputs, each pinned below, are cached under $WASMFLEET_CACHE (~/.cache/wasmfleet):
#   bin/wasm-tools-<version>/  built from source (e2e/toolchain/wasm-tools.sh, which pins it)
#   wit/wasip2-<version>/      the `deps/` WIT of the wasip2 crate (WASI's own WIT, identical
#                              to what wasmtime-wasi-http 49 implements)
# Needs Debian's rustc with libstd-rust-dev-wasm32 (make system-packages) and, for the cold
# build, a cargo >= 1.88 on PATH (rustup's). Crate archives are checked against the SHA-256
# sums below as well as by cargo. A warm run with an up-to-date output does nothing.
set -euo pipefail

source "$(dirname "$0")/../e2e/toolchain/wasm-tools.sh"  # install_wasm_tools, check_crate, cargo_fetch
# wasip2 is only downloaded for its wit/ folder; cargo brings its two dependencies along.
WASIP2_VERSION=2.0.1+wasi-0.2.12
WASIP2_SHA256=89aafd4b69fb41a64cfd5d7f214cde92ab422ec4d9bcd55fcc816d3f5f49bbf3
WIT_BINDGEN_VERSION=0.62.0
WIT_BINDGEN_SHA256=53cb4b5556c3a791e86838ea287782bdafa704d55b0e68b5b81a3a16b9ea5f4b
BITFLAGS_VERSION=2.13.2
BITFLAGS_SHA256=3ded4057c258ba199e2d26386d3af3780957ecaee6c4ef4041c6b4b8b97c0b06

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
source_dir="$here/modules/hello-http-component"
output="$repo/build/modules/hello-http-component.wasm"
cache=${WASMFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmfleet}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustc_wasm=${WASMFLEET_RUSTC:-/usr/bin/rustc}

wit_dir="$cache/wit/wasip2-${WASIP2_VERSION}"

die() { echo "build_component: $*" >&2; exit 1; }

fetch_wit() {
  if [ -f "$wit_dir/deps/http.wit" ]; then
    return
  fi
  require_cargo
  echo "wasip2 ${WASIP2_VERSION}: fetching its WIT"
  mkdir -p "$cache/wit"
  local tmp; tmp=$(mktemp -d "$cache/wit/.fetch.XXXXXX")
  # cargo downloads wasip2 for its WIT; naming its two dependencies pins the whole graph
  cargo_fetch "$tmp" wit-carrier <<DEPS
wasip2 = "=${WASIP2_VERSION}"
wit-bindgen = { version = "=${WIT_BINDGEN_VERSION}", default-features = false }
bitflags = "=${BITFLAGS_VERSION}"
DEPS
  check_crate wasip2 "$WASIP2_VERSION" "$WASIP2_SHA256"
  check_crate wit-bindgen "$WIT_BINDGEN_VERSION" "$WIT_BINDGEN_SHA256"
  check_crate bitflags "$BITFLAGS_VERSION" "$BITFLAGS_SHA256"
  local manifest
  manifest=$(cd "$tmp/carrier" && cargo metadata --quiet --offline --format-version 1 |
    python3 -c 'import json, sys
print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wasip2"))')
  mkdir -p "$tmp/out" && cp -r "$(dirname "$manifest")/wit/deps" "$tmp/out/deps"
  rm -rf "$wit_dir" && mv "$tmp/out" "$wit_dir" && rm -rf "$tmp"
}

up_to_date() {
  [ -f "$output" ] || return 1
  [ -z "$(find "$source_dir" "$here/build_component.sh" -type f -newer "$output" -print -quit)" ]
}

build() {
  "$rustc_wasm" --print target-libdir --target wasm32-unknown-unknown >/dev/null 2>&1 ||
    die "${rustc_wasm} has no wasm32 core library (make system-packages: libstd-rust-dev-wasm32)"
  work=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
  trap 'rm -rf "$work"' EXIT
  # The WIT package: our world beside the pinned WASI packages it names.
  mkdir -p "$work/wit" && cp "$source_dir/wit/world.wit" "$work/wit/" &&
    cp -r "$wit_dir/deps" "$work/wit/deps"
  "$rustc_wasm" --edition 2021 --crate-type cdylib --target wasm32-unknown-unknown \
    -C opt-level=2 -C panic=abort -C strip=symbols -o "$work/core.wasm" "$source_dir/lib.rs"
  "$wasm_tools" component embed "$work/wit" --world hello "$work/core.wasm" -o "$work/embedded.wasm"
  "$wasm_tools" component new "$work/embedded.wasm" -o "$work/component.wasm"
  "$wasm_tools" validate "$work/component.wasm"
  mkdir -p "$(dirname "$output")" && mv "$work/component.wasm" "$output"
  echo "hello-http-component $(stat -c %s "$output") bytes  ${output#"$repo"/}"
}

install_wasm_tools
fetch_wit
if up_to_date; then
  echo "hello-http-component: up to date (${output#"$repo"/})"
else
  build
fi
