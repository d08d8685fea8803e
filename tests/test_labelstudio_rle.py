"""Brush RLE: byte-identical to label-studio-sdk's encoder, decodable by its decoder."""

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from label_studio_backend.rle import encode_rle_bytes, mask_to_rle


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


@pytest.mark.parametrize("n", [1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 65536 + 300, 2 * 65536 + 1])
def test_run_length_boundaries_match_the_sdk(n):
    arr = np.concatenate([np.full(n, 3, np.uint8), np.array([1, 2, 2, 7], np.uint8)])
    assert encode_rle_bytes(arr) == brush.encode_rle(arr)


def test_arbitrary_bytes_match_the_sdk():
    arr = np.random.default_rng(1).integers(0, 5, 3000).astype(np.uint8)
    assert encode_rle_bytes(arr) == brush.encode_rle(arr)


def test_non_2d_mask_is_rejected():
    with pytest.raises(ValueError):
        mask_to_rle(np.zeros((2, 2, 2), bool))
