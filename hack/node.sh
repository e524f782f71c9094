#!/usr/bin/env bash
# The opt-in node of the test bed: a real kubelet (built from the Go module proxy like the
# control plane), containerd and runc from Debian, and images built here as OCI layouts.
# Nothing is pulled from an image registry. Runs as root; see docs/delivery.md.
#
#   hack/node.sh build                     build or reuse kubelet and kube-scheduler; last line: their directory
#   hack/node.sh up DIR KUBECONFIG         start a node for the plane of KUBECONFIG, state in DIR/node;
#                                          last line: the node's environment file (NODE_NAME, HOST_IP, ...)
#   hack/node.sh down DIR                  stop what `up` started (containers too) and remove DIR/node
#   hack/node.sh image OUT NAME ROOTFS CFG write an OCI image layout (one layer: ROOTFS) as a tar
#   hack/node.sh operator-image OUT BIN    the operator's image from its release binary, as the Dockerfile describes
#   hack/node.sh import DIR TAR            import an image tar into the node's containerd
set -euo pipefail

KUBE_VERSION=v1.37.2
# Images the node runs; pods name them with imagePullPolicy Never or IfNotPresent.
BUSYBOX_IMAGE=docker.io/local/busybox:1
PAUSE_IMAGE=docker.io/local/pause:1
NODE_NAME=eagle-eye-node
# The first address of the plane's --service-cluster-ip-range: the `kubernetes` Service.
KUBERNETES_SERVICE_IP=10.0.0.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/kube-build.sh
source "$here/kube-build.sh"
cache_root=${EAGLE_EYE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eagle-eye-operator}
key=$(cat "$here/node/go.mod" "$here/node/go.sum" | sha256sum | cut -c1-12)
bin_dir="$cache_root/bin/node-$KUBE_VERSION-$key"

log() { echo "node: $*" >&2; }

build() {
  kube_cached "$bin_dir" kubelet kube-scheduler && return
  kube_build_env
  local tmp="$bin_dir.partial"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local ld; ld=$(kube_ldflags "$KUBE_VERSION")
  log "building kubelet and kube-scheduler $KUBE_VERSION (cold: about 5 min after the control plane)"
  (cd "$here/node" && nice -n 15 go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler)
  rm -rf "$bin_dir"; mv "$tmp" "$bin_dir"
  echo "$bin_dir"
}

# Debian's containerd, runc, busybox-static and CNI plugins, installed when missing.
ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /bin/busybox ]] || missing+=(busybox-static)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || { log "needs root to install ${missing[*]}"; exit 1; }
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# image OUT NAME ROOTFS CONFIG: an OCI image layout with one layer, tarred for `ctr import`.
# CONFIG is the image config's "config" object (User, Entrypoint, Cmd, ...).
image() {
  local out=$1 name=$2 rootfs=$3 config=$4
  local w; w=$(mktemp -d); mkdir -p "$w/blobs/sha256"
  blob() { # file -> "digest size", moved under blobs/
    local d s; d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
    mv "$1" "$w/blobs/sha256/$d"; echo "$d $s"
  }
  tar --sort=name --mtime=@0 --numeric-owner -C "$rootfs" -cf "$w/layer" .
  local layer config_blob manifest
  read -r -a layer <<<"$(blob "$w/layer")"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "${layer[0]}" >"$w/config"
  read -r -a config_blob <<<"$(blob "$w/config")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "${config_blob[0]}" "${config_blob[1]}" "${layer[0]}" "${layer[1]}" >"$w/manifest"
  read -r -a manifest <<<"$(blob "$w/manifest")"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest[0]}" "${manifest[1]}" "$name" "${name##*:}" >"$w/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
  tar -C "$w" -cf "$out" oci-layout index.json blobs
  rm -rf "$w"
}

