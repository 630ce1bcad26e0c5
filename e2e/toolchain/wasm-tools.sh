#!/usr/bin/env bash
# The component toolchain, built or fetched from crates.io at pinned versions and cached under
# $WASMFLEET_CACHE (~/.cache/wasmfleet):
#   bin/wasm-tools-<version>/bin/wasm-tools   `cargo install --locked` of wasm-tools, only its
#                                             component and validate subcommands (every
#                                             dependency checked against its Cargo.lock;
#                                             cold: 5-7 minutes on 2 cores)
#   adapters/<version>/wasi_snapshot_preview1.{command,reactor,proxy}.wasm
#                                             the WASI preview 1 adapters of the Bytecode
#                                             Alliance's wasi-preview1-component-adapter-provider
#                                             crate (the same version as the wasmtime the agent
#                                             runs), which turn a preview 1 program into a
#                                             WASI 0.2 component
#   wit/wasip2-<version>/deps/                the WASI 0.2 WIT of the wasip2 crate, which
#                                             wasi:http components are built against
# Crate archives are checked against the SHA-256 sums below. Source it for the functions
# (install_wasm_tools, fetch_adapters, fetch_wit, check_crate, cargo_fetch; then $wasm_tools,
# $adapters_dir and $wit_dir), or run it to make all three and print their paths. Needs a cargo >= 1.88 on PATH (rustup's) for the cold build.
set -euo pipefail

WASM_TOOLS_VERSION=1.263.0
WASM_TOOLS_SHA256=14b8ed798ec13f0e0939dcc403836ba5fd7fb29ff9772e6438a9bcc227bfdc96
WASM_TOOLS_MIN_RUST=1.88
# The WASI 0.2 WIT that wasi:http components are built against: the wit/deps of the wasip2
# crate (WASI's own WIT); cargo brings its two dependencies along, pinned here too.
WASIP2_VERSION=2.0.1+wasi-0.2.12
WASIP2_SHA256=89aafd4b69fb41a64cfd5d7f214cde92ab422ec4d9bcd55fcc816d3f5f49bbf3
WIT_BINDGEN_VERSION=0.62.0
WIT_BINDGEN_SHA256=53cb4b5556c3a791e86838ea287782bdafa704d55b0e68b5b81a3a16b9ea5f4b
BITFLAGS_VERSION=2.13.2
BITFLAGS_SHA256=3ded4057c258ba199e2d26386d3af3780957ecaee6c4ef4041c6b4b8b97c0b06
ADAPTER_VERSION=50.0.1
ADAPTER_SHA256=08af31e188aec735fabb6370000e3c5954eae92d434a63ad22f665b55b01dda4

toolchain_cache=${WASMFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmfleet}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
wasm_tools_dir="$toolchain_cache/bin/wasm-tools-${WASM_TOOLS_VERSION}"
wasm_tools="$wasm_tools_dir/bin/wasm-tools"
adapters_dir="$toolchain_cache/adapters/${ADAPTER_VERSION}"
wit_dir="$toolchain_cache/wit/wasip2-${WASIP2_VERSION}"

toolchain_die() { echo "wasm-tools.sh: $*" >&2; exit 1; }

# Checks a crate archive in cargo's download cache against a pinned sum.
check_crate() {
  local name=$1 version=$2 sha256=$3 archive
  archive=$(find "$cargo_home/registry/cache" -name "${name}-${version}.crate" -print -quit)
  [ -n "$archive" ] || toolchain_die "cargo left no archive of ${name} ${version}"
  echo "${sha256}  ${archive}" | sha256sum --check --quiet - ||
    toolchain_die "${name} ${version}: checksum mismatch in ${archive}"
  crate_archive=$archive
}

