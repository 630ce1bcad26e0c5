#!/usr/bin/env bash
# Points the build module NAME (containerd, runc, cni-plugins, coredns) at the version that
# versions.env pins, and tidies its go.mod and go.sum. Run it after changing a pin; build.sh
# refuses to build while a build module and versions.env disagree. Kubernetes has its own
# script, kube/regen-go-mod.sh, because its staging modules need replace directives.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
case "${1:-}" in
  containerd) module=github.com/containerd/containerd/v2 version=$CONTAINERD_VERSION ;;
  runc) module=github.com/opencontainers/runc version=$RUNC_VERSION ;;
  cni-plugins) module=github.com/containernetworking/plugins version=$CNI_PLUGINS_VERSION ;;
  coredns) module=github.com/coredns/coredns version=$COREDNS_VERSION ;;
  *) echo "usage: $0 containerd|runc|cni-plugins|coredns" >&2; exit 2 ;;
esac
cd "$here/$1"
go get "$module@$version"
go mod tidy
