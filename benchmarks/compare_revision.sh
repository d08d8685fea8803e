#!/usr/bin/env bash
# Same-hour comparison of this checkout with an earlier revision of the project.
#
# The README's timing ratios are only comparable when both sides ran under the same
# conditions: on this 2-core machine the same code gives ratios up to ~10% apart from one
# run to the next, and more between a loaded and an idle hour. This runs each revision's
# own benchmark scripts (click_latency, labelstudio_latency, napari_latency: each script
# measures what that revision's README reported) in this checkout's virtual environment,
# alternating the two revisions, and writes every output to OUT_DIR.
#
#   benchmarks/compare_revision.sh <revision> [OUT_DIR] [ROUNDS]
#
# e.g. benchmarks/compare_revision.sh 0660ee2 runs/compare 2   (the 2026-11-23 README's code)
#
# PASAM_PYTHON (default: this checkout's .venv/bin/python) runs both sides; napari_latency
# gets --em-dir PASAM_EM_DIR (default: ../shared/data/isbi2012-em) where that folder exists.
set -euo pipefail

rev=${1:?usage: benchmarks/compare_revision.sh <revision> [OUT_DIR] [ROUNDS]}
tag=${rev//[^A-Za-z0-9._-]/_}  # for file names (a revision may be a branch such as a/b)
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${2:-$root/runs/compare-$tag}" && cd "${2:-$root/runs/compare-$tag}" && pwd)
rounds=${3:-1}
py=${PASAM_PYTHON:-$root/.venv/bin/python}
em=${PASAM_EM_DIR:-$root/../shared/data/isbi2012-em}
[ -d "$em" ] && em=$(cd "$em" && pwd) || em=""

old=$(mktemp -d "${TMPDIR:-/tmp}/pasam-rev-XXXXXX")
git -C "$root" worktree add --detach --force "$old" "$rev" >/dev/null
trap 'git -C "$root" worktree remove --force "$old"' EXIT

# run_script <tree> <label> <script> [args...]: that tree's script with that tree's code
run_script() {
    local tree=$1 label=$2 script=$3
    shift 3
    local log=$out/$label-${script%.py}-$round.txt
    [ -f "$tree/benchmarks/$script" ] || { echo "$label: no $script" >"$log"; return; }
    local args=("$@")
    if [ "$script" = click_latency.py ] && grep -q -- "--sizes" "$tree/benchmarks/$script"; then
        args+=(--sizes 1024x1024)  # the size every revision measures
    fi
    if [ "$script" = napari_latency.py ] && [ -n "$em" ]; then
        args+=(--em-dir "$em")  # older scripts look for it next to their own checkout
    fi
    echo "== $label $script ${args[*]}" >&2
    local status=0
    (cd "$tree" && PYTHONPATH="$tree" "$py" "benchmarks/$script" "${args[@]}") >"$log" 2>&1 \
        || status=$?
    # the scripts exit 1 when a target is missed: that is a result, read the output
    [ "$status" -eq 0 ] || echo "$label $script exited with status $status" >&2
}

for round in $(seq 1 "$rounds"); do
    for script in click_latency.py labelstudio_latency.py napari_latency.py; do
        if [ $((round % 2)) -eq 1 ]; then order="new old"; else order="old new"; fi
        for side in $order; do
            if [ "$side" = new ]; then
                run_script "$root" current "$script"
            else
                run_script "$old" "rev-$tag" "$script"
            fi
        done
    done
done
echo "outputs in $out" >&2
grep -H -E "ratio|x  \(target" "$out"/*.txt || true