# The workload image (busybox-static) and the sandbox image (the same files; its entrypoint
# only waits, as pause does).
base_images() {
  local out=$1 rootfs; rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" "$rootfs/tmp" "$rootfs/etc"
  copy_with_libs /bin/busybox "$rootfs" /bin/busybox # static from busybox-static; libraries if not
  for a in sh cat sleep ls wget date echo head tail cut tr grep test env true printf sha256sum; do ln -sf busybox "$rootfs/bin/$a"; done
  chmod 1777 "$rootfs/tmp"
  # busybox wget speaks HTTPS through `openssl s_client` when it finds one: its own TLS client
  # fails the handshake with rustls servers (the stand-in). Debian's openssl, with its libraries.
  copy_with_libs "$(command -v openssl)" "$rootfs" /bin/openssl
  image "$out/busybox.tar" "$BUSYBOX_IMAGE" "$rootfs" '{"Cmd":["/bin/sh"]}'
  image "$out/pause.tar" "$PAUSE_IMAGE" "$rootfs" '{"Entrypoint":["/bin/sleep","2147483647"]}'
  rm -rf "$rootfs"
}

# copy_with_libs BIN ROOTFS PATH: BIN at PATH in ROOTFS, with the dynamic loader and every
# library it links at the paths it names.
copy_with_libs() {
  local bin=$1 rootfs=$2 path=$3 lib
  mkdir -p "$rootfs$(dirname "$path")"; cp "$bin" "$rootfs$path"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$lib")"; cp -L "$lib" "$rootfs$lib"
  done
}

# What the Dockerfile's final stage holds (distroless cc: glibc, libgcc, CA roots, the nonroot
# user 65532, /tmp) and nothing else: no shell.
operator_image() {
  local out=$1 bin=$2 rootfs; rootfs=$(mktemp -d)
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp" "$rootfs/home/nonroot"
  chmod 1777 "$rootfs/tmp"; chown 65532:65532 "$rootfs/home/nonroot"
  copy_with_libs "$bin" "$rootfs" /eagle-eye-operator
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  local tag; tag=$(sha256sum "$bin" | cut -c1-12)
  image "$out" "docker.io/local/eagle-eye-operator:$tag" "$rootfs" \
    '{"User":"65532:65532","Entrypoint":["/eagle-eye-operator"],"Cmd":["run"]}'
  rm -rf "$rootfs"
  echo "docker.io/local/eagle-eye-operator:$tag"
}

alive() { [[ -r /proc/$1/status ]] && ! grep -q '^State:.*zombie' "/proc/$1/status"; }

wait_until() { # seconds, what, command...
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "$what within ${limit}s failed"; return 1
}

