"""Channels-last alone: the fast encoder (fused attention) with and without feeding the patch
embedding channels-last, same precision, same weights, timed alternately in one run.

    python benchmarks/channels_last.py --variant vit_b --repeats 5

Prints the median wall and CPU time per image of each side and their ratio; checks that
both give the same embedding (the layout changes no number beyond float rounding).
Not part of the test run.
"""

import argparse
import statistics
import time

import torch

from pasam_plugins.fast_encoder import FastImageEncoder
from pasam_plugins.precision import resolve_precision
from pasam_plugins.testing import make_test_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="auto", help="auto, float32 or bf16")
    args = ap.parse_args()

    model = make_test_model(seed=0, variant=args.variant).eval()
    enc = model.image_encoder
    precision = resolve_precision(args.precision, torch.device("cpu"))
    size = int(enc.img_size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    sides = {
        "channels-last": FastImageEncoder(enc, channels_last=True),
        "contiguous": FastImageEncoder(enc, channels_last=False),
    }

    def run(fn):
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast("cpu", enabled=False)
        )
        with torch.no_grad(), ctx:
            return fn(x).float()

    outs = {name: run(fn) for name, fn in sides.items()}  # warm-up, and the check
    diff = (outs["channels-last"] - outs["contiguous"]).abs().max().item()
    scale = outs["contiguous"].abs().max().item()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for i in range(args.repeats):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for name in order:
            w, c = time.perf_counter(), time.process_time()
            run(sides[name])
            times[name].append((time.perf_counter() - w, time.process_time() - c))
    med = {
        name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
        for name, v in times.items()
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.variant} "
        f"({size} px input), encoder {precision}, {args.repeats} repeats"
    )
    for name, (w, c) in med.items():
        print(f"  {name:14s} {1000 * w:9.1f} ms wall {1000 * c:9.1f} ms cpu")
    ratio_w = med["channels-last"][0] / med["contiguous"][0]
    ratio_c = med["channels-last"][1] / med["contiguous"][1]
    print(f"  channels-last / contiguous: {ratio_w:.3f}x wall, {ratio_c:.3f}x cpu")
    print(f"  max abs embedding difference {diff:.2e} (embedding max {scale:.2e})")


if __name__ == "__main__":
    main()