require_cargo() {
  # rustup installs into ~/.cargo/bin, which a non-login shell may not have on its PATH
  command -v cargo >/dev/null || PATH="$cargo_home/bin:$PATH"
  # Debian's cargo is too old for current crates; the rustup toolchain on PATH builds them.
  command -v cargo >/dev/null || toolchain_die "cargo (Rust >= ${WASM_TOOLS_MIN_RUST}) is not on PATH"
  local have; have=$(cargo --version | awk '{print $2}')
  printf '%s\n%s\n' "$WASM_TOOLS_MIN_RUST" "$have" | sort -V --check=quiet ||
    toolchain_die "cargo ${have} is too old: wasm-tools ${WASM_TOOLS_VERSION} needs >= ${WASM_TOOLS_MIN_RUST}"
}

# Makes cargo download crates into its cache: a throwaway package in DIR/carrier (named NAME)
# whose [dependencies] are the lines on stdin; exact versions there pin the whole graph.
cargo_fetch() {
  local dir=$1 name=$2
  mkdir -p "$dir/carrier/src" && : >"$dir/carrier/src/lib.rs"
  {
    printf '[package]\nname = "%s"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n' "$name"
    printf '[dependencies]\n'
    cat
  } >"$dir/carrier/Cargo.toml"
  (cd "$dir/carrier" && cargo fetch --quiet)
}

install_wasm_tools() {
  if [ -x "$wasm_tools" ]; then
    return
  fi
  require_cargo
  echo "wasm-tools ${WASM_TOOLS_VERSION}: building (a cold build takes about 5 minutes)" >&2
  mkdir -p "$toolchain_cache/bin"
  local tmp; tmp=$(mktemp -d "$toolchain_cache/bin/.build.XXXXXX")
  # Only the `component` (embed, new, wit) and `validate` subcommands: half the default build.
  cargo install --locked --root "$tmp" --version "=${WASM_TOOLS_VERSION}" \
    --no-default-features --features component,validate wasm-tools >&2
  check_crate wasm-tools "$WASM_TOOLS_VERSION" "$WASM_TOOLS_SHA256"
  rm -rf "$wasm_tools_dir" && mv "$tmp" "$wasm_tools_dir"
}

fetch_adapters() {
  if [ -f "$adapters_dir/wasi_snapshot_preview1.command.wasm" ]; then
    return
  fi
  require_cargo
  echo "wasi-preview1-component-adapter-provider ${ADAPTER_VERSION}: fetching" >&2
  mkdir -p "$toolchain_cache/adapters"
  local tmp; tmp=$(mktemp -d "$toolchain_cache/adapters/.fetch.XXXXXX")
  echo "wasi-preview1-component-adapter-provider = \"=${ADAPTER_VERSION}\"" |
    cargo_fetch "$tmp" adapter-carrier
  check_crate wasi-preview1-component-adapter-provider "$ADAPTER_VERSION" "$ADAPTER_SHA256"
  mkdir -p "$tmp/out"
  tar -xzf "$crate_archive" -C "$tmp/out" --strip-components=2 \
    "wasi-preview1-component-adapter-provider-${ADAPTER_VERSION}/artefacts"
  [ -f "$tmp/out/wasi_snapshot_preview1.command.wasm" ] ||
    toolchain_die "the adapter crate holds no wasi_snapshot_preview1.command.wasm"
  rm -rf "$adapters_dir" && mv "$tmp/out" "$adapters_dir" && rm -rf "$tmp"
}

fetch_wit() {
  if [ -f "$wit_dir/deps/http.wit" ]; then
    return
  fi
  require_cargo
  echo "wasip2 ${WASIP2_VERSION}: fetching its WIT" >&2
  mkdir -p "$toolchain_cache/wit"
  local tmp; tmp=$(mktemp -d "$toolchain_cache/wit/.fetch.XXXXXX")
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

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  install_wasm_tools
  fetch_adapters
  fetch_wit
  echo "wasm_tools=$wasm_tools"
  echo "adapters=$adapters_dir"
  echo "wit=$wit_dir"
fi
