"""Agreement of the fast encoder path with the float32 reference on held-out images.

Segments the same objects twice through ``pasam_plugins.segment.Segmenter`` (the model's
own zoom settings apply): with SAM's float32 encoder modules, and with the fast encoder
(fused attention) in ``--precision`` (default ``bf16``). Per object and prompt (its box,
and one click at its deepest pixel) it compares the masks (IoU), the predicted IoUs and the
uncertainty maps, and prints the median mask IoU, the predicted-IoU differences, the
uncertainty mean abs difference, and whether issue 20's rule holds (median mask IoU >= 0.98,
every predicted IoU within 0.02). Exit status 0 when it holds, 1 otherwise.

Default data: the held-out splits, ISBI 2012 EM sections 20-29 and the DSB 2018 nuclei test
split (file index 4 mod 5). Only meaningful on trained weights; ``random:<variant>`` runs
the same on random weights (a smoke test of the measurement).

    python benchmarks/precision_agreement.py --checkpoint model/pasam_s256.safetensors
    python benchmarks/precision_agreement.py --checkpoint random:vit_s256 --max-images 2
"""

import argparse
import json
import sys
import time
from pathlib import Path

from _splits import TEST

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoint", required=True, help="model file, or random:<variant> (random weights)"
    )
    ap.add_argument("--sam-checkpoint", default=None, help="base SAM for decoder-only files")
    ap.add_argument(
        "--data",
        action="append",
        default=None,
        help="data spec as for `pasam eval` (repeatable); default: the EM and nuclei test splits",
    )
    ap.add_argument("--precision", default="bf16", help="candidate precision: auto, float32, bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-objects", type=int, default=10, help="objects per image")
    ap.add_argument("--max-images", type=int, default=None, help="images per data set")
    ap.add_argument("--prompts", default="box,point", help="box and/or point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write summary and rows here")
    args = ap.parse_args(argv)

    import torch

    from pasam_plugins.agreement import precision_agreement
    from pasam_plugins.train.datasets import read_source

    if args.checkpoint.startswith("random:"):
        from pasam_plugins.testing import make_test_model

        model = make_test_model(seed=args.seed, variant=args.checkpoint.split(":", 1)[1])
        label = f"{args.checkpoint} (RANDOM WEIGHTS: a smoke test, not the acceptance check)"
    else:
        from pasam_plugins.checkpoint import load_model

        model = load_model(args.checkpoint, sam_checkpoint=args.sam_checkpoint)
        label = args.checkpoint
    samples = []
    for spec in args.data or TEST:
        for ds in read_source(spec, split="val"):
            samples += ds.samples[: args.max_images] if args.max_images else ds.samples
    t0 = time.perf_counter()
    report = precision_agreement(
        model,
        samples,
        precision=args.precision,
        device=args.device,
        max_objects=args.max_objects,
        prompts=[p.strip() for p in args.prompts.split(",") if p.strip()],
        seed=args.seed,
        progress=True,
    )
    print(
        f"model {label}: {model.variant}, adapter {model.has_adapter}, zoom "
        f"{model.origin.zoom is not None}; torch {torch.__version__}, "
        f"device {args.device}; {len(samples)} images in {time.perf_counter() - t0:.0f} s"
    )
    print(report.format())
    for name, why in report.skipped:
        print(f"  skipped {name}: {why}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": report.summary(), "objects": report.rows()}, indent=1)
        )
    return 0 if report.passes() else 1


if __name__ == "__main__":
    sys.exit(main())
