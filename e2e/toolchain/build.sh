#!/usr/bin/env bash
# Builds every binary the local cluster runs, from the versions pinned in versions.env, through
# the Go module proxy, into $WASMFLEET_CACHE/bin/<name>-<version>/:
#   kubernetes        etcd, kube-apiserver, kube-controller-manager, kubectl   (build module kube/)
#   kubernetes-node   kubelet, kube-proxy, kube-scheduler                     (build module kube/)
#   helm              helm                                                    (helm/)
#   containerd        containerd, containerd-shim-runc-v2, ctr                (containerd/)
#   runc              runc (cgo, seccomp: needs Debian's libseccomp-dev)      (runc/)
#   cni-plugins       bridge, host-local, loopback, portmap                   (cni-plugins/)
#   coredns           coredns                                                 (coredns/)
# A directory that already holds every binary is left alone, so a warm run costs nothing.
# Go's own build and module caches are used as they are, so a rebuild after a version bump
# recompiles only what changed. Each build module's go.mod must require the pinned version:
# after changing a pin, run pin-module.sh NAME (or kube/regen-go-mod.sh for Kubernetes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${WASMFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasmfleet}
export CGO_ENABLED=0 GOFLAGS=-trimpath

kube_dir="$cache/bin/kubernetes-${KUBERNETES_VERSION}"
kube_node_dir="$cache/bin/kubernetes-node-${KUBERNETES_VERSION}"
helm_dir="$cache/bin/helm-${HELM_VERSION}"
containerd_dir="$cache/bin/containerd-${CONTAINERD_VERSION}"
runc_dir="$cache/bin/runc-${RUNC_VERSION}"
cni_dir="$cache/bin/cni-plugins-${CNI_PLUGINS_VERSION}"
coredns_dir="$cache/bin/coredns-${COREDNS_VERSION}"

