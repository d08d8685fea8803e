"""What PA-SAM's extras are worth to an annotator, on the held-out splits (issue 13).

Runs the same evaluation as

    pasam eval components:../shared/data/isbi2012-em@20-29 'labels:../shared/data/dsb2018-nuclei@%5=4' \\
        -c MODEL --clicks 20 --max-objects 30 --min-pixels 20 --csv out/interactive/eval.csv

(ISBI 2012 EM sections 20-29, DSB 2018 nuclei files with index 4 mod 5; at most 30 objects of
at least 20 pixels per image, seeded) and writes, besides pasam eval's files, out/interactive/numbers.md (--out-dir):
the tables, the targets met or missed, the command, the machine and the wall time, ready for
the README and the model card.

    python benchmarks/interactive_eval.py --checkpoint pasam_small.safetensors
    python benchmarks/interactive_eval.py --checkpoint adapter.safetensors --sam-checkpoint sam.safetensors
    python benchmarks/interactive_eval.py        # RANDOM vit_s256 weights, zoomed: wall time only

Without --checkpoint the model is a random-weight ``vit_s256`` used zoomed in, as the
shipped small model is: the numbers are meaningless, the wall time is what the real model
costs on this machine. Not part of the test suite.
"""

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _splits import TEST  # noqa: E402

from pasam_plugins.evaluate import evaluate_model  # noqa: E402
from pasam_plugins.train.datasets import read_source  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", type=Path, help="the model (default: random vit_s256)")
    ap.add_argument("--sam-checkpoint", type=Path, help="base SAM of an adapter-only file")
    ap.add_argument("--variant", default="vit_s256", help="random-weight variant without -c")
    ap.add_argument("--data", nargs="+", default=list(TEST), help="pasam eval data specs")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--max-objects", type=int, default=30)
    ap.add_argument("--min-pixels", type=int, default=20)
    ap.add_argument("--strategies", default="oracle,suggested,band")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a machine shared with other jobs, more threads stall at "
        "their barriers whenever one is descheduled)",
    )
    ap.add_argument("--out-dir", type=Path, default=Path("out/interactive"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    zoom = None
    if args.checkpoint:
        from pasam_plugins.checkpoint import load_model

        model = load_model(args.checkpoint, sam_checkpoint=args.sam_checkpoint)
        what = str(args.checkpoint)
        untrained = bool((getattr(model, "metadata", {}) or {}).get("untrained"))
    else:
        from pasam_plugins.segment import ZoomSettings
        from pasam_plugins.testing import make_test_model

        model = make_test_model(seed=args.seed, variant=args.variant, guide_mode="image")
        zoom = ZoomSettings()
        what = f"{args.variant} with RANDOM weights, zoomed in"
        untrained = True
    datasets = [ds for spec in args.data for ds in read_source(spec, split="val")]
    print(f"model: {what}; {sum(len(d.samples) for d in datasets)} images", flush=True)
    strategies = tuple(s for s in args.strategies.split(",") if s)
    t0 = time.perf_counter()
    report = evaluate_model(
        model,
        datasets,
        max_objects=args.max_objects,
        min_pixels=args.min_pixels,
        seed=args.seed,
        progress=True,
        zoom=zoom,
        clicks=args.clicks,
        strategies=strategies,
    )
    wall = time.perf_counter() - t0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    paths = report.write_outputs(args.out_dir / "eval.csv")

    cmd = ["pasam", "eval", *args.data]
    cmd += ["-c", str(args.checkpoint) if args.checkpoint else "MODEL"]
    if args.sam_checkpoint:
        cmd += ["--sam-checkpoint", str(args.sam_checkpoint)]
    cmd += ["--clicks", str(args.clicks), "--max-objects", str(args.max_objects)]
    cmd += ["--min-pixels", str(args.min_pixels), "--seed", str(args.seed)]
    if args.strategies != "oracle,suggested,band":
        cmd += ["--strategies", args.strategies]
    cmd += ["--csv", str(args.out_dir / "eval.csv")]
    objects = len({(r.dataset, r.image, r.object_id) for r in report.results})
    lines = [
        f"# Interactive evaluation: {what}",
        "",
        f"- date: {datetime.now(UTC).date().isoformat()}; machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} threads, "
        f"device {next(model.parameters()).device}",
        f"- {objects} objects on {len({r.image for r in report.results})} images; "
        f"wall time {wall / 60:.1f} min",
        f"- same as: `{shlex.join(cmd)}`",
    ]
    if untrained:
        lines.append("- **RANDOM WEIGHTS: the numbers below are meaningless (timing only).**")
    lines += ["", "## Box prompts (Table 1 layout)", "", report.table()]
    lines += ["", "## Clicks to target IoU", "", report.click_table()]
    lines += ["", "## Uncertainty, calibration, task queue", "", report.uncertainty_table()]
    lines += ["", "## Targets (issue 13)", ""] + [f"- {t}" for t in report.targets()]
    lines += ["", "Files: " + ", ".join(p.name for p in paths), ""]
    md = args.out_dir / "numbers.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"written: {md}")


if __name__ == "__main__":
    main()
