"""Label Studio formats (pasam_plugins.lsformat): brush RLE byte-identical to label-studio-sdk's
encoder, a decoder that agrees with the SDK's (also on literal runs, as Label Studio's frontend
writes them), and region <-> mask conversion."""

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from pasam_plugins.lsformat import (
    FormatError,
    decode_rle,
    encode_rle_bytes,
    mask_region,
    mask_to_rle,
    mask_to_rle_array,
    region_mask,
)


def _masks():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :200]
    yield np.zeros((5, 7), bool)
    yield np.ones((300, 200), bool)
    yield rng.random((64, 48)) > 0.5
    yield rng.random((120, 130)) > 0.95
    yield (yy - 150) ** 2 + (xx - 90) ** 2 < 80**2
    one = np.zeros((129, 128), bool)
    one[0, 0] = True
    yield one
    yield np.ones((256, 300), bool)  # one run of 4 * 76800 bytes: several 2**16 chunks


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_mask_rle_matches_the_sdk_and_decodes(mask):
    ours = mask_to_rle(mask)
    assert ours == brush.mask2rle(mask.astype(np.uint8) * 255)
    decoded = brush.decode_rle(ours).reshape(*mask.shape, 4)
    np.testing.assert_array_equal(decoded[..., 3] > 0, mask)
    assert set(np.unique(decoded)) <= {0, 255}
    # our decoder reads the same values
    np.testing.assert_array_equal(decode_rle(ours), brush.decode_rle(ours))
    # the array form (what the backend's JSON writer takes) holds the same bytes
    arr = mask_to_rle_array(mask)
    assert arr.dtype == np.uint8 and arr.tolist() == ours


@pytest.mark.parametrize(
    "n", [1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 65536 + 300, 2 * 65536 + 1]
)
def test_run_length_boundaries_match_the_sdk(n):
    arr = np.concatenate([np.full(n, 3, np.uint8), np.array([1, 2, 2, 7], np.uint8)])
    assert encode_rle_bytes(arr) == brush.encode_rle(arr)
    np.testing.assert_array_equal(decode_rle(encode_rle_bytes(arr)), arr)


def test_arbitrary_bytes_match_the_sdk():
    arr = np.random.default_rng(1).integers(0, 5, 3000).astype(np.uint8)
    assert encode_rle_bytes(arr) == brush.encode_rle(arr)
    np.testing.assert_array_equal(decode_rle(encode_rle_bytes(arr)), arr)


def _pack_literal_stream(values: list[int]) -> list[int]:
    """An rle-pack stream of literal runs (repeat flag 0), as Label Studio's frontend writes
    for pixels that change often: header, then runs of up to 8 literal values."""
    bits = f"{len(values):032b}" + f"{8 - 1:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    for start in range(0, len(values), 8):
        chunk = values[start : start + 8]
        bits += "0" + "00" + f"{len(chunk) - 1:03b}" + "".join(f"{v:08b}" for v in chunk)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_literal_runs_decode_as_the_sdk_decodes_them():
    values = np.random.default_rng(2).integers(0, 256, 45).tolist()
    stream = _pack_literal_stream(values)
    np.testing.assert_array_equal(brush.decode_rle(stream), values)
    np.testing.assert_array_equal(decode_rle(stream), values)


def test_broken_streams_are_format_errors():
    rle = mask_to_rle(np.ones((4, 4), bool))
    with pytest.raises(FormatError, match="truncated"):
        decode_rle(rle[:3])
    with pytest.raises(FormatError, match="truncated"):
        decode_rle(mask_to_rle(np.random.default_rng(0).random((9, 9)) > 0.5)[:12])
    with pytest.raises(FormatError, match="0..255"):
        decode_rle([1, 2, 300])
    with pytest.raises(FormatError, match="integers"):
        decode_rle(["a", "b"])


def test_region_round_trip_keeps_mask_size_label_and_meta():
    mask = np.zeros((37, 53), bool)
    mask[5:20, 10:40] = True
    region = mask_region(
        mask,
        label="Cell",
        from_name="tag",
        to_name="image",
        score=0.8123456789,
        meta={"text": "IoU 0.81"},
    )
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Cell"]
    assert (region["original_width"], region["original_height"]) == (53, 37)
    assert region["score"] == 0.812346 and region["meta"] == {"text": "IoU 0.81"}
    np.testing.assert_array_equal(region_mask(region), mask)
    # the SDK reads the region the same way
    flat = brush.decode_rle(region["value"]["rle"]).reshape(37, 53, 4)
    np.testing.assert_array_equal(flat[..., 3] > 0, mask)


def test_region_of_the_wrong_size_or_without_rle_is_refused():
    region = mask_region(np.ones((10, 10), bool), label="x", from_name="a", to_name="b")
    with pytest.raises(FormatError, match="expected 9x10x4"):
        region_mask({**region, "original_height": 9})
    with pytest.raises(FormatError, match="RLE format"):
        region_mask({**region, "value": {"format": "polygon"}})
    with pytest.raises(FormatError, match="original_width"):
        region_mask({"value": region["value"]})


def test_non_2d_mask_is_rejected():
    with pytest.raises(ValueError):
        mask_to_rle(np.zeros((2, 2, 2), bool))
