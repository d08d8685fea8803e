"""The measured table of the shipped small model (model/cards/pasam_micro.md).

On the held-out splits of both shared datasets (ISBI 2012 EM sections 20-29, DSB 2018 nuclei
with file index 4 mod 5), mIoU and boundary mIoU for 1 box, 1 point and 3 points, for
the stage-1 SAM, the control (the same training steps on SAM's mask head without the
adapter) and PA-SAM side by side, next to the filled-box baseline; plus the encoder time
per window and the time of one click on this machine. Objects: at most --max-objects per
image (a seeded choice, the same for every model). Points are drawn uniformly inside each
object (seeded, the same for every model).

    python benchmarks/real_weights_table.py                 # the shipped weights
    python benchmarks/real_weights_table.py --sam S.safetensors --control C.safetensors \\
        --pasam P.safetensors                               # a training run's weights
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

from _splits import TEST  # noqa: E402

from pasam_plugins.checkpoint import load_model  # noqa: E402
from pasam_plugins.evaluate import evaluate_filled_box, evaluate_model  # noqa: E402
from pasam_plugins.predictor import PASamPredictor  # noqa: E402
from pasam_plugins.segment import Segmenter  # noqa: E402
from pasam_plugins.train.datasets import read_source  # noqa: E402

WEIGHTS = ROOT / "model" / "weights"
PROMPTS = {"1 box": (0, True), "1 point": (1, False), "3 points": (3, False)}


def timings(model, image: np.ndarray, box, point) -> dict[str, float]:
    """Median ms of: the encoder on one window, a box click, a single-point click (zoomed
    models embed a window per object; a click includes cropping and embedding)."""
    seg = Segmenter(PASamPredictor(model, device="cpu"))
    seg.set_image(image)
    n = model.img_size
    x = torch.zeros(1, 3, n, n)
    enc, boxes, points = [], [], []
    with torch.no_grad():
        for _ in range(7):
            t = time.perf_counter()
            model.image_encoder(model.preprocess(x + float(np.random.rand())))
            enc.append(time.perf_counter() - t)
    for i in range(7):
        seg.predictor.cache.clear()
        t = time.perf_counter()
        seg.segment(box=np.asarray(box) + i * 0.01)
        boxes.append(time.perf_counter() - t)
        seg.predictor.cache.clear()
        t = time.perf_counter()
        seg.segment(points=[point], labels=[1])
        points.append(time.perf_counter() - t)
    med = lambda v: round(1000 * float(np.median(v[1:])), 1)  # noqa: E731
    return {
        "encoder ms/window": med(enc),
        "box click ms": med(boxes),
        "point click ms": med(points),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sam", type=Path, default=WEIGHTS / "pasam_micro_sam.safetensors")
    ap.add_argument("--control", type=Path, default=WEIGHTS / "pasam_micro_control.safetensors")
    ap.add_argument("--pasam", type=Path, default=WEIGHTS / "pasam_micro.safetensors")
    ap.add_argument("--max-objects", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = ap.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = [
        *(ds for spec in TEST for ds in read_source(spec)),
    ]
    models = {
        "SAM (stage 1)": load_model(args.sam),
        "control (head, no adapter)": load_model(args.control),
        "PA-SAM": load_model(args.pasam),
    }
    rows: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    seconds: dict[str, float] = {}
    box_rep = evaluate_filled_box(data, max_objects=args.max_objects, seed=args.seed)
    datasets = box_rep.datasets
    rows["filled box"] = {
        p: {d: box_rep.mean(box_rep.models[0], d) for d in datasets} for p in PROMPTS
    }
    for name, model in models.items():
        rows[name] = {}
        for prompt, (n_points, use_box) in PROMPTS.items():
            t = time.perf_counter()
            rep = evaluate_model(
                model,
                data,
                num_points=n_points,
                use_box=use_box,
                compare_sam=False,
                max_objects=args.max_objects,
                seed=args.seed,
                progress=True,
            )
            seconds[f"{name} / {prompt}"] = time.perf_counter() - t
            rows[name][prompt] = {d: rep.mean(rep.models[0], d) for d in datasets}
            print(
                f"{name:28s} {prompt:9s}",
                {d: tuple(round(100 * v, 1) for v in rows[name][prompt][d]) for d in datasets},
                flush=True,
            )
    n_objects = len(box_rep.results)
    head = "| model | prompt | " + " | ".join(f"{d} mIoU | {d} mBIoU" for d in datasets) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(datasets))]
    for name, per_prompt in rows.items():
        for prompt, per_ds in per_prompt.items():
            if name == "filled box" and prompt != "1 box":
                continue
            cells = [f"{100 * per_ds[d][0]:.1f} | {100 * per_ds[d][1]:.1f}" for d in datasets]
            lines.append(f"| {name} | {prompt} | " + " | ".join(cells) + " |")
    image = data[0].samples[0].load()[0]
    t = timings(models["PA-SAM"], image, [200, 200, 260, 260], [230, 230])
    print("\n".join(lines))
    print(
        f"\n{n_objects} objects (at most {args.max_objects} per image, seed {args.seed}); percent; boundary band 2% of the image diagonal"
    )
    print("PA-SAM timings on this machine:", t)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": rows, "timings": t, "objects": n_objects, "seconds": seconds}, indent=1
            )
        )


if __name__ == "__main__":
    main()
