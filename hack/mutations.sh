#!/usr/bin/env bash
# Shows that the simulator finds bugs (issue 19, point 4): each patch in hack/mutations/
# puts back one bug this project had or could have, and the simulator's CI seed set must
# catch it. For each patch, in a throwaway worktree of HEAD: apply, build the simulator
# (release), run the fixed seeds one at a time until one reports a violated invariant.
#
#   hack/mutations.sh                      every patch in hack/mutations/
#   hack/mutations.sh hack/mutations/03-*  only these
#
# Environment:
#   MUTATION_SEEDS    seeds to run (default: sim/src/cli.rs's FIXED_SEEDS, the CI set)
#   MUTATION_STEPS    steps per seed (default 111112: a default `simulate` run's share
#                     of 1,000,000 steps over the fixed seeds and its one random seed)
#   MUTATION_CONTROL  1: first run the same seeds on HEAD unmutated (it must pass, or a
#                     "caught" below proves nothing)
#   CARGO_TARGET_DIR  shared by every mutation, so that each rebuilds only the two crates
#                     of this workspace it changes (default: target/ of this checkout)
#
# Exits 1 when a mutation is not caught (or does not apply or build), 2 when the control
# run fails. Only HEAD is mutated: uncommitted changes are not in the throwaway trees.
set -euo pipefail

repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$repo"

fixed=$(sed -n 's/^pub const FIXED_SEEDS: \[u64; [0-9]*\] = \[\(.*\)\];/\1/p' sim/src/cli.rs | tr -d ',')
seeds=${MUTATION_SEEDS:-$fixed}
steps=${MUTATION_STEPS:-111112}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
# Each throwaway tree is compiled once: nothing to reuse incrementally.
export CARGO_INCREMENTAL=0
simulate="$CARGO_TARGET_DIR/release/simulate"

if [[ $# -gt 0 ]]; then
  patches=("$@")
else
  patches=("$repo"/hack/mutations/*.patch)
fi

head=$(git rev-parse --short HEAD)
echo "mutations of $head; seeds: $seeds; $steps steps per seed; target dir $CARGO_TARGET_DIR"

work=$(mktemp -d "${TMPDIR:-/tmp}/eagle-eye-mutation.XXXXXX")
cleanup() {
  git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work"
  git -C "$repo" worktree prune
}
trap cleanup EXIT

# Runs the seeds against the tree in $work/tree, built; prints one line: the verdict.
# Returns 0 when a seed reports a violation.
hunt() {
  local seed out rc line
  for seed in $seeds; do
    rc=0
    out=$("$simulate" --seed "$seed" --steps "$steps" 2>&1) || rc=$?
    line=$(grep -m1 '^INVARIANT VIOLATED' <<<"$out" || true)
    if [[ -n $line ]]; then
      # "INVARIANT VIOLATED at step N of seed S: what"
      sed -E 's/^INVARIANT VIOLATED at step ([0-9]+) of seed ([0-9]+): (.*)$/caught by seed \2 at step \1 (invariant: \3)/' <<<"$line"
      printf '%s\n' "$out" >"$work/last-violation.txt"
      return 0
    fi
    if [[ $rc -ne 0 ]]; then
      echo "caught by seed $seed: simulate exited $rc without naming an invariant: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
      return 0
    fi
  done
  echo "NOT CAUGHT by seeds $seeds ($steps steps each)"
  return 1
}

# Makes a fresh tree of HEAD with `patch` applied (none: HEAD itself) and builds it.
prepare() {
  local patch=${1-}
  git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work/tree"
  git worktree add --quiet --detach "$work/tree" HEAD
  if [[ -n $patch ]] && ! git -C "$work/tree" apply "$patch"; then
    echo "DOES NOT APPLY to $head"
    return 1
  fi
  if ! (cd "$work/tree" && cargo build --quiet --release -p eagle-eye-sim --bin simulate) \
      >"$work/build.log" 2>&1; then
    echo "DOES NOT BUILD: $(grep -m1 '^error' "$work/build.log" || tail -n 1 "$work/build.log")"
    return 1
  fi
}

if [[ ${MUTATION_CONTROL:-0} == 1 ]]; then
  printf '%-50s ' "control (HEAD unmutated)"
  prepare || exit 2
  started=$SECONDS
  if verdict=$(hunt); then
    echo "FAILS: $verdict"
    sed -n '1,60p' "$work/last-violation.txt"
    exit 2
  fi
  echo "passes every seed ($((SECONDS - started)) s)"
fi

missed=0
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  printf '%-50s ' "$name"
  if ! prepare "$patch"; then
    missed=$((missed + 1))
    continue
  fi
  started=$SECONDS
  if verdict=$(hunt); then
    echo "$verdict ($((SECONDS - started)) s)"
  else
    echo "$verdict"
    missed=$((missed + 1))
  fi
done

echo "seeds: $seeds; $steps steps per seed"
if [[ $missed -gt 0 ]]; then
  echo "$missed of ${#patches[@]} mutations not caught"
  exit 1
fi
echo "all ${#patches[@]} mutations caught"
