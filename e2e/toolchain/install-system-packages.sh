#!/usr/bin/env bash
# Installs the Debian packages the project builds and tests with, if any is missing:
#   docker-registry            a real OCI registry (distribution 2.8)
#   clang lld wasi-libc libclang-rt-14-dev-wasm32   C -> wasm32-wasi
#   rustc libstd-rust-dev-wasm32                    Rust -> wasm32-wasi (Debian's rustc)
#   apache2-utils              htpasswd, for the registry's basic auth
#   iproute2                   network namespaces for the agents' test hosts
#   wrk                        the HTTP load generator of the benchmarks
#   libseccomp-dev             runc is built with cgo and `-tags seccomp` against it
#   iptables                   kube-proxy and the CNI plugins of the local node program it
# Go is expected on PATH (the control-plane binaries and the Go modules need >= 1.26).
set -euo pipefail
packages=(docker-registry clang lld wasi-libc libclang-rt-14-dev-wasm32 rustc wrk
          libstd-rust-dev-wasm32 apache2-utils iproute2 libseccomp-dev iptables)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "Go is not on PATH; install Go >= 1.26 to build the control-plane binaries" >&2
  exit 1
fi
