"""Where users wait: the image encoder, fast path vs segment_anything's SamPredictor.

In one run, on ViT-B-sized random weights (``build_pasam("vit_b")``, no checkpoint needed)
and real EM sections (ISBI 2012, 512x512, resized to 1024 like any image):

1. ``set_image``: ``PASamPredictor`` with the fast encoder (fused attention, ``--precision``,
   default ``auto``: bf16 where this CPU/GPU computes it fast) vs ``SamPredictor`` in
   float32 on the same encoder weights; also PA-SAM's float32 reference path and the fast
   path in float32, for the breakdown. Target: fast / SamPredictor <= 0.4 on a CPU with
   AMX or AVX512-BF16.
2. The small model (``vit_s256``: 256-px input) encoder, ms per image, fast vs reference.
3. napari's slice change (plane out of the stack, ``set_image`` of the new slice, one box
   prompt) and a 10-slice propagation (``napari_pasam.propagation.propagate`` with the
   segment function of the napari widget's propagation job), before (float32 reference
   encoder, what the plugin ran until now) and after (fast path, ``--precision``).

Every comparison alternates its two sides, so load changes hit both alike; the medians are
wall-clock seconds, and process CPU seconds are printed next to them (with one thread on a
shared machine, CPU time is the steadier figure). ``--compile`` adds the fast encoder
compiled with ``torch.compile`` (compiled before timing; the plugin compiles it in the
background instead). On a CUDA device (``--device cuda``) the same rows are GPU times
(synchronized) and a click row is added; not run in this project so far (no GPU lent).

    python benchmarks/encoder_speed.py [--repeats 3] [--precision auto] [--device cpu]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, Sam

from pasam_plugins.cache import EmbeddingCache
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.testing import make_test_model

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EM = ROOT.parent / "shared" / "data" / "isbi2012-em"


class Timer:
    """Wall and process-CPU seconds of calls, synchronized on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, fn) -> tuple[float, float]:
        self.sync()
        w, c = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - w, time.process_time() - c

    def paired(self, fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
        """Median (wall, cpu) of each function, called in turn ``repeats`` times."""
        acc: dict[str, list] = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                acc[k].append(self(fn))
        return {
            k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
            for k, v in acc.items()
        }


def sam_predictor(model, device) -> SamPredictor:
    """segment_anything's SamPredictor on the same encoder (and SAM's decoder weights)."""
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
    )
    return SamPredictor(sam.to(device).eval())


def fmt(t: tuple[float, float]) -> str:
    return f"{t[0]:8.2f} s wall {t[1]:8.2f} s cpu"


