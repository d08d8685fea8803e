"""Checkpoint formats: official SAM, official PA-SAM decoder, merged, and our safetensors format."""

import json
import os
import pickle

import pytest
import torch

from pasam_plugins import checkpoint as ckpt
from pasam_plugins.checkpoint import CheckpointError, load_model, read_metadata, save_checkpoint
from pasam_plugins.modeling import build_pasam
from pasam_plugins.testing import make_test_model


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _sam_state_dict(model):
    return {
        k: v
        for k, v in model.state_dict().items()
        if not k.startswith(("mask_decoder.guiding_conv", "mask_decoder.prompt_adapter"))
    }


def test_our_format_round_trip_with_metadata(tmp_path):
    model = make_test_model(seed=1, guide_mode="image")
    path = save_checkpoint(model, tmp_path / "a.safetensors", metadata={"provenance": {"steps": 7}})
    meta = read_metadata(path)
    assert meta["variant"] == "vit_tiny" and meta["guide_mode"] == "image"
    assert meta["has_adapter"] is True and meta["contents"] == "full"
    assert meta["provenance"] == {"steps": 7} and meta["version"]
    loaded = load_model(path)
    assert loaded.guide_mode == "image" and loaded.has_adapter
    _assert_same_weights(model, loaded)
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600
    origin = loaded.origin
    assert origin.metadata["provenance"] == {"steps": 7} and origin.file == str(path)
    assert origin.kind == "pasam-full" and origin.complete_base == str(path)
    assert origin.variant == "vit_tiny" and origin.guide_mode == "image" and origin.has_adapter


def test_origin_of_official_files_and_float16_packing(tmp_path):
    model = make_test_model(seed=2)
    sam_path = tmp_path / "sam_vit_tiny.pth"
    torch.save(_sam_state_dict(model), sam_path)
    sam = load_model(sam_path)
    assert sam.origin.kind == "official-sam" and sam.origin.complete_base == str(sam_path)
    assert not sam.origin.untrained and sam.origin.metadata == {}
    # float16 storage halves the file and loads back to float32 within float16 rounding
    full = save_checkpoint(model, tmp_path / "f32.safetensors")
    half = save_checkpoint(model, tmp_path / "f16.safetensors", dtype=torch.float16)
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    assert read_metadata(half)["stored_dtype"] == "float16"
    back = load_model(half)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, k
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), k
    # an adapter file naming its base relative to itself loads from another working directory
    adapter = save_checkpoint(
        model,
        tmp_path / "sub" / "adapter.safetensors",
        adapter_only=True,
        metadata={"base_checkpoint": "../f32.safetensors"},
    )
    loaded = load_model(adapter)
    _assert_same_weights(model, loaded)
    assert loaded.origin.kind == "pasam-adapter"
    assert loaded.origin.base_file == str((tmp_path / "f32.safetensors").resolve())


def test_adapter_only_file_needs_and_uses_the_base_sam(tmp_path):
    model = make_test_model(seed=1)
    sam_path = tmp_path / "sam_vit_tiny.pth"
    torch.save(_sam_state_dict(model), sam_path)
    path = save_checkpoint(model, tmp_path / "adapter.safetensors", adapter_only=True)
    assert read_metadata(path)["contents"] == "adapter"
    assert os.path.getsize(path) < os.path.getsize(sam_path)
    with pytest.raises(CheckpointError, match="give the SAM checkpoint"):
        load_model(path)
    _assert_same_weights(model, load_model(path, sam_checkpoint=sam_path))
    # a base recorded in the metadata is used while it exists
    path = save_checkpoint(
        model,
        tmp_path / "adapter2.safetensors",
        adapter_only=True,
        metadata={"base_checkpoint": str(sam_path)},
    )
    _assert_same_weights(model, load_model(path))
    sam_path.unlink()
    with pytest.raises(
        CheckpointError, match="its metadata names .*sam_vit_tiny.pth, which does not exist"
    ):
        load_model(path)


def test_official_sam_checkpoint_loads_without_adapter(tmp_path):
    model = make_test_model(seed=2, adapter=False)
    path = tmp_path / "sam_vit_tiny_0000.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert not loaded.has_adapter and loaded.variant == "vit_tiny"
    _assert_same_weights(model, loaded)


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_variant_is_detected_from_shapes(variant):
    with torch.device("meta"):
        sd = build_pasam(variant, adapter=False).state_dict()
    assert ckpt.detect_variant(sd) == variant


def test_official_pasam_decoder_and_merged_checkpoints(tmp_path):
    model = make_test_model(seed=3)
    sam_path = tmp_path / "sam_vit_tiny.pth"
    torch.save(_sam_state_dict(model), sam_path)
    dec_path = tmp_path / "epoch_20.pth"
    torch.save(model.mask_decoder.state_dict(), dec_path)
    keys = json.load(
        open(
            os.path.join(
                os.path.dirname(__file__),
                "..",
                "..",
                "shared",
                "fixtures",
                "official_pasam_decoder_keys.json",
            )
        )
    )["parameters"]
    assert set(model.mask_decoder.state_dict()) == set(keys)
    with pytest.raises(CheckpointError, match="epoch_20.pth.*decoder weights"):
        load_model(dec_path)
    loaded = load_model(dec_path, sam_checkpoint=sam_path)
    assert loaded.has_adapter and loaded.guide_mode == "reference"
    _assert_same_weights(model, loaded)

    merged = tmp_path / "sam_pa_epoch_20.pth"
    torch.save(model.state_dict(), merged)
    _assert_same_weights(model, load_model(merged))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = make_test_model(seed=0, adapter=False).state_dict()
    del sd["mask_decoder.iou_token.weight"]
    sd["mask_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys: mask_decoder.iou_token.weight" in msg
    assert "unexpected keys: mask_decoder.extra.weight" in msg


def test_wrong_shapes_are_named(tmp_path):
    sd = make_test_model(seed=0, adapter=False).state_dict()
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    path = tmp_path / "x.pth"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError, match=r"wrong shapes.*iou_token.weight \(1, 128\) != \(1, 256\)"
    ):
        load_model(path)


def test_decoder_checkpoint_with_missing_adapter_keys(tmp_path):
    sd = make_test_model(seed=0).mask_decoder.state_dict()
    del sd["prompt_adapter.refined_mlp.layers.0.weight"]
    path = tmp_path / "epoch_3.pth"
    torch.save(sd, path)
    with pytest.raises(
        CheckpointError,
        match="official PA-SAM decoder layout.*missing keys: prompt_adapter.refined_mlp.layers.0.weight",
    ):
        load_model(path, sam_checkpoint=path)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not a checkpoint", "not a loadable PyTorch checkpoint.*Error"),
        (None, "not a SAM or PA-SAM checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, expected):
    path = tmp_path / "file.pth"
    if content is None:
        torch.save({"backbone.weight": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(path)


def test_missing_file_and_foreign_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not in the pasam-plugins format"):
        load_model(other)


def test_failed_save_keeps_the_existing_file(tmp_path, monkeypatch):
    model = make_test_model(seed=0)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_test_model(seed=9), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
