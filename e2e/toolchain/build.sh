#!/usr/bin/env bash
# Builds the control-plane binaries (etcd, kube-apiserver, kube-controller-manager, kubectl)
# and helm from the versions pinned in versions.env, through the Go module proxy, into
#   $WASMFLEET_CACHE/bin/kubernetes-<version>/   and   $WASMFLEET_CACHE/bin/helm-<version>/
# A directory that already holds every binary is left alone, so a warm run costs nothing.
# Go's own build and module caches are used as they are, so a rebuild after a version bump
# recompiles only what changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${WASMFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmfleet}
export CGO_ENABLED=0 GOFLAGS=-trimpath

kube_dir="$cache/bin/kubernetes-${KUBERNETES_VERSION}"
helm_dir="$cache/bin/helm-${HELM_VERSION}"

have_all() {
  local dir=$1; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

version_ldflags() {
  # Without these the binaries report v0.0.0 and version-checking clients misbehave.
  local pkg version=$1 major minor
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  printf -- '-s -w'
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- ' -X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean' \
      "$pkg" "$version" "$pkg" "$major" "$pkg" "$minor" "$pkg"
  done
}

build_kubernetes() {
  local bins=(etcd kube-apiserver kube-controller-manager kubectl)
  if have_all "$kube_dir" "${bins[@]}"; then
    echo "kubernetes ${KUBERNETES_VERSION}: cached in $kube_dir"
    return
  fi
  echo "kubernetes ${KUBERNETES_VERSION}: building ${bins[*]} (cold builds take several minutes)"
  local tmp; tmp=$(mktemp -d "$cache/bin/.build.XXXXXX")
  (cd "$here/kube" && go build -ldflags "$(version_ldflags "$KUBERNETES_VERSION")" -o "$tmp/" \
    ./cmd/etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$kube_dir" && mv "$tmp" "$kube_dir"
}

build_helm() {
  if have_all "$helm_dir" helm; then
    echo "helm ${HELM_VERSION}: cached in $helm_dir"
    return
  fi
  echo "helm ${HELM_VERSION}: building"
  local tmp; tmp=$(mktemp -d "$cache/bin/.build.XXXXXX")
  (cd "$here/helm" && go build \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    -o "$tmp/" helm.sh/helm/v3/cmd/helm)
  rm -rf "$helm_dir" && mv "$tmp" "$helm_dir"
}

mkdir -p "$cache/bin"
case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  helm) build_helm ;;
  all) build_kubernetes; build_helm ;;
  *) echo "usage: $0 [all|kubernetes|helm]" >&2; exit 2 ;;
esac
