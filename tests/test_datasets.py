"""Dataset readers on synthetic folders: pairs, bad pairs, stacks, HQSeg, Label Studio, napari."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pasam_plugins.train.datasets import (
    DatasetError,
    SampleError,
    mask_to_labels,
    object_ids,
    read_folder,
    read_hqseg,
    read_labelstudio,
    read_napari,
    read_source,
    samples_from_arrays,
)


def _img(h=32, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _mask(h=32, w=40, box=(4, 4, 12, 20)):
    m = np.zeros((h, w), np.uint8)
    r0, c0, r1, c1 = box
    m[r0:r1, c0:c1] = 255
    return m


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)
    return path


def test_mask_to_labels_modes():
    two = np.zeros((10, 10), np.uint8)
    two[1:3, 1:3] = 255
    two[6:9, 6:9] = 255
    assert object_ids(mask_to_labels(two, "binary")).tolist() == [1]
    comps = mask_to_labels(two, "components")
    assert object_ids(comps).tolist() == [1, 2]
    assert (comps > 0).sum() == 4 + 9
    inst = two // 255 * 7
    inst[6:9, 6:9] = 3
    assert object_ids(mask_to_labels(inst, "auto")).tolist() == [3, 7]  # not {0,255}: labels
    assert object_ids(mask_to_labels(two, "auto")).tolist() == [1]  # {0,255}: binary
    # GT threshold 128, as the evaluation: 128 is background, 129 foreground
    assert mask_to_labels(np.array([[128, 129]], np.uint8), "binary").tolist() == [[0, 1]]


def test_folder_pairs_and_bad_pairs_are_skipped(tmp_path):
    _save(tmp_path / "images" / "a.png", _img())
    _save(tmp_path / "masks" / "a.png", _mask())
    _save(tmp_path / "images" / "b.jpg", _img(seed=1))
    _save(tmp_path / "masks" / "b_mask.png", _mask(box=(0, 0, 5, 5)))
    _save(tmp_path / "images" / "wrong_size.png", _img())
    _save(tmp_path / "masks" / "wrong_size.png", _mask(h=16))
    _save(tmp_path / "images" / "orphan.png", _img())
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    _save(tmp_path / "masks" / "broken.png", _mask())

    ds = read_folder(tmp_path)
    assert sorted(s.name for s in ds) == [f"{tmp_path.name}/a", f"{tmp_path.name}/b"]
    skipped = dict(ds.skipped)
    assert any("orphan" in k and "no mask" in v for k, v in skipped.items())
    assert any("wrong_size" in k and "does not match" in v for k, v in skipped.items())
    assert any("broken" in k and "unreadable" in v for k, v in skipped.items())
    img, lab = ds.samples[0].load()
    assert img.shape == (32, 40, 3) and img.dtype == np.uint8
    assert lab.dtype == np.int32 and (lab == 1).sum() == 8 * 16
    assert "wrong_size" in ds.report()


def test_same_folder_jpg_png_pairs_as_cascade_psp(tmp_path):
    _save(tmp_path / "x.jpg", _img())
    _save(tmp_path / "x.png", _mask())
    _save(tmp_path / "y.jpg", _img(seed=2))
    _save(tmp_path / "y.png", _mask())
    ds = read_folder(tmp_path)
    assert [s.name.split("/")[-1] for s in ds] == ["x", "y"]
    assert not ds.skipped


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        read_folder(tmp_path / "nope")


def test_a_pair_that_breaks_at_load_time_raises_sample_error(tmp_path):
    _save(tmp_path / "images" / "a.png", _img())
    _save(tmp_path / "masks" / "a.png", _mask())
    ds = read_folder(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"truncated")
    with pytest.raises(SampleError):
        ds.samples[0].load()


def test_napari_labels_next_to_images_and_stacks_become_slices(tmp_path):
    stack = np.random.default_rng(0).integers(0, 4000, (3, 24, 30), dtype=np.uint16)
    labels = np.zeros((3, 24, 30), np.uint16)
    labels[0, 2:6, 2:6] = 1
    labels[0, 10:20, 10:20] = 2
    labels[2, 0:4, 0:4] = 5
    _save(tmp_path / "vol.tif", stack)
    _save(tmp_path / "vol_labels.tif", labels)
    _save(tmp_path / "flat.png", _img(24, 30))
    _save(tmp_path / "flat_labels.tif", (labels[0] * 3).astype(np.uint8))
    ds = read_napari(tmp_path)
    names = sorted(s.name for s in ds)
    assert names == sorted(
        [f"{tmp_path.name}/flat"] + [f"{tmp_path.name}/vol[z={z}]" for z in range(3)]
    )
    by_name = {s.name: s for s in ds}
    img, lab = by_name[f"{tmp_path.name}/vol[z=0]"].load()
    assert img.shape == (24, 30, 3) and img.dtype == np.uint8  # uint16 normalized
    assert object_ids(lab).tolist() == [1, 2]
    _, lab2 = by_name[f"{tmp_path.name}/vol[z=2]"].load()
    assert object_ids(lab2).tolist() == [5]
    _, lab_flat = by_name[f"{tmp_path.name}/flat"].load()
    assert object_ids(lab_flat).tolist() == [3, 6]


def _hqseg(root: Path) -> None:
    for sub in ("DIS5K/DIS-VD", "DIS5K/DIS-TR"):
        for i in range(2):
            _save(root / sub / "im" / f"{i}.jpg", _img(seed=i))
            _save(root / sub / "gt" / f"{i}.png", _mask())
    _save(root / "DIS5K/DIS-TR/im/nomask.jpg", _img())
    for i in range(3):
        _save(root / "thin_object_detection/COIFT/images" / f"c{i}.jpg", _img(seed=i))
        _save(root / "thin_object_detection/COIFT/masks" / f"c{i}.png", _mask())
    _save(root / "cascade_psp/ecssd/e0.jpg", _img())
    _save(root / "cascade_psp/ecssd/e0.png", _mask())


def test_hqseg_layout_train_and_val_splits(tmp_path):
    _hqseg(tmp_path)
    train = {d.name: d for d in read_hqseg(tmp_path, "train")}
    assert len(train["DIS5K-TR"]) == 2 and len(train["ECSSD"]) == 1
    assert any("nomask" in w for w, _ in train["DIS5K-TR"].skipped)
    assert any("missing folder" in why for _, why in train["MSRA10K"].skipped)
    val = {d.name: d for d in read_hqseg(tmp_path, "val")}
    assert len(val["DIS5K-VD"]) == 2 and len(val["COIFT"]) == 3 and len(val["HRSOD"]) == 0
    assert val["COIFT"].samples[0].dataset == "COIFT"
    _, lab = val["COIFT"].samples[0].load()
    assert object_ids(lab).tolist() == [1]
    assert [d.name for d in read_source(f"hqseg:{tmp_path}", split="val")][:2] == [
        "DIS5K-VD",
        "COIFT",
    ]
    with pytest.raises(DatasetError, match="no HQSeg-44K"):
        read_hqseg(tmp_path / "DIS5K", "val")


# ---------------------------------------------------------------- Label Studio
def _brush_region(mask: np.ndarray, label: str, rid: str) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    h, w = mask.shape
    return {
        "id": rid,
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label],
        },
    }


def test_labelstudio_brush_regions_are_read_with_the_one_format_module():
    """The reader decodes brush regions with pasam_plugins.lsformat (the backend's module): a
    region the backend would write reads back as its mask; a region whose RLE does not fit
    its size is reported, not fatal."""
    from pasam_plugins.lsformat import mask_region
    from pasam_plugins.train.datasets import labelstudio_samples, labelstudio_task_labels

    m = np.zeros((23, 31), bool)
    m[5:15, 5:25] = True
    m[np.random.default_rng(3).random((23, 31)) > 0.8] = True  # noise as well as long runs
    region = mask_region(m, label="Cell", from_name="tag", to_name="image")
    lab, names, size = labelstudio_task_labels({"annotations": [{"result": [region]}]})
    assert names == ["Cell"] and size == (23, 31)
    np.testing.assert_array_equal(lab == 1, m)
    bad = {"id": 9, "annotations": [{"result": [{**region, "original_height": 20}]}]}
    ds = labelstudio_samples([bad], lambda t: _img(23, 31))
    assert not ds.samples and "expected 20x31x4" in ds.skipped[0][1]


def test_labelstudio_export(tmp_path):
    media = tmp_path / "media"
    img = _img(20, 30)
    _save(media / "upload" / "1" / "abc-cells.png", img)
    m1 = np.zeros((20, 30), bool)
    m1[2:8, 3:9] = True
    m2 = np.zeros((20, 30), bool)
    m2[10:18, 15:28] = True
    tasks = [
        {
            "id": 1,
            "data": {"image": "/data/upload/1/abc-cells.png"},
            "annotations": [
                {
                    "id": 5,
                    "was_cancelled": False,
                    "result": [
                        _brush_region(m1, "Cell", "r1"),
                        _brush_region(m2, "Cell", "r2"),
                        {
                            "type": "rectanglelabels",
                            "value": {"x": 1, "y": 1, "width": 5, "height": 5},
                        },
                    ],
                },
            ],
        },
        {
            "id": 2,
            "data": {"image": "/data/upload/1/missing.png"},
            "annotations": [{"id": 6, "result": [_brush_region(m1, "Cell", "r3")]}],
        },
        {"id": 3, "data": {"image": "/data/upload/1/abc-cells.png"}, "annotations": []},
        {
            "id": 4,
            "data": {"image": "/data/local-files/?d=store/em%20cells.png"},
            "annotations": [
                {"id": 7, "was_cancelled": True, "result": [_brush_region(m1, "Cell", "r4")]},
                {"id": 8, "result": [_brush_region(m2, "Cell", "r5")]},
            ],
        },
    ]
    _save(media / "store" / "em cells.png", img[::-1].copy())
    export = tmp_path / "project-1.json"
    export.write_text(json.dumps(tasks))
    ds = read_labelstudio(export, image_root=media)
    assert [s.name for s in ds] == ["project_1/task1", "project_1/task4"]
    # local storage path relative to the media folder; the cancelled annotation is ignored
    image4, labels4 = ds.samples[1].load()
    np.testing.assert_array_equal(image4, img[::-1])
    assert object_ids(labels4).tolist() == [1] and (labels4 == 1).sum() == m2.sum()
    assert any("task 2" in w and "not found" in why for w, why in ds.skipped)
    image, labels = ds.samples[0].load()
    np.testing.assert_array_equal(image, img)
    np.testing.assert_array_equal(labels == 1, m1)
    np.testing.assert_array_equal(labels == 2, m2)
    # without the media folder the image is not found: reported, not fatal
    ds2 = read_labelstudio(export)
    assert len(ds2) == 0 and len(ds2.skipped) == 3
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a Label Studio JSON export"):
        read_labelstudio(tmp_path / "bad.json")


def test_samples_from_arrays_split_stacks_and_check_shapes():
    stack = np.random.default_rng(1).integers(0, 1000, (4, 16, 20), dtype=np.uint16)
    labels = np.zeros((4, 16, 20), np.int32)
    labels[1, 2:5, 2:5] = 3
    labels[3, 8:12, 8:12] = 1
    samples = samples_from_arrays(stack, labels, name="layer")
    assert [s.name for s in samples] == ["layer[z=1]", "layer[z=3]"]  # empty slices left out
    img, lab = samples[0].load()
    assert img.shape == (16, 20, 3) and object_ids(lab).tolist() == [3]
    assert len(samples_from_arrays(stack, labels, skip_empty=False)) == 4
    rgb = _img(16, 20)
    assert len(samples_from_arrays(rgb, labels[1])) == 1
    with pytest.raises(SampleError, match="do not match"):
        samples_from_arrays(stack, labels[:2])
    with pytest.raises(SampleError, match="image is"):
        samples_from_arrays(rgb, labels[1][:10])[0].load()


def test_isbi_cell_profiles_are_connected_components(isbi_dir):
    ds = read_folder(isbi_dir, instances="components")
    assert len(ds) == 30 and not ds.skipped
    img, lab = ds.samples[0].load()
    raw = np.asarray(Image.open(isbi_dir / "label" / f"{ds.samples[0].name.split('/')[-1]}.png"))
    assert img.shape == (512, 512, 3)
    assert ((lab > 0) == (raw == 255)).all()  # every cell-interior pixel, no membrane pixel
    assert object_ids(lab).size > 20  # many separate profiles per section
