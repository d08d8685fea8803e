"""Golden compatibility check against outputs recorded with the authors' code.

Usage: ``python -m pasam_plugins.golden FIXTURE.pt [--tol 1e-4]``

A fixture (``torch.load(weights_only=True)``) holds ``image`` (HxWx3 uint8),
``prompt_encoder_state_dict``, ``official_decoder_state_dict`` (official key layout) and
``cases``: ``{prompts, multimask_output, image_embeddings, outputs}``. Each case runs through
this project's predictor (guide mode ``reference``) and every recorded output is compared.
Prints one line per case with the max abs error of each output; exits 1 if any exceeds the
tolerance, 2 if the fixture cannot be read.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_official_decoder_state_dict
from .modeling import build_pasam
from .predictor import PASamPredictor

#: fixture output name -> DecoderOutput attribute
OUTPUT_FIELDS = {
    "masks": "masks",
    "iou_predictions": "iou_predictions",
    "uncertainty_map": "uncertainty",
    "pa_mask": "pa_mask",
    "coarse_mask": "coarse_mask",
    "refined_mask": "refined_mask",
}


@dataclass
class CaseResult:
    index: int
    description: str
    errors: dict[str, float]

    def max_error(self) -> float:
        """The largest error; ``inf`` when any output is missing or not finite (a NaN
        compares as neither smaller nor larger, so it must not slip through a ``max``)."""
        if not self.errors or not all(math.isfinite(v) for v in self.errors.values()):
            return float("inf")
        return max(self.errors.values())


def _describe(prompts: dict, multimask: bool) -> str:
    parts = []
    if "box" in prompts:
        parts.append("box")
    if "points" in prompts:
        parts.append(f"{len(prompts['points'])} points")
    if "mask" in prompts:
        parts.append("mask")
    return "+".join(parts) + (" multimask" if multimask else " single")


def _prompts_to_tensors(predictor: PASamPredictor, prompts: dict):
    dev = predictor.device
    size = predictor.original_size
    coords = labels = box = mask = None
    if "points" in prompts:
        pc = predictor.transform.apply_coords(np.asarray(prompts["points"], float), size)
        coords = torch.as_tensor(pc, dtype=torch.float, device=dev)[None]
        labels = torch.as_tensor(np.asarray(prompts["labels"]), dtype=torch.int, device=dev)[None]
    if "box" in prompts:
        b = predictor.transform.apply_boxes(np.asarray(prompts["box"], float).reshape(1, 4), size)
        box = torch.as_tensor(b, dtype=torch.float, device=dev)
    if "mask" in prompts:
        m = torch.as_tensor(prompts["mask"], dtype=torch.float, device=dev)
        mask = m.reshape(1, 1, *m.shape[-2:])
    return coords, labels, box, mask


def run_fixture(path: str | Path, *, device: str = "cpu") -> list[CaseResult]:
    """Run every case of a golden fixture; returns the per-output max abs errors."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable golden fixture ({exc})") from exc
    for key in ("image", "prompt_encoder_state_dict", "official_decoder_state_dict", "cases"):
        if key not in data:
            raise CheckpointError(f"{path}: golden fixture lacks the key {key!r}")

    # The embeddings are given, so the encoder size does not matter: the tiny one is cheap.
    model = build_pasam("vit_tiny", adapter=True, guide_mode="reference")
    model.prompt_encoder.load_state_dict(data["prompt_encoder_state_dict"])
    model.mask_decoder.load_state_dict(
        load_official_decoder_state_dict(data["official_decoder_state_dict"], source=str(path))
    )
    predictor = PASamPredictor(model, device=device)
    image = data["image"].numpy() if torch.is_tensor(data["image"]) else np.asarray(data["image"])

    results = []
    guide = None
    for i, case in enumerate(data["cases"]):
        emb = case["image_embeddings"]
        predictor.set_embedding(
            emb, image.shape[:2], image=image if guide is None else None, guide=guide
        )
        guide = predictor.guide
        coords, labels, box, mask = _prompts_to_tensors(predictor, case["prompts"])
        out = predictor.predict_torch(
            coords, labels, box, mask, bool(case["multimask_output"]), return_logits=True
        ).decoder
        errors = {}
        for name, expected in case["outputs"].items():
            attr = OUTPUT_FIELDS.get(name)
            got = getattr(out, attr) if attr else None
            if got is None:
                errors[name] = float("inf")
                continue
            expected = torch.as_tensor(expected, dtype=torch.float32)
            got = got.detach().float().cpu()
            if got.shape != expected.shape:
                errors[name] = float("inf")
                continue
            diff = (got - expected).abs()
            # a non-finite output (NaN, inf) is a failure, whatever the other values are
            errors[name] = float(diff.max()) if torch.isfinite(diff).all() else float("inf")
        results.append(CaseResult(i, _describe(case["prompts"], case["multimask_output"]), errors))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pasam_plugins.golden",
        description="Compare this implementation with outputs recorded from the official PA-SAM code.",
    )
    parser.add_argument("fixture", help="golden fixture (.pt)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max abs error allowed (1e-4)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        results = run_fixture(args.fixture, device=args.device)
    except (OSError, CheckpointError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for r in results:
        ok = r.max_error() <= args.tol
        failed += not ok
        errs = " ".join(f"{k}={v:.2e}" for k, v in r.errors.items())
        print(f"case {r.index} ({r.description}): {'ok' if ok else 'FAIL'} {errs}")
    print(f"{len(results) - failed}/{len(results)} cases within {args.tol:g}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
