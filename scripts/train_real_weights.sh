#!/usr/bin/env bash
# Reproduce the shipped small model (model/cards/pasam_micro.md) on a CPU, in three runs, then
# pack the weights into model/weights/ and print the measured table.
#
#   scripts/train_real_weights.sh            # all stages (resumes a stage that was interrupted)
#   scripts/train_real_weights.sh stage1     # one stage: stage1 | stage2 | control | pack | table
#
# Data: ../shared/data (ISBI 2012 EM, DSB 2018 nuclei). Training uses the training splits only
# (EM sections 0-19, nuclei files with index != 4 mod 5), of which a validation part is carved
# out (EM sections 16-19, nuclei index 3 mod 5) to pick the stage-1 checkpoint. Runs go to
# runs/ (git-ignored); each saves every 250 steps and continues with --resume after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PASAM=${PASAM:-.venv/bin/pasam}
DATA=${PASAM_DATA:-../shared/data}
TRAIN=(components:$DATA/isbi2012-em@0-15 "labels:$DATA/dsb2018-nuclei@%5=0,1,2")
VAL=(--val components:$DATA/isbi2012-em@16-19 --val "labels:$DATA/dsb2018-nuclei@%5=3")
COMMON=(--guide-mode image --crops --corrective-clicks 2 --batch-size 8 --seed 0 --save-every 250)

resume() { [ -f "$1/train_state.pt" ] && echo --resume || true; }

stage1() {  # SAM from scratch: encoder, prompt encoder, decoder (no adapter)
    "$PASAM" train "${TRAIN[@]}" "${VAL[@]}" "${COMMON[@]}" \
        --train sam --variant vit_s256 --epoch-steps 250 --epochs 20 \
        --optimizer adamw --weight-decay 0.05 --lr 5e-4 --schedule cosine --warmup-steps 200 \
        --grad-clip 1.0 --val-every 500 --val-max-objects 5 \
        --out-dir runs/stage1 $(resume runs/stage1)
}

# stage 2 and the control: the paper's schedule compressed to 21 epochs of 72 steps (1512
# steps): Adam lr 1e-3, x0.1 after epochs 10 and 20, Gumbel mining from epoch 5
PAPER=(--epoch-steps 72 --epochs 21 --lr 1e-3 --lr-drop-epoch 10 --mining-start-epoch 5
       --val-every 504 --val-max-objects 5)

stage2() {  # PA-SAM adapter (+ SAM's mask head) on the frozen stage-1 SAM
    "$PASAM" train "${TRAIN[@]}" "${VAL[@]}" "${COMMON[@]}" "${PAPER[@]}" \
        -c runs/stage1/sam-best.safetensors --train adapter \
        --out-dir runs/stage2 $(resume runs/stage2)
}

control() {  # the same steps on the same trainable decoder parameters, without the adapter
    "$PASAM" train "${TRAIN[@]}" "${VAL[@]}" "${COMMON[@]}" "${PAPER[@]}" \
        -c runs/stage1/sam-best.safetensors --train head \
        --out-dir runs/control $(resume runs/control)
}

pack() {  # float16 copies into model/weights/ (the adapter and control files name their base)
    "$PASAM" pack-checkpoint runs/stage1/sam-best.safetensors model/weights/pasam_micro_sam.safetensors --half
    "$PASAM" pack-checkpoint runs/stage2/adapter.safetensors model/weights/pasam_micro.safetensors \
        --half --base pasam_micro_sam.safetensors
    "$PASAM" pack-checkpoint runs/control/head.safetensors model/weights/pasam_micro_control.safetensors \
        --half --base pasam_micro_sam.safetensors
}

table() { .venv/bin/python benchmarks/real_weights_table.py --max-objects 15 --json runs/table.json; }

if [ $# -eq 0 ]; then set -- stage1 stage2 control pack table; fi
for stage in "$@"; do
    echo "== $stage" >&2
    "$stage"
done
