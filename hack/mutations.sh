#!/usr/bin/env bash
# Shows that the simulator finds bugs (issue 19, point 4): each patch in hack/mutations/
# puts back one bug this project had or could have, and the simulator's CI seed set must
# catch it. For each patch, in a throwaway worktree of HEAD: apply, build the simulator
# (the sim profile), run the fixed seeds one at a time until one reports a violated invariant.
#
#   hack/mutations.sh                      every patch in hack/mutations/
#   hack/mutations.sh hack/mutations/03-*  only these
#
# Environment:
#   MUTATION_SEEDS    seeds to run (default: sim/src/cli.rs's FIXED_SEEDS, the CI set)
#   MUTATION_STEPS    steps per seed (default 111112: a default `simulate` run's share
#                     of 1,000,000 steps over the fixed seeds and its one random seed)
#   MUTATION_CONTROL  0: skip the control run (see below) and give every seed its full
#                     MUTATION_STEPS
#   MUTATION_LIMITS   "S=N ...": skip the control run, seed S runs N steps (as a control
#                     run printed them)
#   CARGO_TARGET_DIR  shared by every mutation, so that each rebuilds only the two crates
#                     of this workspace it changes (default: target/ of this checkout); one
#                     run at a time per target dir
#
# The control run comes first: HEAD unmutated, every seed for MUTATION_STEPS steps. A seed
# that HEAD itself fails at step N is then run for N-1 steps only, so that a mutation is
# "caught" only where HEAD passes: by a violation that the mutation made.
#
# Exits 1 when a mutation is not caught (or does not apply or build). Only HEAD is
# mutated: uncommitted changes are not in the throwaway trees.
set -euo pipefail

repo=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
cd "$repo"

fixed=$(sed -n 's/^pub const FIXED_SEEDS: \[u64; [0-9]*\] = \[\(.*\)\];/\1/p' sim/src/cli.rs | tr -d ',')
seeds=${MUTATION_SEEDS:-$fixed}
steps=${MUTATION_STEPS:-111112}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
# Each throwaway tree is compiled once: nothing to reuse incrementally.
export CARGO_INCREMENTAL=0

if [[ $# -gt 0 ]]; then
  patches=("$@")
else
  patches=("$repo"/hack/mutations/*.patch)
fi

head=$(git rev-parse --short HEAD)
echo "mutations of $head; seeds: $seeds; $steps steps per seed; target dir $CARGO_TARGET_DIR"

work=$(mktemp -d "${TMPDIR:-/tmp}/eagle-eye-mutation.XXXXXX")
# Each build's binary is copied here: another run sharing the target dir may build over it.
simulate="$work/simulate"
cleanup() {
  git -C "$repo" worktree remove --force "$work/tree" >/dev/null 2>&1 || true
  rm -rf "$work"
  git -C "$repo" worktree prune
}
trap cleanup EXIT

# Steps per seed: MUTATION_STEPS, or less where the control run failed.
declare -A limit
for seed in $seeds; do limit[$seed]=$steps; done
for pair in ${MUTATION_LIMITS:-}; do limit[${pair%%=*}]=${pair#*=}; done

# Runs the seeds against the tree in $work/tree, built; prints one line: the verdict.
# Returns 0 when a seed reports a violation.
hunt() {
  local seed out rc line
  for seed in $seeds; do
    [[ ${limit[$seed]} -gt 0 ]] || continue
    rc=0
    out=$("$simulate" --seed "$seed" --steps "${limit[$seed]}" 2>&1) || rc=$?
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
  echo "NOT CAUGHT by seeds $seeds"
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
  if ! (cd "$work/tree" && cargo build --profile sim -p eagle-eye-sim --bin simulate) \
      >"$work/build.log" 2>&1; then
    echo "DOES NOT BUILD: $(grep -m1 '^error' "$work/build.log" || tail -n 1 "$work/build.log")"
    return 1
  fi
  # Cargo judges a workspace crate fresh by file times, and every tree made here has the
  # same layout: a build that compiled nothing could be another tree's binary.
  if ! grep -q 'Compiling eagle-eye-operator' "$work/build.log"; then
    echo "STALE BUILD: cargo reused an earlier tree's operator crate; is another run sharing $CARGO_TARGET_DIR?"
    return 1
  fi
  cp "$CARGO_TARGET_DIR/sim/simulate" "$simulate"
}

if [[ ${MUTATION_CONTROL:-1} != 0 && -z ${MUTATION_LIMITS:-} ]]; then
  echo "control: HEAD unmutated"
  prepare || exit 2
  for seed in $seeds; do
    rc=0
    out=$("$simulate" --seed "$seed" --steps "$steps" 2>&1) || rc=$?
    line=$(grep -m1 '^INVARIANT VIOLATED' <<<"$out" || true)
    if [[ -n $line ]]; then
      at=$(sed -E 's/^INVARIANT VIOLATED at step ([0-9]+) .*/\1/' <<<"$line")
      limit[$seed]=$((at - 1))
      echo "  seed $seed: HEAD fails at step $at (${line#*: }); mutations run it for ${limit[$seed]} steps"
    elif [[ $rc -ne 0 ]]; then
      echo "  seed $seed: HEAD fails (simulate exited $rc); not used"
      limit[$seed]=0
    else
      echo "  seed $seed: HEAD passes $steps steps"
    fi
  done
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

echo -n "seeds (steps):"
for seed in $seeds; do echo -n " $seed (${limit[$seed]})"; done
echo
if [[ $missed -gt 0 ]]; then
  echo "$missed of ${#patches[@]} mutations not caught"
  exit 1
fi
echo "all ${#patches[@]} mutations caught"
