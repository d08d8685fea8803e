"""Evaluation: SAM and PA-SAM rows from one run, metrics as defined, table and CSV."""

import copy
import csv

import numpy as np
import pytest
import torch

from pasam_plugins.evaluate import EvalReport, ObjectResult, evaluate_model
from pasam_plugins.metrics import boundary_iou, mask_box, mask_iou
from pasam_plugins.modeling import build_pasam
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.train.datasets import Dataset, Sample


def _image(seed: int, n: int):
    rng = np.random.default_rng(seed)
    img = (rng.random((80, 100, 3)) * 50).astype(np.uint8)
    lab = np.zeros((80, 100), np.int32)
    for k in range(n):
        r, c = 5 + 18 * (k // 4), 5 + 22 * (k % 4)
        lab[r : r + 12 + k, c : c + 15] = k + 1
        img[lab == k + 1] = 180 + 10 * k
    return img, lab


def _dataset(name: str, n_objects: int, seed: int = 0) -> Dataset:
    img, lab = _image(seed, n_objects)
    return Dataset(
        name, [Sample.from_arrays(f"{name}/a", img, lab, instances="labels", dataset=name)]
    )


def _sam_only(model):
    sam = build_pasam(model.variant, adapter=False)
    missing, unexpected = sam.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all("guiding_conv" in k or "prompt_adapter" in k for k in unexpected)
    return sam


def test_sam_row_is_the_model_without_adapter_and_metrics_are_direct(tiny_model):
    ds = _dataset("A", 3)
    rep = evaluate_model(tiny_model, [ds])
    assert rep.models == ["SAM", "PA-SAM"]
    sam_rows = [r for r in rep.results if r.model == "SAM"]
    pa_rows = [r for r in rep.results if r.model == "PA-SAM"]
    assert [r.object_id for r in sam_rows] == [1, 2, 3] == [r.object_id for r in pa_rows]

    # the SAM row equals evaluating a model that has no adapter at all (SAM's decoder)
    alone = evaluate_model(_sam_only(tiny_model), [ds])
    assert alone.models == ["SAM"]
    assert [(r.iou, r.boundary_iou) for r in alone.results] == [
        (r.iou, r.boundary_iou) for r in sam_rows
    ]

    # with a baseline the SAM row comes from those weights (e.g. the original SAM), even
    # when the evaluated model's shared decoder parts were trained
    tuned = copy.deepcopy(tiny_model)
    with torch.no_grad():
        tuned.mask_decoder.output_upscaling[0].weight.mul_(1.5)
    rep2 = evaluate_model(tuned, [ds], baseline=tiny_model)
    assert [r.iou for r in rep2.results if r.model == "SAM"] == [r.iou for r in sam_rows]
    rep3 = evaluate_model(tuned, [ds])  # no baseline: adapter off, trained parts included
    assert [r.iou for r in rep3.results if r.model == "SAM"] != [r.iou for r in sam_rows]

    # each PA-SAM value is the metric of the predictor's own mask for the GT box
    image, labels = ds.samples[0].load()
    predictor = PASamPredictor(tiny_model)
    predictor.set_image(image)
    for r in pa_rows:
        gt = labels == r.object_id
        masks, _, _ = predictor.predict(box=mask_box(gt), multimask_output=False)
        assert r.iou == pytest.approx(mask_iou(masks[0], gt))
        assert r.boundary_iou == pytest.approx(boundary_iou(masks[0], gt))


def test_points_prompts_and_object_limits(tiny_model):
    ds = _dataset("A", 5)
    rep = evaluate_model(
        tiny_model, [ds], num_points=3, use_box=False, max_objects=2, compare_sam=False
    )
    assert rep.models == ["PA-SAM"] and len(rep.results) == 2
    again = evaluate_model(
        tiny_model, [ds], num_points=3, use_box=False, max_objects=2, compare_sam=False
    )
    assert [(r.object_id, r.iou) for r in rep.results] == [
        (r.object_id, r.iou) for r in again.results
    ]
    with pytest.raises(ValueError, match="give a prompt"):
        evaluate_model(tiny_model, [ds], use_box=False)


def test_unreadable_samples_are_reported(tiny_model):
    def broken():
        raise ValueError("bad file")

    ds = Dataset("A", [Sample("A/broken", broken, "A"), *_dataset("A", 1).samples])
    rep = evaluate_model(tiny_model, [ds], compare_sam=False)
    assert rep.skipped == [("A/broken", "bad file")] and len(rep.results) == 1


def test_averages_table_and_csv(tmp_path):
    rows = [
        ObjectResult("D1", "i1", 1, "SAM", 0.5, 0.2),
        ObjectResult("D1", "i1", 2, "SAM", 0.7, 0.4),
        ObjectResult("D2", "i2", 1, "SAM", 0.9, 0.9),
        ObjectResult("D1", "i1", 1, "PA-SAM", 0.6, 0.3),
        ObjectResult("D1", "i1", 2, "PA-SAM", 0.8, 0.5),
        ObjectResult("D2", "i2", 1, "PA-SAM", 1.0, 0.7),
    ]
    rep = EvalReport(results=rows)
    assert rep.mean("SAM", "D1") == pytest.approx((0.6, 0.3))
    # the average is over datasets (as the paper's Avg. column), not over objects
    assert rep.mean("SAM") == pytest.approx(((0.6 + 0.9) / 2, (0.3 + 0.9) / 2))
    table = rep.table().splitlines()
    assert table[0] == (
        "| Model | D1 mIoU | D1 mBIoU | D2 mIoU | D2 mBIoU | Avg. mIoU | Avg. mBIoU |"
    )
    assert table[2] == "| SAM | 60.0 | 30.0 | 90.0 | 90.0 | 75.0 | 60.0 |"
    assert table[3] == "| PA-SAM | 70.0 | 40.0 | 100.0 | 70.0 | 85.0 | 55.0 |"
    path = rep.write_csv(tmp_path / "r.csv")
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 6 and got[0]["dataset"] == "D1" and float(got[5]["iou"]) == 1.0
