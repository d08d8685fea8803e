"""Export formats (pasam_plugins.export, pasam_plugins.labelstudio_export): COCO RLE and
polygons read back with pycocotools, polygon round trips on the shared labels, label TIFF,
CSV, and Label Studio exports converted to COCO."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pasam_plugins.export import (
    ExportObject,
    ImageObjects,
    coco_dataset,
    coco_rle_decode,
    coco_rle_encode,
    label_image,
    mask_to_polygon,
    mask_to_polygons,
    object_rows,
    objects_from_labels,
    ring_to_mask,
    write_csv,
    write_json,
    write_label_tiff,
)
from pasam_plugins.labelstudio_export import task_objects

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _dsb_labels() -> list[tuple[str, np.ndarray]]:
    files = sorted((SHARED / "dsb2018-nuclei" / "label").glob("*.png"))
    if not files:
        pytest.fail("the shared nuclei labels are missing")
    # the test split (index 4 mod 5): all modalities (fluorescence, H&E-like, brightfield)
    out = []
    for f in files:
        if int(f.name[:3]) % 5 == 4:
            out.append((f.name, np.asarray(Image.open(f))))
    return out


def _isbi_components() -> list[tuple[str, np.ndarray]]:
    import cv2

    out = []
    for z in (20, 25):
        lab = np.asarray(Image.open(SHARED / "isbi2012-em" / "label" / f"{z}.png"))
        _, comps = cv2.connectedComponents((lab > 128).astype(np.uint8), connectivity=4)
        out.append((f"isbi {z}", comps))
    return out


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_coco_rle_is_what_pycocotools_writes_and_reads():
    rng = np.random.default_rng(0)
    masks = [
        rng.random((37, 53)) < 0.3,  # noisy: long count strings, negative differences
        np.ones((20, 30), bool),  # starts with foreground: leading zero run
        np.zeros((5, 7), bool),
    ]
    lab = _dsb_labels()[0][1]
    masks += [lab == v for v in np.unique(lab)[1:6]]
    for m in masks:
        ours = coco_rle_encode(m)
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == ref["counts"].decode("ascii")
        assert ours["size"] == list(ref["size"])
        np.testing.assert_array_equal(mask_utils.decode(ours).astype(bool), m)
        np.testing.assert_array_equal(coco_rle_decode(ours), m)


def test_exact_polygons_give_back_every_mask():
    """Without simplification the outline follows the pixel edges: even-odd filling by
    pixel centre (ours and pycocotools') gives back the mask, holes and parts included."""
    h, w = 40, 50
    m = np.zeros((h, w), bool)
    m[5:30, 5:35] = True
    m[10:15, 10:20] = False  # hole
    m[20, 25] = False  # one-pixel hole
    m[33:38, 40:45] = True  # second part
    m[2, 2] = True  # single pixel
    m[3, 3] = True  # touching it diagonally
    m[0, 45:50] = True  # on the image border
    polys = mask_to_polygons(m, tolerance=0)
    assert sum(len(p.holes) for p in polys) == 2
    ring = mask_to_polygon(m, tolerance=0)
    np.testing.assert_array_equal(ring_to_mask(ring, h, w), m)
    rle = mask_utils.frPyObjects([ring.reshape(-1).tolist()], h, w)
    np.testing.assert_array_equal(mask_utils.decode(mask_utils.merge(rle)).astype(bool), m)


@pytest.mark.parametrize("source", ["dsb", "isbi"])
def test_polygon_round_trip_on_the_shared_labels(source):
    """mask -> simplified polygon -> mask keeps IoU >= 0.95 for every object of the
    held-out labels (nuclei down to a few pixels, EM cell profiles with holes), read back
    by pycocotools."""
    images = _dsb_labels() if source == "dsb" else _isbi_components()
    n = 0
    worst = 1.0
    vertices = []
    for _, lab in images:
        h, w = lab.shape
        for _, obj in objects_from_labels(lab):
            m = obj.mask(h, w)
            ring = mask_to_polygon(obj.crop, offset=(obj.box[0], obj.box[1]))
            vertices.append(len(ring))
            back = mask_utils.decode(
                mask_utils.merge(mask_utils.frPyObjects([ring.reshape(-1).tolist()], h, w))
            )
            worst = min(worst, _iou(back.astype(bool), m))
            n += 1
    assert n > 100
    assert worst >= 0.95
    # simplification drops the pixel staircase: fewer vertices than the exact outline
    exact = [
        len(mask_to_polygon(o.crop, tolerance=0)) for _, o in objects_from_labels(images[0][1])
    ]
    simple = [len(mask_to_polygon(o.crop)) for _, o in objects_from_labels(images[0][1])]
    assert sum(simple) < 0.7 * sum(exact)


def _objects(lab):
    objs = []
    for value, o in objects_from_labels(lab):
        o.attributes.update(
            predicted_iou=0.5 + value / 1000,
            boundary_uncertainty=value / 500,
            needs_review=value % 3 == 0,
        )
        objs.append((value, o))
    return objs


@pytest.mark.parametrize("mode", ["rle", "polygon"])
def test_coco_dataset_loads_in_pycocotools(tmp_path, mode):
    images = []
    truth = []
    for name, lab in _dsb_labels()[:3]:
        objs = _objects(lab)
        images.append(
            ImageObjects(
                file_name=name,
                height=lab.shape[0],
                width=lab.shape[1],
                objects=[o for _, o in objs],
            )
        )
        truth.append((lab, objs))
    path = write_json(tmp_path / "coco.json", coco_dataset(images, mode=mode))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 3
    assert coco.loadCats(coco.getCatIds())[0]["name"] == "object"
    for img_id, (lab, objs) in zip(coco.getImgIds(), truth, strict=True):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert len(anns) == len(objs)
        for ann, (value, _) in zip(anns, objs, strict=True):
            m = coco.annToMask(ann).astype(bool)
            gt = lab == value
            if mode == "rle":
                np.testing.assert_array_equal(m, gt)
            else:
                assert _iou(m, gt) >= 0.95
            assert ann["area"] == gt.sum()
            assert (
                mask_utils.toBbox(
                    mask_utils.encode(np.asfortranarray(gt.astype(np.uint8)))
                ).tolist()
                == ann["bbox"]
            )
            assert ann["score"] == pytest.approx(0.5 + value / 1000)
            assert ann["boundary_uncertainty"] == pytest.approx(value / 500)


def test_label_tiff_and_csv(tmp_path):
    name, lab = _dsb_labels()[0]
    objs = _objects(lab)
    tif = write_label_tiff(tmp_path / "x_labels.tif", lab)
    back = tifffile.imread(tif)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, lab)
    rows = object_rows(objs, image=name)
    path = write_csv(tmp_path / "x.csv", rows)
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(objs)
    first = table[0]
    assert list(first)[:3] == ["label", "category", "area"]
    gt = lab == int(first["label"])
    ys, xs = np.nonzero(gt)
    assert int(first["area"]) == gt.sum()
    assert float(first["centroid_x"]) == pytest.approx(xs.mean() + 0.5, abs=1e-3)
    assert int(first["bbox_width"]) == xs.max() - xs.min() + 1
    assert first["image"] == name and first["needs_review"] in ("True", "False")
    # label images from overlapping objects: small objects stay on top
    big = ExportObject.from_mask(np.pad(np.ones((10, 10), bool), 5))
    small = ExportObject.from_mask(np.pad(np.ones((2, 2), bool), 9))
    assert label_image([small, big], 20, 20)[10, 10] == 1


