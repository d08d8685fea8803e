"""The shipped small model (model/weights/, registry entry pasam_micro) segments real
microscopy it never saw: held-out EM cells (ISBI 2012 sections 20-29) and nuclei (DSB 2018
files with index 4 mod 5), prompted with their ground-truth box. Random weights fail this."""

import numpy as np
import pytest

from pasam_plugins.checkpoint import load_model
from pasam_plugins.metrics import mask_box, mask_iou
from pasam_plugins.modeling import build_pasam
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.registry import DEFAULT_MODEL, bundled_checkpoint, get_entry
from pasam_plugins.segment import Segmenter, ZoomSettings
from pasam_plugins.train.datasets import read_source

OBJECTS_PER_DATASET = 8


def _held_out(shared_data, spec: str, images: int = 2):
    ds = read_source(spec.format(data=shared_data))[0]
    return ds.samples[:images]


def _median_box_iou(model, samples, rng) -> float:
    seg = Segmenter(PASamPredictor(model, device="cpu"))
    ious = []
    per_image = OBJECTS_PER_DATASET // len(samples)
    for sample in samples:
        image, labels = sample.load()
        ids, counts = np.unique(labels, return_counts=True)
        ids = [int(i) for i, c in zip(ids, counts, strict=True) if i and c >= 30]
        for obj in rng.choice(ids, per_image, replace=False):
            gt = labels == obj
            seg.set_image(image)
            ious.append(mask_iou(seg.segment(box=mask_box(gt)).mask, gt))
    return float(np.median(ious))


@pytest.fixture(scope="module")
def shipped():
    return load_model(bundled_checkpoint())


def test_the_default_model_is_shipped_and_registered(shipped):
    entry = get_entry(DEFAULT_MODEL)
    assert entry.bundled and entry.variant == shipped.variant == "vit_s256"
    assert shipped.has_adapter and shipped.origin.zoom is not None and not shipped.origin.untrained
    from pasam_plugins.download import sha256_file

    assert sha256_file(bundled_checkpoint()) == entry.sha256  # the registry pins the file
    assert bundled_checkpoint().stat().st_size < 10e6


@pytest.mark.parametrize(
    "spec",
    [
        "components:{data}/isbi2012-em@20-29",
        "labels:{data}/dsb2018-nuclei@%5=4",
    ],
)
def test_shipped_model_segments_held_out_objects_from_one_box(shipped, shared_data, spec):
    samples = _held_out(shared_data, spec)
    median = _median_box_iou(shipped, samples, np.random.default_rng(0))
    assert median >= 0.75, median
    # the same check on random weights of the same architecture fails: it measures the weights
    random = build_pasam("vit_s256", guide_mode="image").eval()
    random.origin = random.origin.derived(metadata={"zoom": ZoomSettings().to_metadata()})
    assert _median_box_iou(random, samples, np.random.default_rng(0)) < 0.75


def test_shipped_hq_sam_of_the_three_way_comparison_segments_held_out_cells(shared_data):
    """pasam_micro_hq (HQ-SAM's parts trained on the shipped base, the model card's HQ-SAM
    row) is registered, pinned, loads as HQ-SAM on its base and segments held-out EM cells."""
    from pasam_plugins.download import local_checkpoint, sha256_file

    entry = get_entry("pasam_micro_hq")
    path = local_checkpoint(entry)
    assert entry.bundled and sha256_file(path) == entry.sha256
    hq = load_model(path)
    assert hq.origin.family == "hq-sam" and hq.origin.zoom is not None
    samples = _held_out(shared_data, "components:{data}/isbi2012-em@20-29")
    assert _median_box_iou(hq, samples, np.random.default_rng(0)) >= 0.75
