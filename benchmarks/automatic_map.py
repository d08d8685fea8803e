"""Automatic instance segmentation quality on the held-out splits: AP at IoU 0.5 and 0.75
(DSB 2018 / StarDist: TP / (TP + FP + FN), mean over images) with and without the
boundary-uncertainty filter, and the time per image.

The settings are the model's defaults (:func:`pasam_plugins.automatic.default_settings`:
SAM's for whole-image models, :meth:`AutomaticSettings.for_zoom` (box proposals, chosen on
validation) for zoomed ones); the threshold options override them.

The reproducible commands for the table in the README / model card (shipped model, test
splits, in parts of under 15 minutes on a 2-core CPU, then the CSVs summarized):

  for part in isbi2012-em@20-24 isbi2012-em@25-29; do
    python benchmarks/automatic_map.py --checkpoint model/weights/pasam_micro.safetensors \
        --data components:../shared/data/$part --max-uncertainty 0.2 --threads 1 \
        --device cpu --csv automatic_map_${part#*@}.csv; done
  python benchmarks/automatic_map.py --checkpoint model/weights/pasam_micro.safetensors \
      --data "labels:../shared/data/dsb2018-nuclei@%5=4" --max-uncertainty 0.2 --threads 1 \
      --device cpu --csv automatic_map_nuclei.csv
  python benchmarks/automatic_map.py --summarize automatic_map_*.csv

Without --checkpoint a random-weight model runs (the pipeline, not a quality number).
The second run of each image (with the filter) takes its embeddings from the cache (as far
as the predictor's 512 MiB cache holds them), so its "s/image" is not a first-run time.
"""

import argparse
import csv
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _splits import TEST  # noqa: E402

from pasam_plugins.automatic import AutomaticSegmenter, default_settings  # noqa: E402
from pasam_plugins.instance_metrics import match  # noqa: E402
from pasam_plugins.predictor import PASamPredictor  # noqa: E402
from pasam_plugins.train.datasets import read_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument(
        "--variant", default="vit_tiny", help="random-weight variant without --checkpoint"
    )
    ap.add_argument("--data", action="append", default=None, help="data spec (repeatable)")
    ap.add_argument("--points-per-side", type=int, default=None)
    ap.add_argument("--pred-iou-thresh", type=float, default=None, help="default: the model's")
    ap.add_argument("--stability-thresh", type=float, default=None, help="default: the model's")
    ap.add_argument("--box-agreement", type=float, default=None, help="default: the model's")
    ap.add_argument("--max-uncertainty", type=float, default=0.5)
    ap.add_argument("--min-region-area", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="images per data set (0: all)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--csv", type=Path, default=None, help="per-image results")
    ap.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        default=None,
        help="only print the table of CSVs (rows of one data set's parts merged)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = ap.parse_args()
    if args.summarize:
        rows = []
        for path in args.summarize:
            with path.open() as f:
                for r in csv.DictReader(f):
                    r = {**r, **{k: float(r[k]) for k in ("ap50", "ap75", "seconds")}}
                    # parts of one data set (e.g. EM sections 20-24 and 25-29) form one row
                    rows.append({**r, "dataset": r["dataset"].split("@")[0]})
        table(rows, list(dict.fromkeys(r["mode"] for r in rows)))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.checkpoint is not None:
        from pasam_plugins.checkpoint import load_model

        model = load_model(args.checkpoint)
    else:
        from pasam_plugins.testing import make_test_model

        model = make_test_model(seed=0, variant=args.variant)
        print("WARNING: random weights (no --checkpoint): the numbers are meaningless")
    predictor = PASamPredictor(model, device=args.device)
    base = default_settings(
        model,
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_thresh,
        min_box_agreement=args.box_agreement,
        min_mask_region_area=args.min_region_area,
    )
    print(f"settings: {base}")
    modes = {"no filter": base}
    if model.has_adapter:
        modes[f"uncertainty <= {args.max_uncertainty:g}"] = replace(
            base, max_boundary_uncertainty=args.max_uncertainty
        )
    rows = []
    for spec in args.data or TEST:
        for ds in read_source(spec):
            samples = ds.samples[: args.limit] if args.limit else ds.samples
            for sample in samples:
                image, truth = sample.load()
                for mode, settings in modes.items():
                    seg = AutomaticSegmenter(predictor, settings)
                    t0 = time.perf_counter()
                    result = seg.generate(image)
                    seconds = time.perf_counter() - t0
                    m50, m75 = match(truth, result.label_image(), (0.5, 0.75))
                    rows.append(
                        {
                            "dataset": ds.name,
                            "image": sample.name,
                            "mode": mode,
                            "objects_true": int(len(set(truth.ravel().tolist()) - {0})),
                            "objects_found": len(result),
                            "ap50": round(m50.ap, 4),
                            "ap75": round(m75.ap, 4),
                            "seconds": round(seconds, 2),
                        }
                    )
                    print(
                        f"{sample.name} [{mode}]: AP50 {m50.ap:.3f} AP75 {m75.ap:.3f}, {seconds:.1f} s",
                        flush=True,
                    )
    if args.csv:
        with args.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    table(rows, list(modes))


def table(rows: list[dict], modes: list[str]) -> None:
    print("\n| data set | images | filter | AP@0.5 | AP@0.75 | objects found / true | s/image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dsname in dict.fromkeys(r["dataset"] for r in rows):
        for mode in modes:
            sel = [r for r in rows if r["dataset"] == dsname and r["mode"] == mode]
            found = sum(int(r["objects_found"]) for r in sel)
            true = sum(int(r["objects_true"]) for r in sel)
            print(
                f"| {dsname} | {len(sel)} | {mode} | {statistics.mean(r['ap50'] for r in sel):.3f} | "
                f"{statistics.mean(r['ap75'] for r in sel):.3f} | {found} / {true} | "
                f"{statistics.mean(r['seconds'] for r in sel):.1f} |"
            )


if __name__ == "__main__":
    main()
