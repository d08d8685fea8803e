"""Evaluation: SAM and PA-SAM rows from one run, metrics as defined, table and CSV; click
simulation, uncertainty AUROC, calibration and task-score ranking on the same predictions."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pasam_plugins.evaluate import (
    ClickResult,
    EvalReport,
    ImageResult,
    ObjectResult,
    evaluate_model,
)
from pasam_plugins.interactive import first_click
from pasam_plugins.metrics import (
    RocCounts,
    auroc,
    boundary_iou,
    expected_calibration_error,
    mask_box,
    mask_iou,
    number_of_clicks,
    spearman,
    uncertainty_band,
)
from pasam_plugins.modeling import build_pasam
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.segment import Segmenter, ZoomSettings, task_score_of
from pasam_plugins.testing import make_test_model
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


# ------------------------------------------------------------------ what the extras are worth


def _three_images() -> Dataset:
    samples = []
    for seed in range(3):
        img, lab = _image(seed, 2 + seed % 2)
        samples.append(Sample.from_arrays(f"B/{seed}", img, lab, instances="labels", dataset="B"))
    return Dataset("B", samples)


@pytest.mark.slow
def test_clicks_and_uncertainty_are_measured_on_the_model_s_own_predictions(tmp_path):
    # the 256-px tiny variant used on the whole image (16x16 embedding: a fast decoder)
    tiny_model = make_test_model(seed=0, variant="vit_tiny256")
    ds = _three_images()
    rep = evaluate_model(tiny_model, [ds], clicks=3)
    assert rep.max_clicks == 3 and rep.adapter_models == ["PA-SAM"]
    assert rep.click_rows == [
        ("SAM", "oracle"),
        ("PA-SAM", "oracle"),
        ("PA-SAM", "suggested"),
        ("PA-SAM", "band"),
    ]
    assert len(rep.clicks) == 7 * 4 and all(len(c.ious) == 3 for c in rep.clicks)

    predictor = PASamPredictor(tiny_model)
    seg = Segmenter(predictor)
    for sample in ds.samples:
        image, labels = sample.load()
        seg.set_image(image)
        ids = [int(i) for i in np.unique(labels) if i]
        gts = [labels == i for i in ids]
        # click 1 of every annotator: the object's deepest point, one positive click
        for obj, gt in zip(ids, gts, strict=True):
            first = first_click(gt)
            res = seg.segment([[first.x, first.y]], [1])
            rows = [c for c in rep.clicks if c.image == sample.name and c.object_id == obj]
            pa = [c for c in rows if c.model == "PA-SAM"]
            assert len(pa) == 3 and all(
                c.ious[0] == pytest.approx(mask_iou(res.mask, gt)) for c in pa
            )
        # per image: the task score of the box predictions (the backend's rule), the mean
        # IoU and the AUROC of the uncertainty for wrong pixels in the contour band
        boxes = np.stack([mask_box(g) for g in gts])
        results = seg.segment_many(boxes)
        img_row = next(r for r in rep.images if r.image == sample.name and r.model == "PA-SAM")
        assert img_row.task_score == pytest.approx(task_score_of(results))
        assert img_row.mean_iou == pytest.approx(
            np.mean([mask_iou(r.mask, g) for r, g in zip(results, gts, strict=True)])
        )
        assert img_row.mean_predicted_iou == pytest.approx(np.mean([r.score for r in results]))
        scores = np.concatenate([r.uncertainty[uncertainty_band(r.mask)] for r in results])
        wrong = np.concatenate(
            [(r.mask != g)[uncertainty_band(r.mask)] for r, g in zip(results, gts, strict=True)]
        )
        assert img_row.auroc_band == pytest.approx(auroc(scores, wrong), abs=2e-3)
        sam_row = next(r for r in rep.images if r.image == sample.name and r.model == "SAM")
        assert np.isnan(sam_row.auroc_band) and sam_row.task_score == pytest.approx(
            sam_row.mean_predicted_iou
        )

    # dataset numbers: NoC from the per-object IoUs, Spearman over the 3 images, ECE
    s = rep.click_summary("PA-SAM", "suggested", "B")
    rows = [c for c in rep.clicks if c.model == "PA-SAM" and c.strategy == "suggested"]
    assert s["objects"] == 7
    assert s["noc85"] == pytest.approx(np.mean([number_of_clicks(c.ious, 0.85, 3) for c in rows]))
    assert s["miou"][2] == pytest.approx(np.mean([c.ious[2] for c in rows]))
    u = rep.uncertainty_summary("PA-SAM", "B")
    imgs = [r for r in rep.images if r.model == "PA-SAM"]
    true_img = [r.mean_iou for r in imgs]
    assert u["spearman_task_score"] == pytest.approx(
        spearman([r.task_score for r in imgs], true_img), nan_ok=True
    )
    assert u["spearman_predicted_iou"] == pytest.approx(
        spearman([r.mean_predicted_iou for r in imgs], true_img), nan_ok=True
    )
    objs = [r for r in rep.results if r.model == "PA-SAM"]
    assert u["ece"] == pytest.approx(
        expected_calibration_error([r.score for r in objs], [r.iou for r in objs])
    )
    assert rep.roc[("PA-SAM", "B", "band")].positives > 0

    assert "| B | PA-SAM | suggested |" in rep.click_table()
    assert "| B | PA-SAM |" in rep.uncertainty_table()
    targets = rep.targets()
    assert len(targets) == 3
    verdicts = [t.split(": ")[-1].split(" (")[0] for t in targets]
    assert all(v in ("met", "MISSED", "not measured") for v in verdicts)
    assert "target >= 0.80" in targets[0] and "NoC@85 following suggestions" in targets[2]

    paths = rep.write_outputs(tmp_path / "out" / "e.csv")
    names = sorted(p.name for p in paths)
    assert names == [
        "e-clicks.csv",
        "e-clicks.png",
        "e-images.csv",
        "e-reliability.png",
        "e.csv",
        "e.json",
    ]
    for p in paths:
        if p.suffix == ".png":
            assert Image.open(p).size[0] > 300
    summary = json.loads((tmp_path / "out" / "e.json").read_text())
    assert summary["datasets"]["B"]["PA-SAM"]["clicks"]["suggested"]["noc85"] == pytest.approx(
        s["noc85"]
    )
    with open(tmp_path / "out" / "e-clicks.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 28 and float(got[0]["iou_3"]) == pytest.approx(
        rep.clicks[0].ious[2], abs=1e-6
    )


@pytest.mark.slow
def test_zoomed_models_are_simulated_too():
    model = make_test_model(seed=0, variant="vit_tiny256")
    rep = evaluate_model(
        model, [_dataset("A", 2)], clicks=2, strategies=("oracle",), zoom=ZoomSettings()
    )
    assert [(c.model, c.strategy) for c in rep.clicks] == [
        ("SAM", "oracle"),
        ("SAM", "oracle"),
        ("PA-SAM", "oracle"),
        ("PA-SAM", "oracle"),
    ]
    assert all(len(c.ious) == 2 and 0.0 <= min(c.ious) for c in rep.clicks)
    with pytest.raises(ValueError, match="unknown annotators"):
        evaluate_model(model, [_dataset("A", 1)], clicks=2, strategies=("psychic",))


def test_targets_report_met_missed_and_not_measured():
    def clicks(model, strategy, ious_per_object):
        return [
            ClickResult("D", "i", k, model, strategy, ious, ious, len(ious), 0)
            for k, ious in enumerate(ious_per_object)
        ]

    rep = EvalReport(max_clicks=4, adapter_models=["PA-SAM"])
    rep.results = [ObjectResult("D", f"i{k}", 1, "PA-SAM", 0.5, 0.5, 0.6) for k in range(4)]
    # true image IoU 0.2 < 0.4 < 0.6 < 0.8: the task score ranks them right, the predicted
    # IoU does not
    for k, (true, task, pred) in enumerate(
        [(0.2, 0.1, 0.9), (0.4, 0.2, 0.5), (0.6, 0.3, 0.7), (0.8, 0.4, 0.6)]
    ):
        rep.images.append(ImageResult("D", f"i{k}", "PA-SAM", 1, true, pred, task))
    rep.roc[("PA-SAM", "D", "band")] = RocCounts().add([0.9, 0.8, 0.1, 0.05], [1, 1, 0, 1])
    # oracle: 2 and 3 clicks to 85 %; suggestions: 3 and 4 -> 3.5 / 2.5 = 1.4x
    rep.clicks = clicks("PA-SAM", "oracle", [[0.5, 0.9, 0.9, 0.9], [0.5, 0.6, 0.86, 0.9]])
    rep.clicks += clicks("PA-SAM", "suggested", [[0.5, 0.6, 0.9, 0.9], [0.5, 0.6, 0.7, 0.86]])
    assert rep.targets() == [
        "D PA-SAM: uncertainty AUROC in the contour band 0.667 (target >= 0.80): MISSED",
        "D PA-SAM: Spearman with the true per-image mean IoU over 4 images: task score 1.000, "
        "mean predicted IoU -0.400 (target: task score >= mean predicted IoU): met",
        "D PA-SAM: NoC@85 following suggestions 3.50 vs oracle 2.50 = 1.40x (target <= 1.3x): "
        "MISSED",
    ]
    # an oracle that never reaches 85 % and a single image: nothing to compare
    rep.clicks = clicks("PA-SAM", "oracle", [[0.5] * 4]) + clicks(
        "PA-SAM", "suggested", [[0.5] * 4]
    )
    rep.images = rep.images[:1]
    lines = rep.targets()
    assert lines[1].endswith("(target: task score >= mean predicted IoU): not measured")
    assert lines[2].endswith("not measured (the oracle never reaches 85 %)")
    assert EvalReport().targets() == []