up() {
  local dir=$1/node kubeconfig=$2
  [[ $(id -u) == 0 ]] || { log "a node needs root (containerd, runc, mounts, a bridge)"; exit 1; }
  ensure_packages
  local bins; bins=$(build | tail -n1)
  mkdir -p "$dir"/{images,cni/conf,cni/ipam,kubelet,pod-logs}
  dir=$(cd "$dir" && pwd)
  # A bridge and a /24 of our own: names and subnets unused by any other node on this machine.
  local id bridge subnet n
  id=$(echo "$dir" | sha256sum | cut -c1-8)
  bridge="ee${id}"
  for n in $(seq $((0x${id:0:2} % 200 + 20)) 254) $(seq 20 254); do
    ip -4 route | grep -q "^10\.231\.$n\." || { subnet=10.231.$n; break; }
  done
  local host_ip=$subnet.1
  ip link add "$bridge" type bridge
  ip addr add "$host_ip/24" dev "$bridge"
  ip link set "$bridge" up
  # Pods reach the API server through the `kubernetes` Service address, as in any cluster:
  # a DNAT to its loopback port stands in for kube-proxy (route_localnet lets it through).
  local api_port; api_port=$(grep -o 'server: https://127.0.0.1:[0-9]*' "$kubeconfig" | grep -o '[0-9]*$')
  sysctl -qw "net.ipv4.conf.$bridge.route_localnet=1"
  iptables -t nat -A PREROUTING -i "$bridge" -d "$KUBERNETES_SERVICE_IP" -p tcp --dport 443 \
    -m comment --comment "eagle-eye-node $bridge" -j DNAT --to-destination "127.0.0.1:$api_port"
  cat >"$dir/env" <<EOF
NODE_NAME=$NODE_NAME
HOST_IP=$host_ip
POD_SUBNET=$subnet.0/24
BRIDGE=$bridge
CONTAINERD_SOCK=$dir/containerd/containerd.sock
POD_LOGS=$dir/pod-logs
BUSYBOX_IMAGE=$BUSYBOX_IMAGE
BIN_DIR=$bins
EOF

  cat >"$dir/cni/conf/10-bridge.conflist" <<EOF
{"cniVersion":"1.0.0","name":"eagle-eye-node","plugins":[
 {"type":"bridge","bridge":"$bridge","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"$subnet.0/24","gateway":"$host_ip"}]],
          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$dir/cni/ipam"}},
 {"type":"loopback"}]}
EOF
  # Its own root, state, socket and runc root: nothing shared with another containerd.
  # restrict_oom_score_adj: this machine withholds CAP_SYS_RESOURCE, so runc cannot set the
  # -998 the CRI asks for the sandbox; without it every sandbox fails to start.
  cat >"$dir/containerd.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/conf"
EOF
  mkdir -p "$dir/containerd"
  containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
  echo "$! containerd" >>"$dir/pids"
  wait_until 30 "containerd answering on its socket" ctr --address "$dir/containerd/containerd.sock" version

  base_images "$dir/images"
  import "$1" "$dir/images/busybox.tar"
  import "$1" "$dir/images/pause.tar"

  # Pod-level cgroups off and nothing reserved: this machine has cgroup v1 (hybrid), which
  # kubelet 1.35+ refuses unless failCgroupV1 is false, and its cgroup root is not ours.
  local kubelet_port; kubelet_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: $host_ip
port: $kubelet_port
readOnlyPort: 0
healthzPort: 0
syncFrequency: ${EAGLE_EYE_NODE_SYNC_FREQUENCY:-1m}
configMapAndSecretChangeDetectionStrategy: Watch
podLogsDir: $dir/pod-logs
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  "$bins/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$kubeconfig" \
    --container-runtime-endpoint "unix://$dir/containerd/containerd.sock" \
    --root-dir "$dir/kubelet" --cert-dir "$dir/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$host_ip" >"$dir/kubelet.log" 2>&1 &
  echo "$! kubelet" >>"$dir/pids"
  "$bins/kube-scheduler" --kubeconfig "$kubeconfig" --leader-elect=false --secure-port=0 \
    >"$dir/kube-scheduler.log" 2>&1 &
  echo "$! kube-scheduler" >>"$dir/pids"
  wait_until 120 "node $NODE_NAME Ready" node_ready "$kubeconfig"
  log "up: $NODE_NAME (pods on $subnet.0/24 via $bridge, the host at $host_ip), logs in $dir"
  echo "$dir/env"
}

node_ready() {
  local kubectl=${KUBECTL:-kubectl}
  "$kubectl" --kubeconfig "$1" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

import() {
  ctr --address "$1/node/containerd/containerd.sock" -n k8s.io images import "$2" >&2
}

down() {
  local dir=$1/node
  [[ -d "$dir" ]] || return 0
  # The kubelet and scheduler first, so that nothing restarts what is stopped next; then every
  # container (their shims outlive containerd), then containerd.
  stop_pids "$dir" kubelet kube-scheduler
  local sock="$dir/containerd/containerd.sock"
  if [[ -S "$sock" ]]; then
    for task in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
  fi
  stop_pids "$dir" containerd
  # Shims started by this containerd name its socket on their command line.
  local pid
  for pid in $(grep -l -a -F -- "$sock" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    kill -9 "$pid" 2>/dev/null || true
  done
  # Mounts the kubelet and containerd made under the node's directory, deepest first.
  local m
  for m in $(awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if [[ -f "$dir/env" ]]; then
    local bridge; bridge=$(grep '^BRIDGE=' "$dir/env" | cut -d= -f2)
    while read -r rule; do
      # The rule as iptables -S prints it, quoted comment included.
      eval "iptables -t nat ${rule/-A/-D}" 2>/dev/null || true
    done < <(iptables -t nat -S | grep -F "eagle-eye-node $bridge" || true)
    ip link del "$bridge" 2>/dev/null || true
  fi
  rm -rf "$dir"
  log "down"
}

stop_pids() { # dir, names...
  local dir=$1; shift
  [[ -f "$dir/pids" ]] || return 0
  local pid name want
  for want in "$@"; do
    while read -r pid name; do
      [[ $name == "$want" ]] || continue
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    done <"$dir/pids"
  done
}

case "${1:-}" in
  build) build ;;
  up) up "$2" "$3" ;;
  down) down "$2" ;;
  image) image "$2" "$3" "$4" "$5" ;;
  operator-image) operator_image "$2" "$3" ;;
  import) import "$2" "$3" ;;
  *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
