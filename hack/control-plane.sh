#!/usr/bin/env bash
# A throwaway local Kubernetes control plane built from the Go module proxy:
# real etcd, kube-apiserver (TLS, RBAC) and kube-controller-manager (garbage
# collector, namespace controller). No kubelet unless `--node`: pods never run.
#
#   hack/control-plane.sh build   build or reuse the binaries; last line: their directory
#   hack/control-plane.sh up      start everything; last line: export KUBECONFIG=...
#   hack/control-plane.sh up --node   the same and a node that runs pods (hack/node.sh; root)
#   hack/control-plane.sh down    stop what `up` started and remove its files
#   hack/control-plane.sh env     print the state directory of a running plane
set -euo pipefail

KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.3
HELM_VERSION=v3.22.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/kube-build.sh
source "$here/kube-build.sh"
cache_root=${EAGLE_EYE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eagle-eye-operator}
# The key covers every input of the build: the versions above and the wrapper module.
key=$(cat "$here/control-plane/go.mod" "$here/control-plane/go.sum" | sha256sum | cut -c1-12)
bin_dir="$cache_root/bin/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-$key"
state_dir=${EAGLE_EYE_PLANE_DIR:-${TMPDIR:-/tmp}/eagle-eye-control-plane}

log() { echo "control-plane: $*" >&2; }

build() {
  kube_cached "$bin_dir" kube-apiserver etcd kubectl kube-controller-manager helm && return
  kube_build_env
  local tmp="$bin_dir.partial"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local ld; ld=$(kube_ldflags "$KUBE_VERSION")
  log "building kube-apiserver, kube-controller-manager, kubectl $KUBE_VERSION and etcd $ETCD_VERSION (cold: 15-25 min)"
  (cd "$here/control-plane" && go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl)
  (cd "$here/control-plane" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
  log "building helm $HELM_VERSION"
  GOBIN="$tmp" GOFLAGS= go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$bin_dir"; mv "$tmp" "$bin_dir"
  echo "$bin_dir"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, name, [curl args...]
  local url=$1 name=$2; shift 2
  for _ in $(seq 1 300); do
    if curl -fsS "$@" "$url" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$name did not become ready at $url; logs in $state_dir"; return 1
}

up() {
  local node=false
  [[ ${1:-} == --node ]] && node=true
  local bins; bins=$(build | tail -n1)
  if [[ -f "$state_dir/pids" ]]; then down; fi
  mkdir -p "$state_dir"/{etcd,pki}
  local pki="$state_dir/pki"
  # Certificates: one CA signs the serving cert, the admin client cert and the SA keys. All
  # are X.509 v3 with explicit extensions: rustls (kube-rs, reqwest, so the operator binary)
  # refuses v1 certificates, which `openssl x509 -req` issues when given no extensions.
  cat > "$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=eagle-eye-test-ca" \
    -config "$pki/openssl.cnf" -extensions ca -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -config "$pki/openssl.cnf" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/openssl.cnf" -extensions server -out "$pki/apiserver.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" -config "$pki/openssl.cnf" \
    -keyout "$pki/admin.key" -out "$pki/admin.csr" 2>/dev/null
  openssl x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/openssl.cnf" -extensions client -out "$pki/admin.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null

  local etcd_port peer_port api_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)
  "$bins/etcd" --data-dir "$state_dir/etcd" --name default \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true \
    >"$state_dir/etcd.log" 2>&1 &
  echo $! >> "$state_dir/pids"
  wait_http "http://127.0.0.1:$etcd_port/health" etcd

  # With a node, pods get ServiceAccount tokens (the admission plugin, and the controllers
  # below that make the default ServiceAccount and kube-root-ca.crt) and Deployments run.
  local admission=(--disable-admission-plugins ServiceAccount)
  local controllers=garbage-collector-controller,namespace-controller,serviceaccount-token-controller
  if $node; then
    admission=()
    controllers+=,serviceaccount-controller,root-ca-certificate-publisher-controller
    controllers+=,deployment-controller,replicaset-controller,node-lifecycle-controller
  fi
  "$bins/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --secure-port "$api_port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode RBAC --endpoint-reconciler-type none \
    "${admission[@]}" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.key" --service-account-signing-key-file "$pki/sa.key" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --cert-dir "$state_dir/pki" \
    >"$state_dir/kube-apiserver.log" 2>&1 &
  echo $! >> "$state_dir/pids"
  wait_http "https://127.0.0.1:$api_port/readyz" kube-apiserver --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key"

  "$bins/kubectl" config set-cluster local --server "https://127.0.0.1:$api_port" \
    --certificate-authority "$pki/ca.crt" --embed-certs --kubeconfig "$state_dir/kubeconfig" >/dev/null
  "$bins/kubectl" config set-credentials admin --client-certificate "$pki/admin.crt" \
    --client-key "$pki/admin.key" --embed-certs --kubeconfig "$state_dir/kubeconfig" >/dev/null
  "$bins/kubectl" config set-context local --cluster local --user admin --namespace default \
    --kubeconfig "$state_dir/kubeconfig" >/dev/null
  "$bins/kubectl" config use-context local --kubeconfig "$state_dir/kubeconfig" >/dev/null

  "$bins/kube-controller-manager" --kubeconfig "$state_dir/kubeconfig" \
    --controllers "$controllers" \
    --leader-elect=false --secure-port 0 \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false \
    >"$state_dir/kube-controller-manager.log" 2>&1 &
  echo $! >> "$state_dir/pids"
  echo "$bins" > "$state_dir/bin_dir"
  if $node; then KUBECTL="$bins/kubectl" "$here/node.sh" up "$state_dir" "$state_dir/kubeconfig" >/dev/null; fi
  log "up: binaries in $bins, logs in $state_dir; add $bins to PATH for kubectl and helm"
  echo "export KUBECONFIG=$state_dir/kubeconfig"
}

# Exited processes whose parent is gone stay listed as zombies where init does not reap
# them; they are not running.
alive() { [[ -r /proc/$1/status ]] && ! grep -q '^State:.*zombie' "/proc/$1/status"; }

down() {
  "$here/node.sh" down "$state_dir"
  if [[ -f "$state_dir/pids" ]]; then
    # Reverse order: controller-manager, then apiserver, then etcd.
    for pid in $(tac "$state_dir/pids"); do kill "$pid" 2>/dev/null || true; done
    for pid in $(tac "$state_dir/pids"); do
      for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
      fi
    done
  fi
  rm -rf "$state_dir"
  log "down"
}

case "${1:-}" in
  build) build ;;
  up) up "${2:-}" ;;
  down) down ;;
  env) echo "$state_dir" ;;
  *) echo "usage: $0 build|up [--node]|down|env" >&2; exit 2 ;;
esac
