"""Pick the automatic-segmentation thresholds of a model on VALIDATION data (never the
test splits): AP at IoU 0.5 (DSB 2018 / StarDist: TP / (TP + FP + FN), mean over images)
on the validation parts carved from the training splits (EM sections 16-19, nuclei files
with index 3 mod 5) for a grid of predicted-IoU and stability thresholds. SAM's defaults
(0.88 / 0.95) suit SAM's calibrated IoU head; a small model's head predicts lower IoUs.

    python benchmarks/automatic_tune.py model/weights/pasam_micro.safetensors
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _splits import validation  # noqa: E402

from pasam_plugins.automatic import AutomaticSegmenter, AutomaticSettings  # noqa: E402
from pasam_plugins.checkpoint import load_model  # noqa: E402
from pasam_plugins.instance_metrics import match  # noqa: E402
from pasam_plugins.predictor import PASamPredictor  # noqa: E402
from pasam_plugins.train.datasets import read_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--iou", default="0.4,0.5,0.6")
    ap.add_argument("--stability", default="0.7,0.85")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--em-images", type=int, default=4, help="EM validation sections used")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    val = [
        *(ds for spec in validation(f"16-{15 + args.em_images}") for ds in read_source(spec)),
    ]
    grid = itertools.product(
        (float(v) for v in args.iou.split(",")), (float(v) for v in args.stability.split(","))
    )
    predictor = PASamPredictor(model, device="cpu")
    for iou, stab in grid:
        seg = AutomaticSegmenter(
            predictor, AutomaticSettings(pred_iou_thresh=iou, stability_score_thresh=stab)
        )
        per = {}
        for ds in val:
            aps = []
            for sample in ds.samples:
                image, labels = sample.load()
                (m50,) = match(labels, seg.generate(image).label_image(), (0.5,))
                aps.append(m50.ap)
            per[ds.name] = round(float(np.mean(aps)), 3)
        print(f"pred_iou_thresh {iou:.2f} stability {stab:.2f}: AP50 {per}", flush=True)


if __name__ == "__main__":
    main()
