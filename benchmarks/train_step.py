"""Training step time with and without bf16 autocast (``pasam train --amp/--no-amp``).

Two :class:`pasam_plugins.train.trainer.Trainer` on copies of the same random-weight model
and the same data (ISBI 2012 EM sections 0-3) take optimizer steps in turn, one with AMP
(bf16 autocast where this CPU computes bf16 fast, as ``pasam train`` runs by default), one
in float32; the median step times (wall and process CPU seconds) and their ratio are
printed. Default: the small model's zoomed-in crop training (``--crops``), stage 1
(``--train sam``: encoder, prompt encoder and decoder) and stage 2 (``--train adapter``).

    python benchmarks/train_step.py [--variant vit_s256] [--steps 4] [--train sam,adapter]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from pasam_plugins.testing import make_test_model
from pasam_plugins.train.datasets import read_source
from pasam_plugins.train.trainer import TrainConfig, Trainer, _autocast_factory

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = f"components:{ROOT.parent / 'shared' / 'data' / 'isbi2012-em'}@0-3"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="vit_s256")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per side")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train", default="sam,adapter", help="what is trained: sam, adapter")
    ap.add_argument("--frames", action="store_true", help="whole frames instead of crops")
    args = ap.parse_args()

    samples = [s for ds in read_source(args.data) for s in ds.samples]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.variant} "
        f"random weights, {len(samples)} images, batch {args.batch_size}, "
        f"{'whole frames' if args.frames else 'zoomed-in crops'}"
    )
    for what in [w.strip() for w in args.train.split(",") if w.strip()]:
        # stage 1 (--train sam/head) trains a model without adapter; stage 2 adds one
        base = make_test_model(
            seed=0, variant=args.variant, guide_mode="image", adapter=what == "adapter"
        )
        trainers = {}
        for amp in (True, False):
            cfg = TrainConfig(
                out_dir=None,
                train=what,
                crops=not args.frames,
                batch_size=args.batch_size,
                corrective_clicks=1 if not args.frames else 0,
                jitter=None,
                loss_size=256,
                amp=amp,
                max_steps=args.steps + 1,
                save_every=0,
                device="cpu",
            )
            trainers[amp] = Trainer(copy.deepcopy(base), samples, config=cfg, progress=False)
        dtype = _autocast_factory(torch.device("cpu"), True)[1]
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for i in range(args.steps + 1):  # the first step of each is a warm-up
            for amp, tr in trainers.items():
                w, c = time.perf_counter(), time.process_time()
                tr.train_step()
                if i:
                    times[amp].append((time.perf_counter() - w, time.process_time() - c))
        med = {
            amp: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
            for amp, v in times.items()
        }
        amp_name = "off on this CPU: no fast bf16" if dtype is None else f"{dtype} autocast"
        print(f"--train {what}: AMP ({amp_name}) vs float32, median of {args.steps} steps")
        for amp in (True, False):
            print(
                f"  {'AMP' if amp else 'float32':<8} {med[amp][0]:8.2f} s wall "
                f"{med[amp][1]:8.2f} s cpu per step"
            )
        print(
            f"  ratio AMP / float32: {med[True][0] / med[False][0]:.3f} wall, "
            f"{med[True][1] / med[False][1]:.3f} cpu"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
