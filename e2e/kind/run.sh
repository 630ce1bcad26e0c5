#!/usr/bin/env bash
# Wasmfleet on a kind cluster, for developers who have Docker.
#
# This needs a running Docker engine (and kind, kubectl, helm and curl). It cannot run on a
# machine without a Docker engine; there, `make up` runs the whole system without containers.
#
#   e2e/kind/run.sh [up]   local registry, kind cluster, images, chart, example modules, tests
#   e2e/kind/run.sh test   only the tests, against the cluster `up` created
#   e2e/kind/run.sh down   deletes the cluster and the registry container
#
# Settings (environment variables, with their defaults):
#   OPERATOR_IMAGE=wasmfleet/operator:dev   AGENT_IMAGE=wasmfleet/agent:dev
#   KIND_CLUSTER_NAME=wasmfleet   KIND_NODE_IMAGE=(kind's default)   WAIT_TIMEOUT=300s
#   REGISTRY_NAME=kind-registry   REGISTRY_PORT=5001 (on 127.0.0.1)
#
# The cluster's kubeconfig is written to build/kind/kubeconfig; your ~/.kube/config is not
# touched.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO_ROOT/e2e/kind
STATE_DIR=$REPO_ROOT/build/kind
KUBECONFIG_FILE=$STATE_DIR/kubeconfig
VENV_BIN=$REPO_ROOT/.venv/bin

CLUSTER_NAME=${KIND_CLUSTER_NAME:-wasmfleet}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
KIND_NETWORK=${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-wasmfleet/operator:dev}
AGENT_IMAGE=${AGENT_IMAGE:-wasmfleet/agent:dev}
REGISTRY_NAME=${REGISTRY_NAME:-kind-registry}
REGISTRY_PORT=${REGISTRY_PORT:-5001}
REGISTRY_IMAGE=registry:2
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300s}

RELEASE=wasmfleet
SYSTEM_NAMESPACE=wasmfleet-system
# The chart names its objects after the release ("wasmfleet" contains the chart's name).
OPERATOR_DEPLOYMENT=$RELEASE-operator
AGENT_DAEMONSET=$RELEASE-agent
EXAMPLES_NAMESPACE=default

# Where the cluster finds the Wasm modules.
#
# examples/*/wasmservice.yaml name localhost:5001, which is right only on this machine. In the
# cluster two processes use the name: the operator resolves tags to digests from its Pod, and
# each agent pulls modules from inside a kind node container (it runs with hostNetwork). Both
# would reach their own loopback, where nothing listens. The containerd mirror set up below
# does not help them: it serves containerd's image pulls, and the agent pulls modules with
# its own OCI client. So the examples are applied with that registry rewritten to the
# registry container's name on the kind network, kind-registry:5000. Pods resolve it through
# CoreDNS, which forwards to the node's resolver and so to Docker's embedded DNS; the agent
# does the same (its dnsPolicy is ClusterFirstWithHostNet). The operator and the agent speak
# plain HTTP only to loopback registries and to those named by --insecure-registry, so the
# chart gets this name in operator.insecureRegistries and agent.insecureRegistries. Modules
# are pushed from this machine to localhost:$REGISTRY_PORT: the same registry, so the digests
# the operator resolves are the ones pushed.
EXAMPLES_REGISTRY=localhost:5001
IN_CLUSTER_REGISTRY=$REGISTRY_NAME:5000

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'e2e/kind/run.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

