"""Fine-tune the PA-SAM adapter on ISBI 2012 EM sections and measure boundary mIoU.

Sections 0-19 train, 20-29 test. Objects are the cell profiles (connected components of
label == 255), prompted with their ground-truth boxes. SAM stays frozen; only the adapter's
trainable set learns (:func:`pasam_plugins.train.finetune.finetune`, cached embeddings).

    python benchmarks/finetune_isbi.py                      # vit_tiny, random weights (CPU, minutes)
    python benchmarks/finetune_isbi.py --variant vit_b      # random vit_b (slower encoder)
    python benchmarks/finetune_isbi.py --checkpoint sam_vit_b_01ec64.pth   # real SAM

Without --checkpoint the base model has RANDOM weights (no pretrained SAM is needed). Then
the run shows the pipeline end to end and its wall time, and the held-out training loss
(box prompts, test sections) falls; per-object IoU cannot meaningfully improve, because the
frozen random SAM transformer carries no notion of "the object inside this box" that the
adapter could refine (on ISBI the adapter learns to predict background). Use a real SAM
checkpoint for quality numbers. Not part of the test suite.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pasam_plugins.checkpoint import save_finetuned  # noqa: E402
from pasam_plugins.evaluate import evaluate_model  # noqa: E402
from pasam_plugins.train.datasets import Dataset, read_folder  # noqa: E402
from pasam_plugins.train.finetune import finetune, prepare_samples  # noqa: E402
from pasam_plugins.train.trainer import image_loss, pick_objects  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "isbi2012-em"


def split(data: Path) -> tuple[Dataset, Dataset]:
    ds = read_folder(data, instances="components", name="isbi2012-em")
    by_index = {int(s.name.rsplit("/", 1)[-1]): s for s in ds.samples}
    if sorted(by_index) != list(range(30)):
        raise SystemExit(f"{data}: expected sections 0..29, found {sorted(by_index)}")
    train = Dataset("isbi-train", [by_index[i] for i in range(20)])
    test = Dataset("isbi-test", [by_index[i] for i in range(20, 30)])
    for s in test.samples:
        s.dataset = "isbi-test"
    return train, test


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--variant", default="vit_tiny", help="random-weight model variant")
    ap.add_argument("--checkpoint", type=Path, help="real weights (SAM or PA-SAM) instead")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--images-per-step", type=int, default=1)
    ap.add_argument("--objects-per-image", type=int, default=4)
    ap.add_argument("--eval-objects", type=int, default=8, help="objects per test image")
    ap.add_argument("--min-pixels", type=int, default=50, help="ignore smaller profiles")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, help="write the fine-tuned adapter here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        from pasam_plugins.checkpoint import load_model

        model = load_model(args.checkpoint)
        what = str(args.checkpoint)
    else:
        from pasam_plugins.testing import make_test_model

        model = make_test_model(seed=args.seed, variant=args.variant, guide_mode="image")
        what = f"{args.variant} with RANDOM weights"
    train, test = split(args.data)
    print(f"model: {what}; train {len(train)} sections, test {len(test)} sections")

    def evaluate(m, label: str) -> tuple[float, float]:
        rep = evaluate_model(
            m,
            [test],
            compare_sam=False,
            max_objects=args.eval_objects,
            min_pixels=args.min_pixels,
            seed=args.seed,
        )
        miou, mbiou = rep.mean(rep.models[0])
        n = len(rep.results)
        print(
            f"{label:>7}: mIoU {100 * miou:5.1f}  boundary mIoU {100 * mbiou:5.1f}  "
            f"({n} objects, {rep.seconds:.0f} s)"
        )
        return miou, mbiou

    t0 = time.perf_counter()
    # held-out PA-SAM loss with fixed box prompts (mining off): the training objective on
    # the test sections. The encoder is frozen, so the test embeddings are computed once.
    held_out = prepare_samples(model, test.samples, seed=args.seed)

    @torch.no_grad()
    def test_loss(m) -> float:
        vals = []
        for k, p in enumerate(held_out):
            rng = np.random.default_rng([args.seed, k])
            objs = pick_objects(p, args.eval_objects, rng)
            vals.append(float(image_loss(m, p, objs, rng, prompt_kinds=("box",)).total))
        return float(np.mean(vals))

    loss_before = test_loss(model)
    print(f" before: held-out loss {loss_before:.4f}")
    before = evaluate(model, "before")

    def progress(step: int, total: int, info: dict) -> None:
        if step == 1 or step % 10 == 0 or step == total:
            print(f"  step {step:4d}/{total}  loss {info['loss']:.4f}  {info['seconds']:.0f} s")

    t1 = time.perf_counter()
    tuned = finetune(
        model,
        train.samples,
        steps=args.steps,
        lr=args.lr,
        images_per_step=args.images_per_step,
        objects_per_image=args.objects_per_image,
        seed=args.seed,
        progress_callback=progress,
    )
    if args.save:
        save_finetuned(tuned.model, args.save, provenance={"kind": "benchmarks/finetune_isbi.py"})
    rep = tuned.report
    tuned = tuned.model
    train_s = time.perf_counter() - t1
    print(
        f"fine-tuned {rep.steps} steps on {rep.images} images / {rep.objects} objects in "
        f"{train_s:.0f} s (encoding {rep.prepare_seconds:.0f} s)"
    )
    loss_after = test_loss(tuned)
    print(f"  after: held-out loss {loss_after:.4f}")
    after = evaluate(tuned, "after")
    total = time.perf_counter() - t0
    print()
    print(
        "| model | boundary mIoU before | after | mIoU before | after "
        "| held-out loss before | after | train s | total s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {what} | {100 * before[1]:.1f} | {100 * after[1]:.1f} | {100 * before[0]:.1f} | "
        f"{100 * after[0]:.1f} | {loss_before:.3f} | {loss_after:.3f} | {train_s:.0f} "
        f"| {total:.0f} |"
    )
    if args.save:
        print(f"adapter saved to {args.save}")
    if not np.isfinite(after[1]):
        raise SystemExit("evaluation produced no result")


if __name__ == "__main__":
    main()
