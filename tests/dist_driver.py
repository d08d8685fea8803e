"""Run under torchrun by the distributed tests (not a test module).

``cli ARGS [--next-- ARGS ...]``: several ``pasam`` commands in one process group (the
group is joined once; the commands find it and use it).
``fail OUT``: a training run in which rank 1 raises at step 1; rank 1 writes the time of
the failure to ``OUT/failed-at``, the test measures how long the other rank lives on.
"""

import sys
import time
from pathlib import Path


def cli(argv: list[str]) -> int:
    from pasam_plugins import distributed
    from pasam_plugins.cli import app

    groups: list[list[str]] = [[]]
    for a in argv:
        if a == "--next--":
            groups.append([])
        else:
            groups[-1].append(a)
    with distributed.session("cpu"):
        for args in groups:
            try:
                code = app(args, standalone_mode=False)
            except SystemExit as e:  # the lazy commands (eval, segment-all) exit themselves
                code = e.code
            if code:
                return int(code)
    return 0


def fail(out: Path) -> int:
    import numpy as np

    from pasam_plugins import distributed
    from pasam_plugins.testing import make_test_model
    from pasam_plugins.train.datasets import Sample
    from pasam_plugins.train.trainer import TrainConfig, Trainer

    def synth(seed: int):
        rng = np.random.default_rng(seed)
        img = (rng.random((64, 80, 3)) * 60).astype(np.uint8)
        lab = np.zeros((64, 80), np.int32)
        lab[10:30, 12:40] = 1
        img[lab > 0] = 200
        return img, lab

    samples = [Sample.from_arrays(f"s{i}", *synth(i), instances="labels") for i in range(4)]
    original = Trainer._micro_terms

    def micro_terms(self, step, micro, mining):
        if self.rank == 1 and step == 1:
            out.mkdir(parents=True, exist_ok=True)
            (out / "failed-at").write_text(str(time.time()))
            raise RuntimeError("injected failure on rank 1")
        return original(self, step, micro, mining)

    Trainer._micro_terms = micro_terms  # type: ignore[method-assign]
    with distributed.session("cpu"):
        cfg = TrainConfig(
            out_dir=str(out),
            batch_size=1,
            jitter=None,
            loss_size=256,
            max_steps=20,
            amp=False,
            save_every=0,
            device="cpu",
        )
        Trainer(make_test_model(seed=0), samples, config=cfg, progress=False).run()
    return 0


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "cli":
        sys.exit(cli(rest))
    if what == "fail":
        sys.exit(fail(Path(rest[0])))
    sys.exit(f"unknown scenario {what!r}")
