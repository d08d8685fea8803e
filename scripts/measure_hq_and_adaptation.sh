#!/usr/bin/env bash
# Issue 18's measurements on the shipped small model (model/weights/pasam_micro*.safetensors):
#
#   scripts/measure_hq_and_adaptation.sh            # everything below, in order
#   scripts/measure_hq_and_adaptation.sh hq         # one stage: hq | threeway | adapt
#
# hq:       HQ-SAM's additions (HQ output token, its MLP, the fusion layers) trained on the
#           frozen stage-1 SAM with the data, schedule, step budget and seed of the PA-SAM
#           adapter (stage 2 of scripts/train_real_weights.sh): 1512 steps of 8 crops.
# threeway: SAM / PA-SAM / HQ-SAM on the held-out splits (EM 20-29, nuclei 4 mod 5) from one
#           `pasam eval` run per prompt (1 box; 1 point), mIoU and boundary mIoU; HQ=FILE
#           evaluates another HQ file, e.g. the shipped model/weights/pasam_micro_hq.safetensors
#           (runs/hq/hq.safetensors packed as float16).
# adapt:    benchmarks/task_adaptation.py: base / +PLM / +PLM+PMM / +adapter / +both with 10,
#           25 and all training images, 1 point and 1 box, wall time; resumable (finished rows
#           are kept in runs/task-adaptation.rows.jsonl and not run again).
# Runs go to runs/ (git-ignored); hq continues with --resume after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PASAM=${PASAM:-.venv/bin/pasam}
PY=${PY:-.venv/bin/python}
DATA=${PASAM_DATA:-../shared/data}
W=model/weights
TRAIN=(components:$DATA/isbi2012-em@0-15 "labels:$DATA/dsb2018-nuclei@%5=0,1,2")
VAL=(--val components:$DATA/isbi2012-em@16-19 --val "labels:$DATA/dsb2018-nuclei@%5=3")
TEST=(components:$DATA/isbi2012-em@20-29 "labels:$DATA/dsb2018-nuclei@%5=4")
COMMON=(--crops --corrective-clicks 2 --batch-size 8 --seed 0 --save-every 250)
PAPER=(--epoch-steps 72 --epochs 21 --lr 1e-3 --lr-drop-epoch 10 --val-every 504 --val-max-objects 5)

resume() { [ -f "$1/train_state.pt" ] && echo --resume || true; }

hq() {
    "$PASAM" train "${TRAIN[@]}" "${VAL[@]}" "${COMMON[@]}" "${PAPER[@]}" \
        -c $W/pasam_micro_sam.safetensors --train hq --out-dir runs/hq $(resume runs/hq)
}

threeway() {
    "$PASAM" eval "${TEST[@]}" -c $W/pasam_micro.safetensors --baseline $W/pasam_micro_sam.safetensors \
        --compare "${HQ:-runs/hq/hq.safetensors}" --max-objects 15 --csv runs/threeway-box.csv
    "$PASAM" eval "${TEST[@]}" -c $W/pasam_micro.safetensors --baseline $W/pasam_micro_sam.safetensors \
        --compare "${HQ:-runs/hq/hq.safetensors}" --max-objects 15 --points 1 --no-box --csv runs/threeway-point.csv
}

adapt() {
    "$PY" benchmarks/task_adaptation.py --base $W/pasam_micro_sam.safetensors \
        --max-objects 15 --rows runs/task-adaptation.rows.jsonl --json runs/task-adaptation.json
}

if [ $# -eq 0 ]; then set -- hq threeway adapt; fi
for stage in "$@"; do
    echo "== $stage" >&2
    "$stage"
done