# require_tools TOOL...: names everything missing at once, then exits; for docker it also
# checks that an engine answers (the CLI alone is not enough).
require_tools() {
	local tool missing=() problems=()
	for tool in "$@"; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			missing+=("$tool")
		fi
	done
	if ((${#missing[@]})); then
		problems+=("not installed: ${missing[*]}")
	fi
	if command -v docker >/dev/null 2>&1 && [[ " $* " == *" docker "* ]] &&
		! docker info >/dev/null 2>&1; then
		problems+=("no Docker engine answers ('docker info' fails): start one, or use 'make up', which needs no Docker")
	fi
	if ((${#problems[@]})); then
		printf 'e2e/kind/run.sh needs a Docker engine, kind, kubectl, helm and curl.\n' >&2
		printf '  %s\n' "${problems[@]}" >&2
		cat >&2 <<-'EOF'
			  kind:    https://kind.sigs.k8s.io/docs/user/quick-start/#installation
			  kubectl: https://kubernetes.io/docs/tasks/tools/
			  helm:    https://helm.sh/docs/intro/install/
		EOF
		exit 1
	fi
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds; fails at the deadline.
wait_for() {
	local what=$1 limit=$2
	shift 2
	local deadline=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			die "gave up after ${limit}s waiting for $what"
		fi
		sleep 1
	done
}

cluster_exists() {
	local clusters
	clusters=$(kind get clusters 2>/dev/null || true)
	grep -qx -- "$CLUSTER_NAME" <<<"$clusters"
}

use_kubeconfig() {
	mkdir -p "$STATE_DIR"
	kind get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG_FILE"
	export KUBECONFIG=$KUBECONFIG_FILE
}

# Examples: every examples/NAME/ with a wasmservice.yaml; NAME is also its module's name.
list_examples() {
	local dir
	for dir in "$REPO_ROOT"/examples/*/; do
		if [[ -f $dir/wasmservice.yaml ]]; then
			basename "$dir"
		fi
	done
}

example_image() {
	sed -n 's/^[[:space:]]*image:[[:space:]]*//p' "$REPO_ROOT/examples/$1/wasmservice.yaml" |
		head -n 1
}

start_registry() {
	local running
	running=$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)
	case $running in
	true) say "registry container $REGISTRY_NAME is running" ;;
	false)
		say "starting registry container $REGISTRY_NAME"
		docker start "$REGISTRY_NAME" >/dev/null
		;;
	*)
		say "starting registry container $REGISTRY_NAME ($REGISTRY_IMAGE) on 127.0.0.1:$REGISTRY_PORT"
		docker run -d --restart=always --name "$REGISTRY_NAME" \
			-p "127.0.0.1:$REGISTRY_PORT:5000" --network bridge "$REGISTRY_IMAGE" >/dev/null
		;;
	esac
	wait_for "the registry at localhost:$REGISTRY_PORT" 60 \
		curl -fsS -o /dev/null "http://localhost:$REGISTRY_PORT/v2/"
}

create_cluster() {
	mkdir -p "$STATE_DIR"
	if cluster_exists; then
		say "kind cluster $CLUSTER_NAME exists; using it"
	else
		say "creating kind cluster $CLUSTER_NAME (one control plane, two workers)"
		local args=(create cluster --name "$CLUSTER_NAME" --config "$HERE/cluster.yaml"
			--kubeconfig "$KUBECONFIG_FILE" --wait 120s)
		if [[ -n $KIND_NODE_IMAGE ]]; then
			args+=(--image "$KIND_NODE_IMAGE")
		fi
		kind "${args[@]}"
	fi
	use_kubeconfig

	say "pointing each node's containerd at the registry for localhost:$REGISTRY_PORT images"
	local node nodes listing dir="/etc/containerd/certs.d/localhost:$REGISTRY_PORT"
	listing=$(kind get nodes --name "$CLUSTER_NAME")
	mapfile -t nodes <<<"$listing"
	for node in "${nodes[@]}"; do
		docker exec "$node" mkdir -p "$dir"
		printf '[host."http://%s"]\n' "$IN_CLUSTER_REGISTRY" |
			docker exec -i "$node" cp /dev/stdin "$dir/hosts.toml"
	done

	local attached
	attached=$(docker inspect -f "{{json (index .NetworkSettings.Networks \"$KIND_NETWORK\")}}" \
		"$REGISTRY_NAME")
	if [[ $attached == null ]]; then
		say "connecting $REGISTRY_NAME to the $KIND_NETWORK network"
		docker network connect "$KIND_NETWORK" "$REGISTRY_NAME"
	fi

	# KEP-1755: tells tools in the cluster where the local registry is.
	kubectl apply -f - <<-EOF
		apiVersion: v1
		kind: ConfigMap
		metadata:
		  name: local-registry-hosting
		  namespace: kube-public
		data:
		  localRegistryHosting.v1: |
		    host: "localhost:$REGISTRY_PORT"
		    hostFromClusterNetwork: "$IN_CLUSTER_REGISTRY"
		    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
	EOF
}

build_images() {
	say "building $OPERATOR_IMAGE and $AGENT_IMAGE"
	docker build -f "$REPO_ROOT/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$REPO_ROOT"
	docker build -f "$REPO_ROOT/node-agent/Dockerfile" -t "$AGENT_IMAGE" "$REPO_ROOT"
	say "loading them into the kind nodes"
	kind load docker-image --name "$CLUSTER_NAME" "$OPERATOR_IMAGE" "$AGENT_IMAGE"
}

# split_image REF: sets IMAGE_REGISTRY, IMAGE_REPOSITORY and IMAGE_TAG the way Docker reads
# REF (docker.io and library/ when no registry is named), which is the name `kind load`
# gives the image inside the nodes.
split_image() {
	local ref=$1 name tag first
	if [[ $ref == *@* ]]; then
		die "$ref: name the image by tag, not digest (the chart takes a repository and a tag)"
	fi
	name=${ref%:*}
	tag=${ref##*:}
	if [[ $name == "$ref" || $tag == */* ]]; then
		name=$ref
		tag=latest
	fi
	first=${name%%/*}
	if [[ $name == */* && ($first == *.* || $first == *:* || $first == localhost) ]]; then
		IMAGE_REGISTRY=$first
		IMAGE_REPOSITORY=${name#*/}
	else
		IMAGE_REGISTRY=docker.io
		IMAGE_REPOSITORY=$name
		if [[ $IMAGE_REPOSITORY != */* ]]; then
			IMAGE_REPOSITORY=library/$IMAGE_REPOSITORY
		fi
	fi
	IMAGE_TAG=$tag
}

write_values() {
	split_image "$OPERATOR_IMAGE"
	local registry=$IMAGE_REGISTRY operator_repository=$IMAGE_REPOSITORY operator_tag=$IMAGE_TAG
	split_image "$AGENT_IMAGE"
	if [[ $IMAGE_REGISTRY != "$registry" ]]; then
		die "OPERATOR_IMAGE and AGENT_IMAGE must name the same registry (the chart has one image.registry)"
	fi
	cat >"$STATE_DIR/values.yaml" <<-EOF
		# Written by e2e/kind/run.sh.
		image:
		  registry: "$registry"
		  # The images were put on the nodes by 'kind load docker-image'; never pull them.
		  pullPolicy: Never
		operator:
		  image: {repository: "$operator_repository", tag: "$operator_tag"}
		  insecureRegistries: ["$IN_CLUSTER_REGISTRY"]
		agent:
		  image: {repository: "$IMAGE_REPOSITORY", tag: "$IMAGE_TAG"}
		  insecureRegistries: ["$IN_CLUSTER_REGISTRY"]
	EOF
}

install_chart() {
	write_values
	local upgrade=false
	if helm status "$RELEASE" --namespace "$SYSTEM_NAMESPACE" >/dev/null 2>&1; then
		upgrade=true
		# helm upgrade leaves CRDs alone; apply them as docs/gitops.md says.
		kubectl apply --server-side --force-conflicts -f "$REPO_ROOT/charts/wasmfleet/crds/"
	fi
	say "installing charts/wasmfleet into $SYSTEM_NAMESPACE"
	helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/wasmfleet" \
		--namespace "$SYSTEM_NAMESPACE" --create-namespace --values "$STATE_DIR/values.yaml"
	if $upgrade; then
		# The images may have been rebuilt under the same tags: start fresh Pods on them.
		kubectl --namespace "$SYSTEM_NAMESPACE" rollout restart \
			"deployment/$OPERATOR_DEPLOYMENT" "daemonset/$AGENT_DAEMONSET"
	fi
	say "waiting for the operator Deployment and the agent DaemonSet"
	kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=wasmfleet \
		--timeout=60s
	kubectl --namespace "$SYSTEM_NAMESPACE" rollout status "deployment/$OPERATOR_DEPLOYMENT" \
		--timeout="$WAIT_TIMEOUT"
	kubectl --namespace "$SYSTEM_NAMESPACE" rollout status "daemonset/$AGENT_DAEMONSET" \
		--timeout="$WAIT_TIMEOUT"
}

# Fails early, with a reason, if the Pods cannot reach the registry by its in-cluster name
# (see IN_CLUSTER_REGISTRY above); otherwise the examples would only say ModuleNotFound.
check_registry_from_cluster() {
	local probe="import urllib.request; urllib.request.urlopen('http://$IN_CLUSTER_REGISTRY/v2/', timeout=10)"
	local target
	for target in "deployment/$OPERATOR_DEPLOYMENT" "daemonset/$AGENT_DAEMONSET"; do
		if ! kubectl --namespace "$SYSTEM_NAMESPACE" exec "$target" -- python -c "$probe"; then
			die "$target cannot reach http://$IN_CLUSTER_REGISTRY/v2/ (is $REGISTRY_NAME on the $KIND_NETWORK network?)"
		fi
	done
	say "the operator and the agents reach the registry as $IN_CLUSTER_REGISTRY"
}

ensure_venv() {
	if [[ ! -x $VENV_BIN/wasmfleet || ! -x $VENV_BIN/pytest ]]; then
		say "creating .venv (make python)"
		make -C "$REPO_ROOT" python
	fi
}

push_modules() {
	ensure_venv
	local examples name image ref digest
	mapfile -t examples < <(list_examples)
	say "building the example modules: ${examples[*]}"
	if ! (cd "$REPO_ROOT" && "$VENV_BIN/python" -m wasmfleet_harness.modules "${examples[@]}"); then
		die "building the modules failed; they need the toolchains 'make setup' installs" \
			"(rustc with the wasm32-wasi std, Go, clang with wasi-libc)"
	fi
	say "pushing them to localhost:$REGISTRY_PORT"
	for name in "${examples[@]}"; do
		image=$(example_image "$name")
		if [[ $image != "$EXAMPLES_REGISTRY"/* ]]; then
			die "examples/$name/wasmservice.yaml names $image, not an image in $EXAMPLES_REGISTRY"
		fi
		# localhost is loopback, so `wasmfleet push` speaks plain HTTP to it unasked.
		ref=localhost:$REGISTRY_PORT/${image#"$EXAMPLES_REGISTRY"/}
		digest=$("$VENV_BIN/wasmfleet" push "$REPO_ROOT/build/modules/$name.wasm" "$ref")
		printf '    %-52s %s\n' "$ref" "$digest"
	done
}

apply_examples() {
	local name examples
	mapfile -t examples < <(list_examples)
	say "applying examples/*/wasmservice.yaml with images in $IN_CLUSTER_REGISTRY"
	for name in "${examples[@]}"; do
		sed "s#$EXAMPLES_REGISTRY/#$IN_CLUSTER_REGISTRY/#g" \
			"$REPO_ROOT/examples/$name/wasmservice.yaml" |
			kubectl apply --namespace "$EXAMPLES_NAMESPACE" -f -
	done
}

run_tests() {
	ensure_venv
	say "running e2e/kind/test_kind.py against the cluster"
	(
		cd "$REPO_ROOT"
		KUBECONFIG=$KUBECONFIG_FILE \
			WASMFLEET_KIND_NAMESPACE=$EXAMPLES_NAMESPACE \
			WASMFLEET_KIND_SYSTEM_NAMESPACE=$SYSTEM_NAMESPACE \
			"$VENV_BIN/pytest" e2e/kind/test_kind.py
	)
}

on_failure() {
	local status=$?
	if ((status != 0)) && [[ -f $KUBECONFIG_FILE ]]; then
		printf '\nFailed. To look around:\n  export KUBECONFIG=%s\n' "$KUBECONFIG_FILE" >&2
		printf '  kubectl -n %s get pods; kubectl get wasmservices,wasmbindings,wasmagents -A\n' \
			"$SYSTEM_NAMESPACE" >&2
	fi
}

cmd_up() {
	require_tools docker kind kubectl helm curl
	trap on_failure EXIT
	start_registry
	create_cluster
	build_images
	install_chart
	check_registry_from_cluster
	push_modules
	apply_examples
	run_tests
	kubectl get wasmservices --namespace "$EXAMPLES_NAMESPACE"
	printf '\nUp. export KUBECONFIG=%s\nRemove it all with: e2e/kind/run.sh down\n' \
		"$KUBECONFIG_FILE"
}

cmd_test() {
	require_tools docker kind kubectl
	if ! cluster_exists; then
		die "no kind cluster named $CLUSTER_NAME; run e2e/kind/run.sh first"
	fi
	use_kubeconfig
	run_tests
}

cmd_down() {
	require_tools docker kind
	if cluster_exists; then
		say "deleting kind cluster $CLUSTER_NAME"
		use_kubeconfig
		# The same kubeconfig file as create: ~/.kube/config is left alone here too.
		kind delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
	fi
	if docker inspect "$REGISTRY_NAME" >/dev/null 2>&1; then
		say "removing registry container $REGISTRY_NAME"
		docker rm -f "$REGISTRY_NAME" >/dev/null
	fi
	rm -rf "$STATE_DIR"
}

case ${1:-up} in
up) cmd_up ;;
test) cmd_test ;;
down) cmd_down ;;
-h | --help | help) usage ;;
*)
	usage >&2
	exit 2
	;;
esac