have_all() {
  local dir=$1; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

check_pin() {
  # The go.mod of a build module and versions.env must name the same version: one source of
  # truth, and a loud failure instead of a cache directory whose name lies about its contents.
  local module_dir=$1 module=$2 pinned=$3 required
  required=$(cd "$module_dir" && go list -m -f '{{.Version}}' "$module")
  if [ "$required" != "$pinned" ]; then
    echo "$module_dir/go.mod requires $module $required but versions.env pins $pinned;" \
      "run e2e/toolchain/pin-module.sh $(basename "$module_dir")" >&2
    exit 1
  fi
}

# build NAME DIR MODULE_DIR LDFLAGS PACKAGE... builds into a temporary directory and moves it
# into place only when every binary linked, so an interrupted build never looks cached.
build() {
  local name=$1 dir=$2 module_dir=$3 ldflags=$4; shift 4
  local tmp started
  tmp=$(mktemp -d "$cache/bin/.build.XXXXXX")
  started=$(date +%s)
  (cd "$module_dir" && go build ${BUILD_TAGS:+-tags "$BUILD_TAGS"} -ldflags "$ldflags" \
    -o "$tmp/" "$@")
  rm -rf "$dir" && mv "$tmp" "$dir"
  echo "$name: built in $(( $(date +%s) - started ))s into $dir"
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
  build kubernetes "$kube_dir" "$here/kube" "$(version_ldflags "$KUBERNETES_VERSION")" \
    ./cmd/etcd \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
}

build_kubernetes_node() {
  # A directory of its own, not the control plane's: a machine with the control plane cached
  # must not rebuild it just because the node's binaries were added later.
  local bins=(kubelet kube-proxy kube-scheduler)
  if have_all "$kube_node_dir" "${bins[@]}"; then
    echo "kubernetes-node ${KUBERNETES_VERSION}: cached in $kube_node_dir"
    return
  fi
  echo "kubernetes-node ${KUBERNETES_VERSION}: building ${bins[*]} (cold: several minutes)"
  build kubernetes-node "$kube_node_dir" "$here/kube" "$(version_ldflags "$KUBERNETES_VERSION")" \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
    k8s.io/kubernetes/cmd/kube-scheduler
}

build_helm() {
  if have_all "$helm_dir" helm; then
    echo "helm ${HELM_VERSION}: cached in $helm_dir"
    return
  fi
  echo "helm ${HELM_VERSION}: building"
  build helm "$helm_dir" "$here/helm" \
    "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    helm.sh/helm/v3/cmd/helm
}

build_containerd() {
  if have_all "$containerd_dir" containerd containerd-shim-runc-v2 ctr; then
    echo "containerd ${CONTAINERD_VERSION}: cached in $containerd_dir"
    return
  fi
  local m=github.com/containerd/containerd/v2
  check_pin "$here/containerd" "$m" "$CONTAINERD_VERSION"
  echo "containerd ${CONTAINERD_VERSION}: building"
  # Static and without the snapshotters that need C libraries this machine does not use.
  BUILD_TAGS="no_btrfs no_devmapper no_zfs" build containerd "$containerd_dir" \
    "$here/containerd" "-s -w -X $m/version.Version=${CONTAINERD_VERSION#v}" \
    "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_runc() {
  if have_all "$runc_dir" runc; then
    echo "runc ${RUNC_VERSION}: cached in $runc_dir"
    return
  fi
  local m=github.com/opencontainers/runc
  check_pin "$here/runc" "$m" "$RUNC_VERSION"
  echo "runc ${RUNC_VERSION}: building"
  # runc's nsenter is C and its seccomp filters come from libseccomp: cgo is required.
  CGO_ENABLED=1 BUILD_TAGS="seccomp" build runc "$runc_dir" "$here/runc" \
    "-s -w -X main.version=${RUNC_VERSION#v}" "$m"
}

build_cni_plugins() {
  if have_all "$cni_dir" bridge host-local loopback portmap; then
    echo "cni-plugins ${CNI_PLUGINS_VERSION}: cached in $cni_dir"
    return
  fi
  local m=github.com/containernetworking/plugins
  check_pin "$here/cni-plugins" "$m" "$CNI_PLUGINS_VERSION"
  echo "cni-plugins ${CNI_PLUGINS_VERSION}: building"
  build cni-plugins "$cni_dir" "$here/cni-plugins" \
    "-s -w -X $m/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}" \
    "$m/plugins/main/bridge" "$m/plugins/ipam/host-local" \
    "$m/plugins/main/loopback" "$m/plugins/meta/portmap"
}

build_coredns() {
  if have_all "$coredns_dir" coredns; then
    echo "coredns ${COREDNS_VERSION}: cached in $coredns_dir"
    return
  fi
  local m=github.com/coredns/coredns
  check_pin "$here/coredns" "$m" "$COREDNS_VERSION"
  echo "coredns ${COREDNS_VERSION}: building"
  # Static (CGO_ENABLED=0), so its image needs nothing but the binary.
  build coredns "$coredns_dir" "$here/coredns" "-s -w" "$m"
}

mkdir -p "$cache/bin"
case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  kubernetes-node) build_kubernetes_node ;;
  helm) build_helm ;;
  containerd) build_containerd ;;
  runc) build_runc ;;
  cni-plugins) build_cni_plugins ;;
  coredns) build_coredns ;;
  # The control plane and helm first: every e2e suite needs them, only the node suite the rest.
  control-plane) build_kubernetes; build_helm ;;
  node) build_kubernetes_node; build_containerd; build_runc; build_cni_plugins; build_coredns ;;
  all)
    build_kubernetes; build_helm
    build_kubernetes_node; build_containerd; build_runc; build_cni_plugins; build_coredns
    ;;
  *)
    echo "usage: $0 [all|control-plane|node|kubernetes|kubernetes-node|helm|containerd|runc|cni-plugins|coredns]" >&2
    exit 2
    ;;
esac
