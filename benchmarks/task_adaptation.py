"""Task adaptation from a few annotations (issue 18): PLM, PMM, the PA-SAM adapter, both.

On the training splits of the shared datasets (ISBI 2012 EM sections 0-19, DSB 2018 nuclei
files 0-3 mod 5) with N training images (``--sizes 10,25,all``: a seeded choice), each method
is fine-tuned on the frozen base model (:func:`pasam_plugins.train.finetune.finetune`, one
model per dataset and size) and evaluated on the held-out split (EM 20-29, nuclei 4 mod 5)
with one positive point and with one box per object: mIoU and boundary mIoU in percent, and
the fine-tuning wall time on this machine.

Methods (``--methods``): ``base`` (the frozen model as it is), ``plm`` (a prompt learning
module), ``plm,pmm`` (with the point matching loss), ``adapter`` (PA-SAM's adapter + SAM's
mask head), ``adapter,plm`` (both). Fine-tuning prompts: points and boxes, as evaluated.

    python benchmarks/task_adaptation.py --base model/weights/pasam_micro_sam.safetensors \\
        --json task-adaptation.json
    python benchmarks/task_adaptation.py --base B --datasets em --sizes 10 --steps 5 \\
        --max-objects 5          # a smoke run: shows the pipeline, not a quality number

A base trained zoomed in (its metadata has ``zoom``, like the shipped small model) is
fine-tuned on crops and evaluated zoomed in, as it is used. Not part of the test suite.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pasam_plugins.checkpoint import load_model  # noqa: E402
from pasam_plugins.evaluate import evaluate_model  # noqa: E402
from pasam_plugins.train.datasets import Dataset, read_source  # noqa: E402
from pasam_plugins.train.finetune import finetune  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SPLITS = {
    "em": (f"components:{DATA / 'isbi2012-em'}@0-19", f"components:{DATA / 'isbi2012-em'}@20-29"),
    "nuclei": (
        f"labels:{DATA / 'dsb2018-nuclei'}@%5=0,1,2,3",
        f"labels:{DATA / 'dsb2018-nuclei'}@%5=4",
    ),
}
PROMPTS = {"1 point": (1, False), "1 box": (0, True)}
METHODS = ("base", "plm", "plm,pmm", "adapter", "adapter,plm")


def _one(spec: str) -> Dataset:
    sets = read_source(spec)
    samples = [s for ds in sets for s in ds.samples]
    return Dataset(sets[0].name, samples)


def evaluate(model, test: Dataset, args) -> dict[str, tuple[float, float]]:
    out = {}
    for prompt, (n_points, use_box) in PROMPTS.items():
        rep = evaluate_model(
            model,
            [test],
            num_points=n_points,
            use_box=use_box,
            compare_sam=False,
            max_objects=args.max_objects,
            seed=args.seed,
        )
        d = rep.datasets[0]
        out[prompt] = tuple(float(v) for v in rep.mean(rep.models[0], d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", type=Path, required=True, help="the frozen base model")
    ap.add_argument("--datasets", default="em,nuclei")
    ap.add_argument("--sizes", default="10,25,all", help="training images per run")
    ap.add_argument("--methods", default=";".join(METHODS), help="';'-separated")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--objects-per-image", type=int, default=4)
    ap.add_argument("--max-objects", type=int, default=30, help="per held-out image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--rows",
        type=Path,
        help="JSON lines file: each finished row is appended; rows already there (same "
        "dataset, size, method, steps, max objects, seed) are not run again (resume)",
    )
    args = ap.parse_args()

    base = load_model(args.base)
    methods = [m.strip() for m in args.methods.split(";") if m.strip()]
    rows: list[dict] = []
    settings = {"steps": args.steps, "max objects": args.max_objects, "seed": args.seed}
    done: dict[tuple, dict] = {}
    if args.rows is not None and args.rows.exists():
        for line in args.rows.read_text().splitlines():
            row = json.loads(line)
            if all(row.get(k) == v for k, v in settings.items()):
                done.setdefault((row["dataset"], row["train images"], row["method"]), row)
    for ds_name in args.datasets.split(","):
        train_spec, test_spec = SPLITS[ds_name]
        train, test = _one(train_spec), _one(test_spec)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(train.samples))
        base_scores = None
        for size in args.sizes.split(","):
            n = len(train.samples) if size == "all" else min(int(size), len(train.samples))
            chosen = [train.samples[i] for i in order[:n]]
            for method in methods:
                if (ds_name, n, method) in done:
                    row = done[(ds_name, n, method)]
                    rows.append(row)
                    if method == "base":
                        base_scores = {
                            p: (row[f"{p} mIoU"] / 100, row[f"{p} mBIoU"] / 100) for p in PROMPTS
                        }
                    print(json.dumps(row), "(from --rows)", flush=True)
                    continue
                t0 = time.perf_counter()
                if method == "base":
                    if base_scores is None:
                        base_scores = evaluate(base, test, args)
                    scores, seconds, losses = base_scores, 0.0, []
                else:
                    result = finetune(
                        base,
                        chosen,
                        steps=args.steps,
                        lr=args.lr,
                        objects_per_image=args.objects_per_image,
                        prompt_kinds=("points", "box"),
                        num_points=1,
                        train=method,
                        seed=args.seed,
                    )
                    seconds = time.perf_counter() - t0
                    losses = result.report.losses
                    scores = evaluate(result.model, test, args)
                row = {
                    "dataset": ds_name,
                    "train images": n,
                    "method": method,
                    "finetune seconds": round(seconds, 1),
                    "first loss": losses[0] if losses else None,
                    "final loss": losses[-1] if losses else None,
                    **{f"{p} mIoU": round(100 * s[0], 1) for p, s in scores.items()},
                    **{f"{p} mBIoU": round(100 * s[1], 1) for p, s in scores.items()},
                    **settings,
                }
                rows.append(row)
                done[(ds_name, n, method)] = row  # 'all' may be the same size as '25'
                if args.rows is not None:
                    with args.rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    cols = ["1 point mIoU", "1 point mBIoU", "1 box mIoU", "1 box mBIoU"]
    print("\n| dataset | train images | method | " + " | ".join(cols) + " | fine-tune s |")
    print("|" + "---|" * (4 + len(cols)))
    for r in rows:
        cells = " | ".join(str(r[c]) for c in cols)
        print(
            f"| {r['dataset']} | {r['train images']} | {r['method']} | {cells} | "
            f"{r['finetune seconds']} |"
        )
    print(
        f"\nsteps {args.steps}, lr {args.lr}, at most {args.max_objects} objects per held-out "
        f"image (seed {args.seed}); torch threads {torch.get_num_threads()}"
    )
    if args.json:
        meta = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"args": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
