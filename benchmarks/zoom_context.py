"""Pick the zoom window of a zoomed model on VALIDATION data (never the test splits).

For box prompts the window side is ``box_context`` x the box's longer side; for clicks alone
the model first tries windows of a few sizes (``point_windows``). This script measures mIoU
on the validation parts carved from the training splits (EM sections 16-19, nuclei files
with index 3 mod 5) for several box contexts and point-window sets, so that the values
stored with the shipped model are chosen on held-in data:

    python benchmarks/zoom_context.py runs/stage2/adapter.safetensors
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _splits import validation  # noqa: E402

from pasam_plugins.checkpoint import load_model  # noqa: E402
from pasam_plugins.evaluate import evaluate_model  # noqa: E402
from pasam_plugins.segment import ZoomSettings  # noqa: E402
from pasam_plugins.train.datasets import read_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--contexts", default="1.5,1.75,2.0,2.25,2.5")
    ap.add_argument("--max-objects", type=int, default=15)
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    base = ZoomSettings.from_metadata(model.origin.metadata) or ZoomSettings()
    val = [
        *(ds for spec in validation() for ds in read_source(spec)),
    ]
    print("box prompts (validation mIoU per dataset):")
    for c in (float(v) for v in args.contexts.split(",")):
        rep = evaluate_model(
            model,
            val,
            compare_sam=False,
            max_objects=args.max_objects,
            zoom=replace(base, box_context=c),
        )
        per = {d: round(100 * rep.mean(rep.models[0], d)[0], 1) for d in rep.datasets}
        print(f"  box_context {c:4.2f}: {per}  mean {100 * rep.mean(rep.models[0])[0]:.1f}")
    print("one click (validation mIoU per dataset):")
    for windows in ((48.0, 96.0, 192.0, 384.0), (32.0, 64.0, 128.0, 256.0), (64.0, 128.0, 256.0)):
        rep = evaluate_model(
            model,
            val,
            compare_sam=False,
            max_objects=args.max_objects,
            num_points=1,
            use_box=False,
            zoom=replace(base, point_windows=windows),
        )
        per = {d: round(100 * rep.mean(rep.models[0], d)[0], 1) for d in rep.datasets}
        print(f"  point_windows {windows}: {per}  mean {100 * rep.mean(rep.models[0])[0]:.1f}")


if __name__ == "__main__":
    main()
