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
#   buildah debootstrap        container images without a Docker daemon, on a Debian base
#   qemu-user-static binfmt-support   linux/arm64 programs (image builds) under emulation
# Go is expected on PATH (the control-plane binaries and the Go modules need >= 1.26).
set -euo pipefail
packages=(docker-registry clang lld wasi-libc libclang-rt-14-dev-wasm32 rustc wrk
          libstd-rust-dev-wasm32 apache2-utils iproute2 libseccomp-dev iptables
          buildah debootstrap qemu-user-static binfmt-support)

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

# The kernel forgets binfmt handlers at boot, and this machine kind has no init system to load
# them again: mount binfmt_misc and register qemu-user-static's arm64 handler when it is
# missing, or switch it back on when it is there but disabled. It is registered with the F
# flag, so it also runs arm64 programs inside chroots (image builds for linux/arm64).
binfmt=/proc/sys/fs/binfmt_misc
if ! grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if [ ! -e "$binfmt/register" ]; then
    "${sudo[@]}" mount -t binfmt_misc binfmt_misc "$binfmt"
  fi
  if [ -e "$binfmt/qemu-aarch64" ]; then
    echo 1 | "${sudo[@]}" tee "$binfmt/qemu-aarch64" >/dev/null
  else
    "${sudo[@]}" update-binfmts --enable qemu-aarch64
  fi
fi

if ! command -v go >/dev/null; then
  echo "Go is not on PATH; install Go >= 1.26 to build the control-plane binaries" >&2
  exit 1
fi
