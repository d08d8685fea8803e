"""Per-click and set_image latency of PASamPredictor vs segment_anything's SamPredictor.

Both predictors hold the same ViT-B-sized random weights (no pretrained weights needed) and
see the same images and prompts in one run (a square 1024x1024 image and a non-square
768x1024 one by default); medians of repeated calls are printed with their ratios. The two
sides are called alternately and the order flips every repeat, so neither always runs first
(warm caches, frequency boost). Targets: click <= 1.25x SAM, set_image <= 1.05x SAM, 16 prompt sets in one
call <= 0.8x the time of 16 single calls.

The 16-set comparison is measured twice for the first size: first with glibc's default
allocator settings (what a host process such as napari has), then after
``pasam_plugins.runtime.retain_freed_memory()``, the setting the ``pasam`` command line and
the Label Studio backend run with (large freed buffers are reused instead of unmapped). The
setting cannot be undone in a process, so later sizes get the second row only (run
``--sizes 768x1024`` for that size's first row).

    python benchmarks/click_latency.py [--variant vit_b] [--sizes 1024x1024,768x1024]
                                       [--repeats 30] [--device cpu]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, Sam

from pasam_plugins.cache import EmbeddingCache
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.runtime import freed_memory_retained, retain_freed_memory
from pasam_plugins.testing import make_test_model


def paired_medians(fn_a, fn_b, repeats: int, sync) -> tuple[float, float]:
    """Median times of two functions called alternately, the order flipping every repeat
    (A B, B A, A B ...), so that load changes and warm-up effects hit both sides alike."""
    ta, tb = [], []
    for i in range(repeats):
        pairs = ((fn_a, ta), (fn_b, tb)) if i % 2 == 0 else ((fn_b, tb), (fn_a, ta))
        for fn, acc in pairs:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` -> (H, W)."""
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument("--sizes", default="1024x1024,768x1024", help="image sizes HxW, comma-separated")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--encoder-repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    model = make_test_model(seed=0, variant=args.variant)
    dec = model.mask_decoder
    sam_dec = MaskDecoder(transformer_dim=dec.transformer_dim, transformer=dec.transformer)
    sam_dec.load_state_dict(
        {
            k: v
            for k, v in dec.state_dict().items()
            if not k.startswith(("guiding_conv", "prompt_adapter"))
        }
    )
    sam = Sam(
        image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder, mask_decoder=sam_dec
    ).eval()

    pa = PASamPredictor(model, device=args.device, cache=EmbeddingCache(max_bytes=0))
    sam = sam.to(pa.device)
    ref = SamPredictor(sam)
    sync = torch.cuda.synchronize if pa.device.type == "cuda" else (lambda: None)
    for size in args.sizes.split(","):
        h, w = parse_size(size)
        measure(pa, ref, sync, h, w, args)


def measure(pa, ref, sync, height: int, width: int, args) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    print(
        f"device={pa.device} variant={args.variant} image={height}x{width} (HxW) "
        f"threads={torch.get_num_threads()}"
    )

    with torch.inference_mode():
        ref.set_image(image)
        pa.set_image(image)  # warm-up (max_bytes=0: the cache never holds an entry)
        t_set_pa, t_set_sam = paired_medians(
            lambda: pa.set_image(image), lambda: ref.set_image(image), args.encoder_repeats, sync
        )

        sy, sx = height / 1024, width / 1024
        pts = np.array([[400.0 * sx, 500.0 * sy]])
        lbl = np.array([1])
        for _ in range(3):
            ref.predict(pts, lbl, multimask_output=False)
            pa.predict(pts, lbl, multimask_output=False)
        t_click_pa, t_click_sam = paired_medians(
            lambda: pa.predict(pts, lbl, multimask_output=False),
            lambda: ref.predict(pts, lbl, multimask_output=False),
            args.repeats,
            sync,
        )
        box = np.array([100 * sx, 200 * sy, 600 * sx, 700 * sy])
        t_box_pa, t_box_sam = paired_medians(
            lambda: pa.predict(box=box, multimask_output=False),
            lambda: ref.predict(box=box, multimask_output=False),
            args.repeats,
            sync,
        )

        b = 16
        g = torch.Generator().manual_seed(0)
        xy0 = torch.rand(b, 2, generator=g) * 600
        boxes = torch.cat([xy0, xy0 + 50 + torch.rand(b, 2, generator=g) * 350], 1).to(pa.device)

        def batched():
            pa.predict_torch(None, None, boxes, None, False)

        def single_calls():
            for i in range(b):
                pa.predict_torch(None, None, boxes[i : i + 1], None, False)

        batch_repeats = max(5, args.repeats // 3)
        t_batch = t_single = None
        if not freed_memory_retained():  # glibc's defaults: only before the first size's
            batched()  # retain_freed_memory(), which cannot be undone in this process
            t_batch, t_single = paired_medians(batched, single_calls, batch_repeats, sync)
        retained = retain_freed_memory()
        batched()
        t_batch_r, t_single_r = paired_medians(batched, single_calls, batch_repeats, sync)

    def row(name, ours, theirs, target):
        ratio = ours / theirs
        print(
            f"{name:<38} {ours * 1e3:9.1f} ms {theirs * 1e3:9.1f} ms {ratio:7.3f}x  "
            f"(target <= {target}x: {'met' if ratio <= target else 'NOT met'})"
        )

    print(f"{'':<38} {'PA-SAM':>12} {'reference':>12} {'ratio':>8}")
    row("set_image (PA vs SAM)", t_set_pa, t_set_sam, 1.05)
    row("click, 1 point (PA vs SAM)", t_click_pa, t_click_sam, 1.25)
    row("box (PA vs SAM)", t_box_pa, t_box_sam, 1.25)
    if t_batch is not None:
        row("16 sets: 1 call vs 16, default malloc", t_batch, t_single, 0.8)
    else:
        print("16 sets, default malloc: not measured (memory retained since the first size)")
    if retained:
        row("16 sets: 1 call vs 16, as pasam runs", t_batch_r, t_single_r, 0.8)
    else:
        print("(retain_freed_memory() does not apply here: not glibc)")
    print()


if __name__ == "__main__":
    main()