def ratio_line(name: str, ours, theirs, target: float | None = None) -> str:
    r_wall, r_cpu = ours[0] / theirs[0], ours[1] / max(theirs[1], 1e-9)
    text = f"  {name:<44} {r_wall:6.3f}x wall  {r_cpu:6.3f}x cpu"
    if target is not None:
        text += f"  (target <= {target}x: {'met' if r_wall <= target else 'NOT met'})"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side")
    ap.add_argument("--variant", default="vit_b", help="the large model (vit_tiny: a smoke test)")
    ap.add_argument("--precision", default="auto", help="fast path: auto, float32 or bf16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--em-dir", type=Path, default=DEFAULT_EM)
    ap.add_argument("--slices", type=int, default=10, help="propagation length")
    ap.add_argument("--compile", action="store_true", help="also time the compiled encoder")
    ap.add_argument("--skip-napari", action="store_true")
    args = ap.parse_args()

    dev = torch.device(args.device)
    timer = Timer(dev)
    sections = [
        np.asarray(Image.open(args.em_dir / "image" / f"{i}.png")) for i in range(args.slices + 2)
    ]
    model = make_test_model(seed=0, variant=args.variant)
    no_cache = {"cache": EmbeddingCache(max_bytes=0), "device": dev}
    ref = PASamPredictor(model, **no_cache)
    fast = PASamPredictor(model, precision=args.precision, fast_encoder=True, **no_cache)
    fast32 = PASamPredictor(model, precision="float32", fast_encoder=True, **no_cache)
    sam = sam_predictor(model, dev)
    print(
        f"torch {torch.__version__}, device {dev}, {torch.get_num_threads()} threads; "
        f"{args.variant} random weights; fast path precision {args.precision!r} -> "
        f"{fast.precision}"
    )

    # ------------------------------------------------------------- 1. ViT-B set_image
    img = sections[0]
    rgb = np.ascontiguousarray(np.dstack([img] * 3))  # SamPredictor takes RGB only
    with torch.inference_mode():
        sam.set_image(rgb)  # warm-up
        for p in (ref, fast, fast32):
            p.set_image(img)
        fns = {
            "SamPredictor float32": lambda: sam.set_image(rgb),
            f"PA-SAM fast {fast.precision}": lambda: fast.set_image(img),
            "PA-SAM reference float32": lambda: ref.set_image(img),
            "PA-SAM fast float32": lambda: fast32.set_image(img),
        }
        compiled = None
        compiled_name = f"PA-SAM fast {fast.precision}, compiled"
        if args.compile:
            compiled = PASamPredictor(model, precision=args.precision, **no_cache)
            t0 = time.perf_counter()
            compiled.start_compile(background=False)
            print(
                f"torch.compile + warm-up: {time.perf_counter() - t0:.0f} s "
                f"({compiled.compile_state})"
            )
            if compiled.compile_state == "ready":
                fns[compiled_name] = lambda: compiled.set_image(img)
        t = timer.paired(fns, args.repeats)
    size = model.image_encoder.img_size
    print(f"\n1. {args.variant} set_image, median of {args.repeats} ({size}x{size} input)")
    for k, v in t.items():
        print(f"  {k:<44} {fmt(v)}")
    base = t["SamPredictor float32"]
    ratio_line_fast = ratio_line(
        f"fast {fast.precision} / SamPredictor float32",
        t[f"PA-SAM fast {fast.precision}"],
        base,
        0.4,
    )
    print(ratio_line_fast)
    print(ratio_line("fast float32 / SamPredictor float32", t["PA-SAM fast float32"], base))
    print(
        ratio_line("PA-SAM reference float32 / SamPredictor", t["PA-SAM reference float32"], base)
    )
    if compiled is not None and compiled.compile_state == "ready":
        print(ratio_line("compiled / SamPredictor float32", t[compiled_name], base))

    # ------------------------------------------------------------- 2. small model
    small = make_test_model(seed=0, variant="vit_s256")
    s_ref = PASamPredictor(small, **no_cache)
    s_fast = PASamPredictor(small, precision=args.precision, fast_encoder=True, **no_cache)
    x = torch.as_tensor(np.dstack([img[:256, :256]] * 3), device=dev).permute(2, 0, 1)[None]
    n = 20
    with torch.inference_mode():
        for p in (s_ref, s_fast):
            p.set_torch_image(x.float(), (256, 256))

        def encode_n(p):
            return lambda: [p.set_torch_image(x.float(), (256, 256)) for _ in range(n)]

        t = timer.paired(
            {"reference float32": encode_n(s_ref), f"fast {s_fast.precision}": encode_n(s_fast)},
            args.repeats,
        )
    print(f"\n2. vit_s256 (256-px input) embedding + guide, per image (median of {n}-image runs)")
    for k, v in t.items():
        print(f"  {k:<44} {1e3 * v[0] / n:8.1f} ms wall {1e3 * v[1] / n:8.1f} ms cpu")

    if args.skip_napari:
        return 0
    # ------------------------------------------------------------- 3. napari
    from napari_pasam.planes import PlaneGeometry
    from napari_pasam.propagation import (
        PropagationRule,
        PropagationSummary,
        SlicePrompt,
        SliceResult,
        propagate,
    )
    from pasam_plugins.segment import Segmenter

    stack = np.stack(sections)
    geometry = PlaneGeometry(stack.shape)
    box = np.array([150.0, 150.0, 330.0, 320.0])

    def slice_change(p, z):
        # what the widget does when the slice with the object's prompts comes into view:
        # embed that plane (in a worker) and predict the current object
        seg = Segmenter(p)
        seg.set_image(geometry.plane(stack, (z,)))
        seg.segment(box=box)

    def propagation(p):
        # the segment function of the widget's propagation job (napari_pasam.jobs)
        seg = Segmenter(p)

        def segment(z: int, prompt: SlicePrompt) -> SliceResult:
            seg.set_image(geometry.plane(stack, (z,)))
            obj = seg.segment(prompt.points, prompt.labels, prompt.box)
            mask = obj.mask
            if not mask.any():  # random weights: keep going (this times the model work)
                mask = np.zeros_like(mask)
                x0, y0, x1, y1 = prompt.box.astype(int)
                mask[y0 : y1 + 1, x0 : x1 + 1] = True
            return SliceResult(mask=mask, iou=float(obj.score), uncertainty=obj.mean_uncertainty)

        start = np.zeros(stack.shape[1:], dtype=bool)
        start[150:320, 150:330] = True
        summary = PropagationSummary()
        rule = PropagationRule(min_iou=None, max_uncertainty=None, max_slices=args.slices)
        steps = list(
            propagate(
                segment,
                start_slice=0,
                start_mask=start,
                num_slices=len(stack),
                rule=rule,
                directions=(1,),
                summary=summary,
            )
        )
        assert len(steps) == args.slices, (len(steps), summary.stops)

    counter = iter(range(10**6))
    with torch.inference_mode():
        t_slice = timer.paired(
            {
                "before (float32 reference)": lambda: slice_change(ref, 1 + next(counter) % 10),
                f"after (fast {fast.precision})": lambda: slice_change(
                    fast, 1 + next(counter) % 10
                ),
            },
            args.repeats,
        )
        t_prop = timer.paired(
            {
                "before (float32 reference)": lambda: propagation(ref),
                f"after (fast {fast.precision})": lambda: propagation(fast),
            },
            1,
        )
    print(
        f"\n3. napari, {args.variant}: slice change (embed + box prompt), median of {args.repeats}"
    )
    for k, v in t_slice.items():
        print(f"  {k:<44} {fmt(v)}")
    before, after = t_slice.values()
    print(ratio_line("after / before", after, before))
    print(f"   {args.slices}-slice propagation")
    for k, v in t_prop.items():
        print(f"  {k:<44} {fmt(v)}")
    before, after = t_prop.values()
    print(ratio_line("after / before", after, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
