"""How closely the fast encoder path agrees with the float32 reference, on real images.

:func:`precision_agreement` segments the same objects (chosen from ground-truth label maps)
twice through :class:`pasam_plugins.segment.Segmenter`: once with the float32 reference
encoder (SAM's own modules), once with the fast encoder in the given precision, and
compares, per object and prompt, the two masks (IoU), the two predicted IoUs and the two
uncertainty maps (mean absolute difference over the pixels the model saw: the object's
window for zoomed models, the whole image otherwise). Prompts are the object's box and one
positive click at its deepest pixel, as users give them.

The acceptance rule of issue 20 is :meth:`AgreementReport.passes`: median mask IoU >= 0.98
and every predicted IoU within 0.02. It is meaningful only on trained weights (random
weights give masks near the threshold everywhere); ``benchmarks/precision_agreement.py``
runs it on a checkpoint and held-out EM/nuclei images.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from .evaluate import select_objects
from .metrics import mask_box, mask_iou
from .predictor import PASamPredictor
from .segment import ObjectMask, Segmenter, ZoomSettings

#: issue 20's acceptance thresholds
MIN_MEDIAN_MASK_IOU = 0.98
MAX_SCORE_DIFF = 0.02
PROMPT_KINDS = ("box", "point")


@dataclass
class ObjectAgreement:
    """One object and prompt, segmented by the reference and the candidate.

    Attributes:
      mask_iou: IoU of the two masks (1.0 when both are empty).
      score_diff: |predicted IoU of the candidate - of the reference|.
      uncertainty_mad: mean |U_candidate - U_reference| over the pixels the model saw
        (None without adapter).
    """

    sample: str
    object_id: int
    prompt: str
    mask_iou: float
    score_diff: float
    uncertainty_mad: float | None


@dataclass
class AgreementReport:
    """Per-object agreement of a candidate with the reference, and its summary."""

    reference: str
    candidate: str
    objects: list[ObjectAgreement] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict:
        """Counts, median / min mask IoU, median / 95th percentile / max predicted-IoU
        difference, mean / max uncertainty mean abs difference."""
        ious = np.array([o.mask_iou for o in self.objects], dtype=np.float64)
        diffs = np.array([o.score_diff for o in self.objects], dtype=np.float64)
        mads = np.array(
            [o.uncertainty_mad for o in self.objects if o.uncertainty_mad is not None],
            dtype=np.float64,
        )

        def stat(fn, a):
            return float(fn(a)) if a.size else None

        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "objects": len(self.objects),
            "images": len({o.sample for o in self.objects}),
            "median_mask_iou": stat(np.median, ious),
            "min_mask_iou": stat(np.min, ious),
            "median_score_diff": stat(np.median, diffs),
            "p95_score_diff": stat(lambda a: np.percentile(a, 95), diffs),
            "max_score_diff": stat(np.max, diffs),
            "mean_uncertainty_mad": stat(np.mean, mads),
            "max_uncertainty_mad": stat(np.max, mads),
        }

    def passes(
        self, min_median_iou: float = MIN_MEDIAN_MASK_IOU, max_score_diff: float = MAX_SCORE_DIFF
    ) -> bool:
        """Median mask IoU >= ``min_median_iou`` and every predicted-IoU difference <=
        ``max_score_diff`` (False without objects)."""
        s = self.summary()
        if not self.objects:
            return False
        return s["median_mask_iou"] >= min_median_iou and s["max_score_diff"] <= max_score_diff

    def format(self) -> str:
        """The summary as a few readable lines."""
        s = self.summary()
        if not self.objects:
            return f"{self.candidate} vs {self.reference}: no objects compared"

        def f(v, spec):
            return "n/a" if v is None else format(v, spec)

        return "\n".join(
            [
                f"{self.candidate} vs {self.reference}: {s['objects']} object prompts on "
                f"{s['images']} images",
                f"  mask IoU          median {f(s['median_mask_iou'], '.4f')}  "
                f"min {f(s['min_mask_iou'], '.4f')}",
                f"  |pred. IoU diff|  median {f(s['median_score_diff'], '.4f')}  "
                f"p95 {f(s['p95_score_diff'], '.4f')}  max {f(s['max_score_diff'], '.4f')}",
                f"  uncertainty MAD   mean {f(s['mean_uncertainty_mad'], '.4f')}  "
                f"max {f(s['max_uncertainty_mad'], '.4f')}",
                *self._by_prompt_lines(),
                f"  acceptance (median IoU >= {MIN_MEDIAN_MASK_IOU}, every pred. IoU diff <= "
                f"{MAX_SCORE_DIFF}): {'PASS' if self.passes() else 'FAIL'}",
            ]
        )

    def _by_prompt_lines(self) -> list[str]:
        """Per prompt kind: how many, how many over the predicted-IoU limit, the largest
        difference, the smallest mask IoU (clicks make discrete choices that boxes do not)."""
        lines = []
        for kind in sorted({o.prompt for o in self.objects}):
            objs = [o for o in self.objects if o.prompt == kind]
            over = sum(o.score_diff > MAX_SCORE_DIFF for o in objs)
            lines.append(
                f"  {kind + ' prompts':<17} {len(objs)}: {over} over {MAX_SCORE_DIFF}, max "
                f"|diff| {max(o.score_diff for o in objs):.4f}, min mask IoU "
                f"{min(o.mask_iou for o in objs):.4f}"
            )
        return lines

    def rows(self) -> list[dict]:
        return [asdict(o) for o in self.objects]


def deepest_point(mask: np.ndarray) -> np.ndarray:
    """1x2 (x, y) of the pixel farthest from the background (a click a user would give)."""
    padded = np.pad(mask, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([[x, y]], dtype=np.float64)


def _seen(result: ObjectMask, shape: tuple[int, int]) -> np.ndarray:
    """Bool HxW: the pixels the model saw for ``result`` (its window, or everything)."""
    seen = np.zeros(shape, dtype=bool)
    if result.window is None:
        seen[:] = True
    else:
        r0, r1, c0, c1 = result.window.pixel_bounds(*shape)
        seen[r0:r1, c0:c1] = True
    return seen


def compare(ref: ObjectMask, cand: ObjectMask) -> tuple[float, float, float | None]:
    """(mask IoU, |predicted IoU difference|, uncertainty mean abs difference) of two
    results for the same object and prompt."""
    iou = mask_iou(ref.mask, cand.mask)
    diff = abs(float(cand.score) - float(ref.score))
    mad = None
    if ref.uncertainty is not None and cand.uncertainty is not None:
        seen = _seen(ref, ref.mask.shape) | _seen(cand, ref.mask.shape)
        mad = float(np.abs(cand.uncertainty[seen] - ref.uncertainty[seen]).mean())
    return iou, diff, mad


def compare_segmenters(
    reference: Segmenter,
    candidate: Segmenter,
    samples: Sequence,
    *,
    max_objects: int | None = 10,
    min_pixels: int = 20,
    prompts: Sequence[str] = PROMPT_KINDS,
    seed: int = 0,
    progress: bool | Callable[[int, int], None] = False,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
) -> AgreementReport:
    """Segment the objects of ``samples`` (:class:`pasam_plugins.train.datasets.Sample`)
    with both segmenters and compare them (see the module docstring).

    Arguments:
      max_objects: at most this many objects per image (a seeded choice).
      min_pixels: ignore smaller objects.
      prompts: ``"box"`` (the object's box) and/or ``"point"`` (one click at its deepest
        pixel); each object is compared once per kind.
    """
    bad = set(prompts) - set(PROMPT_KINDS)
    if bad or not prompts:
        raise ValueError(f"prompts must be among {PROMPT_KINDS}, got {list(prompts)}")
    report = AgreementReport(reference=reference_name, candidate=candidate_name)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), desc="agreement", unit="image")
    for k, sample in enumerate(samples):
        try:
            image, labels = sample.load()
        except ValueError as exc:
            report.skipped.append((sample.name, str(exc)))
        else:
            rng = np.random.default_rng([seed, k])
            ids = select_objects(labels, max_objects, rng, min_pixels)
            reference.set_image(image)
            candidate.set_image(image)
            for obj in ids:
                gt = labels == obj
                for kind in prompts:
                    if kind == "box":
                        kw = {"box": mask_box(gt)}
                    else:
                        kw = {"points": deepest_point(gt), "labels": np.ones(1, np.int64)}
                    iou, diff, mad = compare(reference.segment(**kw), candidate.segment(**kw))
                    report.objects.append(
                        ObjectAgreement(sample.name, int(obj), kind, iou, diff, mad)
                    )
        if bar is not None:
            bar.update(1)
        elif callable(progress):
            progress(k + 1, len(samples))
    if bar is not None:
        bar.close()
    return report


def precision_agreement(
    model,
    samples: Sequence,
    *,
    precision: str = "auto",
    device=None,
    zoom: ZoomSettings | None = None,
    **kwargs,
) -> AgreementReport:
    """The fast encoder path in ``precision`` against the float32 reference (SAM's own
    encoder modules), through :class:`Segmenter` on the same model; keyword arguments go
    to :func:`compare_segmenters`."""
    ref = PASamPredictor(model, device=device, precision="float32")
    fast = PASamPredictor(model, device=device, precision=precision, fast_encoder=True)
    return compare_segmenters(
        Segmenter(ref, zoom=zoom),
        Segmenter(fast, zoom=zoom),
        samples,
        reference_name="float32 reference",
        candidate_name=f"fast encoder ({fast.precision})",
        **kwargs,
    )