def _ls_task(lab: np.ndarray, *, polygon: bool) -> dict:
    from pasam_plugins.lsformat import mask_to_rle

    h, w = lab.shape
    result = []
    for value, obj in objects_from_labels(lab):
        if polygon:
            ring = mask_to_polygon(obj.crop, offset=(obj.box[0], obj.box[1]))
            value_ = {
                "points": (ring / [w, h] * 100).tolist(),
                "closed": True,
                "polygonlabels": ["Nucleus"],
            }
            kind = "polygonlabels"
        else:
            value_ = {
                "format": "rle",
                "rle": mask_to_rle(obj.mask(h, w)),
                "brushlabels": ["Nucleus"],
            }
            kind = "brushlabels"
        result.append(
            {
                "id": f"r{value}",
                "type": kind,
                "from_name": "tag",
                "to_name": "image",
                "original_width": w,
                "original_height": h,
                "value": value_,
                "score": 0.9,
            }
        )
    return {
        "id": 7,
        "data": {"image": "/data/local-files/?d=nuclei/004_0c2550a23b8a.png"},
        "annotations": [
            {"id": 1, "result": [], "was_cancelled": True, "updated_at": "2027-01-02"},
            {"id": 2, "result": result, "updated_at": "2026-01-01"},
        ],
    }


@pytest.mark.parametrize("polygon", [False, True])
def test_labelstudio_export_to_coco(polygon):
    name, lab = _dsb_labels()[0]
    im = task_objects(_ls_task(lab, polygon=polygon))
    assert im is not None and im.file_name == "004_0c2550a23b8a.png"
    assert (im.height, im.width) == lab.shape and len(im.objects) == len(np.unique(lab)) - 1
    for (value, _), obj in zip(objects_from_labels(lab), im.objects, strict=True):
        gt = lab == value
        got = obj.mask(*lab.shape)
        assert np.array_equal(got, gt) if not polygon else _iou(got, gt) >= 0.95, value
        assert obj.category == "Nucleus" and obj.attributes["predicted_iou"] == 0.9


def test_pasam_convert_writes_coco_and_label_images(tmp_path):
    from typer.testing import CliRunner

    from pasam_plugins.cli import app

    name, lab = _dsb_labels()[0]
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(
            [_ls_task(lab, polygon=False), {"id": 8, "data": {"image": "x.png"}, "annotations": []}]
        )
    )
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["convert", str(export), "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    coco = COCO(str(out / "coco.json"))
    assert len(coco.getAnnIds()) == len(np.unique(lab)) - 1
    np.testing.assert_array_equal(
        tifffile.imread(out / "task7_004_0c2550a23b8a_labels.tif") > 0, lab > 0
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(app, ["convert", str(bad), "--out-dir", str(out)])
    assert r.exit_code == 1 and "not a Label Studio JSON export" in r.output
