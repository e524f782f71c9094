# Sourced by control-plane.sh and node.sh: what every Kubernetes binary of the test bed is
# built with. Usage: kube_build_env; go build -ldflags "-s -w $(kube_ldflags v1.37.2)" ...

# Go from PATH only (GOTOOLCHAIN=local: nothing fetches another Go), static binaries.
kube_build_env() {
  command -v go >/dev/null || {
    echo "Go is not installed: install Go >= 1.26 (https://go.dev/dl or apt-get install golang)" >&2
    exit 1
  }
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
}

# -X flags that make /version (and `kubelet --version`) say the version they were built from.
kube_ldflags() {
  local version=$1 major minor ld="" pkg
  major=${version#v}; major=${major%%.*}
  minor=${version#v*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

# kube_cached BIN_DIR NAME...: when every NAME is built in BIN_DIR, says so and prints BIN_DIR
# (the `build` commands' last line); fails otherwise, and the caller builds.
kube_cached() {
  local dir=$1 name; shift
  for name in "$@"; do [[ -x "$dir/$name" ]] || return 1; done
  echo "$(basename "$0" .sh): reusing binaries in $dir" >&2
  echo "$dir"
}
