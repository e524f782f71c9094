#!/usr/bin/env bash
# Writes the CRD generated from the Rust types to crds/ and to the chart's own copy in
# files/, which templates/crds.yaml reads (a real file, not a symlink: tools that take the
# chart straight from git do not follow symlinks).
# A test fails when either committed file differs from the types.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --bin eagle-eye-operator -- crd > crds/eagleeyecredentials.yaml
cp crds/eagleeyecredentials.yaml charts/eagle-eye-operator/files/eagleeyecredentials.yaml
