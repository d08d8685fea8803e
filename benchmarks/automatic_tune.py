"""Pick the automatic-segmentation thresholds of a model on VALIDATION data (never the
test splits): AP at IoU 0.5 (DSB 2018 / StarDist: TP / (TP + FP + FN), mean over images)
on the validation parts carved from the training splits (EM sections 16-19, nuclei files
with index 3 mod 5) for a grid of predicted-IoU and stability thresholds. SAM's defaults
(0.88 / 0.95) suit SAM's calibrated IoU head; a small model's head predicts lower IoUs.

    python benchmarks/automatic_tune.py model/weights/pasam_micro.safetensors

With ``--boxes`` it tunes box proposals (zoomed models, :meth:`AutomaticSettings.for_zoom`):
the masks of every proposal are computed once per image with the thresholds at 0
(:meth:`AutomaticSegmenter.box_candidates`), then every combination of predicted-IoU,
stability and box-agreement thresholds is applied to them (:func:`select_boxes`: filters,
mask NMS), so the sweep costs one pass of the model:

    python benchmarks/automatic_tune.py model/weights/pasam_micro.safetensors --boxes \
        --box-source regions --iou 0,0.5,0.6,0.7 --stability 0,0.7,0.8,0.9 \
        --agreement 0,0.5,0.7,0.8
"""

import argparse
import itertools
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _splits import validation  # noqa: E402

from pasam_plugins.automatic import (  # noqa: E402
    AutomaticResult,
    AutomaticSegmenter,
    AutomaticSettings,
    select_boxes,
)
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
    ap.add_argument("--boxes", action="store_true", help="tune box proposals (zoomed models)")
    ap.add_argument("--box-source", default="regions", choices=("grid", "regions"))
    ap.add_argument("--scales", default="16,32,64,128,256", help="grid box sides")
    ap.add_argument("--agreement", default="0,0.5,0.7")
    ap.add_argument("--nms", default="0.7", help="mask NMS thresholds")
    ap.add_argument(
        "--uncertainty", default="none", help="max boundary uncertainty values ('none': off)"
    )
    ap.add_argument(
        "--store", type=Path, default=None, help="pickle of the masks: written once, then read"
    )
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
    if args.boxes:
        tune_boxes(args, predictor, val)
        return
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


def tune_boxes(args, predictor, val) -> None:
    scales = tuple(int(v) for v in args.scales.split(","))
    zero = AutomaticSettings.for_zoom(
        box_source=args.box_source,
        box_scales=scales,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        min_box_agreement=0.0,
    )
    seg = AutomaticSegmenter(predictor, zero)
    stored = []  # (data set, masks, image size, labels)
    if args.store is not None and args.store.exists():
        with args.store.open("rb") as f:
            stored = pickle.load(f)
        val = []
    for ds in val:
        for sample in ds.samples:
            image, labels = sample.load()
            t0 = time.perf_counter()
            cands, size = seg.box_candidates(image)
            print(
                f"{sample.name}: {len(cands)} masks, {time.perf_counter() - t0:.1f} s", flush=True
            )
            stored.append((ds.name, cands, size, labels))
    if args.store is not None and not args.store.exists():
        with args.store.open("wb") as f:
            pickle.dump(stored, f)
    floats = [[float(v) for v in a.split(",")] for a in (args.iou, args.stability, args.agreement)]
    uncs = [None if v == "none" else float(v) for v in args.uncertainty.split(",")]
    nmss = [float(v) for v in args.nms.split(",")]
    rows = []
    for iou, stab, agree, nms, unc in itertools.product(*floats, nmss, uncs):
        s = replace(
            zero,
            pred_iou_thresh=iou,
            stability_score_thresh=stab,
            min_box_agreement=agree,
            box_nms_thresh=nms,
            max_boundary_uncertainty=unc,
        )
        per: dict[str, list[float]] = {}
        for name, cands, size, labels in stored:
            result = AutomaticResult(select_boxes(cands, s, size), size)
            (m50,) = match(labels, result.label_image(), (0.5,))
            per.setdefault(name, []).append(m50.ap)
        aps = {k: round(float(np.mean(v)), 3) for k, v in per.items()}
        rows.append((float(np.mean(list(aps.values()))), iou, stab, agree, nms, unc, aps))
        print(
            f"iou {iou:.2f} stability {stab:.2f} agreement {agree:.2f} nms {nms:.2f} "
            f"uncertainty {unc}: "
            f"AP50 {aps} mean {rows[-1][0]:.3f}",
            flush=True,
        )
    best = max(rows, key=lambda r: r[0])
    print(f"best (mean AP50 over the data sets) {best}")


if __name__ == "__main__":
    main()
