"""Label Studio's formats, in one place: brush RLE (encode and decode) and the conversion
between brush regions and masks.

Used by the Label Studio backend (predictions as brush regions) and by the training data
reader (:func:`pasam_plugins.train.datasets.labelstudio_samples`: annotations as masks).

**Brush RLE** is label-studio-sdk's ``converter.brush.mask2rle`` (the thi-ng rle-pack
layout Label Studio's frontend decodes): the mask is repeated into 4 RGBA bytes per pixel
and run-length coded with word size 8 and run-length field sizes (3, 4, 8, 16). The SDK
builds the bit string with Python string concatenation, which takes about a second for a
noisy 512x512 mask; :func:`mask_to_rle` produces byte-for-byte the same output with numpy,
and :func:`decode_rle` reads any rle-pack stream (also the frontend's, which uses literal
runs) without the SDK (``tests/test_lsformat.py`` checks both against the SDK).

**Regions** are dicts as Label Studio stores them in ``result`` lists: a ``brushlabels``
region has ``original_width``/``original_height`` and ``value: {"format": "rle", "rle":
[...], "brushlabels": [label]}``.
"""

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np


class FormatError(ValueError):
    """Data that is not valid Label Studio brush data; the message says why."""


_RLE_SIZES = (3, 4, 8, 16)
_MAX_RUN = 1 << 16


def _header(num: int) -> tuple[int, int]:
    """The stream header as (code, bit count): 32-bit length, word size - 1 (5 bits), each
    run-length field size - 1 (4 bits each)."""
    if not 0 <= num < 1 << 32:
        raise ValueError(f"brush RLE holds at most 2**32 - 1 values, got {num}")
    code = (num << 5) | (8 - 1)
    for size in _RLE_SIZES:
        code = (code << 4) | (size - 1)
    return code, 32 + 5 + 4 * len(_RLE_SIZES)


def _runs(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1D array."""
    change = np.flatnonzero(arr[1:] != arr[:-1])
    ends = np.append(change, arr.size - 1)
    return np.diff(np.append(-1, ends)).astype(np.int64), arr[ends].astype(np.int64)


# token forms by category: 0 = 0 00 000 value (length 1), 1 = 1 00 LLL value (<= 8),
# 2 = 1 01 LLLL value (<= 16), 3 = 1 10 L*8 value (<= 256), 4 = 1 11 L*16 value (long runs)
_PREFIX = np.array(
    [0, 1 << 13, (1 << 14) | (1 << 12), (1 << 18) | (2 << 16), (1 << 26) | (3 << 24)], np.uint64
)
_BITS = np.array([14, 14, 15, 19, 27], np.uint64)


def _tokens(lengths: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes and bit counts of runs (lengths, uint8 values), in the SDK's layout."""
    long_run = lengths > 256  # such a run uses the 16-bit form for all its tokens
    if lengths.size and lengths.max() > _MAX_RUN:
        # runs longer than 2**16 are cut into 2**16 chunks first (as the SDK's while loop):
        # the first `extra` tokens of a run are full chunks, the last the remainder
        extra = np.where(lengths > _MAX_RUN, -(-(lengths - _MAX_RUN) // _MAX_RUN), 0)
        reps = extra + 1
        starts = np.cumsum(reps) - reps
        pos = np.arange(int(reps.sum())) - np.repeat(starts, reps)
        full = pos < np.repeat(extra, reps)
        lengths = np.where(full, _MAX_RUN, np.repeat(lengths - extra * _MAX_RUN, reps))
        vals = np.repeat(vals, reps)
        long_run = np.repeat(long_run, reps)
    cat = np.where(long_run, 4, (lengths > 1).astype(np.int8) + (lengths > 8) + (lengths > 16))
    n = (lengths.astype(np.uint64) - np.uint64(1)) << np.uint64(8)  # 0 for category 0
    return _PREFIX[cat] | n | vals.astype(np.uint64), _BITS[cat]


def _encode_runs(num: int, lengths: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Pack runs (lengths, uint8 values) of a ``num``-long array into the SDK's bit layout
    (the bytes as a uint8 array)."""
    head_code, head_bits = _header(num)
    code, nbits = _tokens(lengths, vals)
    code = np.concatenate([np.array([head_code], np.uint64), code])
    nbits = np.concatenate([np.array([head_bits], np.uint64), nbits])
    # the bit stream as big-endian 64-bit words: each token (<= 53 bits) lands in the word
    # of its first bit and, when it straddles a boundary, its tail in the next word. Tokens
    # never share bits, so summing a word's pieces is OR-ing them.
    end_bits = np.cumsum(nbits)
    offset = end_bits - nbits
    word = offset >> np.uint64(6)
    end = (offset & np.uint64(63)) + nbits  # end of the token within its first word, <= 117
    over = end > 64
    head = np.where(
        over,
        code >> np.where(over, end - np.uint64(64), 0).astype(np.uint64),
        code << np.where(over, 0, np.uint64(64) - end).astype(np.uint64),
    )
    total = int(end_bits[-1])
    nbytes = total // 8 + 1  # the SDK always appends 8 - total % 8 zero bits
    words = np.zeros(-(-nbytes // 8), np.uint64)
    first = np.flatnonzero(np.diff(word, prepend=np.uint64(1) + word[0]) != 0)
    words[word[first]] = np.add.reduceat(head, first)
    tail = np.flatnonzero(over)
    words[word[tail] + np.uint64(1)] += code[tail] << (np.uint64(128) - end[tail])
    return words.astype(">u8").view(np.uint8)[:nbytes]


def encode_rle_bytes(values: np.ndarray) -> list[int]:
    """RLE of a 1D uint8 array, identical to ``label_studio_sdk.converter.brush.encode_rle``
    with its defaults (word size 8, run sizes 3/4/8/16)."""
    arr = np.ascontiguousarray(values, dtype=np.uint8).ravel()
    if arr.size == 0:
        return _encode_runs(0, np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist()
    lengths, vals = _runs(arr)
    return _encode_runs(arr.size, lengths, vals).tolist()


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """HxW mask (bool or 0/255 uint8) -> Label Studio brush RLE (RGBA = 255 where set), the
    same bytes as ``label_studio_sdk.converter.brush.mask2rle(mask * 255)``."""
    return mask_to_rle_array(mask).tolist()


def mask_to_rle_array(mask: np.ndarray) -> np.ndarray:
    """:func:`mask_to_rle` as a uint8 array (what ``orjson`` with ``OPT_SERIALIZE_NUMPY``
    writes as the same JSON list without a Python int per byte)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if m.size == 0:
        return _encode_runs(0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    flat = np.ascontiguousarray(m).ravel() > 0
    lengths, vals = _runs(flat.view(np.uint8))
    # the SDK repeats every pixel into 4 RGBA bytes: runs are 4x longer, values 0/255
    return _encode_runs(flat.size * 4, lengths * 4, vals * 255)


# ---------------------------------------------------------------------------- decoding
def decode_rle(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    """Brush RLE -> the flat uint8 array it encodes (for a mask: H x W x 4 RGBA values).

    Reads the header (32-bit count, 5-bit word size, four 4-bit run-length field sizes), then
    runs: a repeat flag, a 2-bit field-size index, the run length - 1, then one value
    (repeat) or that many values (literal). Raises :class:`FormatError` for a stream that is
    truncated, holds values wider than 8 bits or more than 2**31 values."""
    try:
        data = np.asarray(
            rle if not isinstance(rle, bytes | bytearray) else np.frombuffer(rle, np.uint8)
        )
        if data.ndim != 1 or (data.size and not np.issubdtype(data.dtype, np.integer)):
            raise TypeError
        if data.size and (data.min() < 0 or data.max() > 255):
            raise FormatError("brush RLE values must be bytes (0..255)")
        raw = data.astype(np.uint8)
    except (TypeError, ValueError) as e:
        if isinstance(e, FormatError):
            raise
        raise FormatError("brush RLE must be a list of integers") from None
    nbits = raw.size * 8
    # word64[b]: the 8 bytes from byte b on as one big-endian integer, so that any field of
    # up to 57 bits starting at bit p is (word64[p >> 3] << (p & 7)) >> (64 - n)
    padded = np.concatenate([raw, np.zeros(8, np.uint8)])
    word64 = (
        np.lib.stride_tricks.sliding_window_view(padded, 8)[: raw.size + 1]
        .copy()
        .view(">u8")
        .ravel()
        .astype(np.uint64)
        .tolist()
    )
    mask64 = (1 << 64) - 1
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > nbits:
            raise FormatError("brush RLE is truncated")
        v = ((word64[pos >> 3] << (pos & 7)) & mask64) >> (64 - n)
        pos += n
        return v

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if word > 8:
        raise FormatError(f"brush RLE with {word}-bit values (masks use 8)")
    if num > 1 << 31:
        raise FormatError(f"brush RLE claims {num} values")
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        head = read(3)  # repeat flag and field-size index
        j = min(i + 1 + read(sizes[head & 3]), num)
        if head >> 2:
            v = read(word)
            if v:
                out[i:j] = v
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


# ---------------------------------------------------------------------------- regions
def region_mask(region: dict[str, Any]) -> np.ndarray:
    """A ``brushlabels`` region (RLE format) -> HxW bool mask (its alpha channel).

    The size comes from ``original_height`` x ``original_width``; raises
    :class:`FormatError` when the region has no RLE or the RLE does not hold that many
    RGBA pixels."""
    if not isinstance(region, dict):
        raise FormatError("a region must be a JSON object")
    value = region.get("value")
    if not isinstance(value, dict) or value.get("format", "rle") != "rle" or "rle" not in value:
        raise FormatError("not a brush region in RLE format (value.rle)")
    try:
        h, w = int(region["original_height"]), int(region["original_width"])
    except (KeyError, TypeError, ValueError):
        raise FormatError("brush region without original_width/original_height") from None
    if h <= 0 or w <= 0:
        raise FormatError(f"brush region of size {w}x{h}")
    flat = decode_rle(value["rle"])
    if flat.size != h * w * 4:
        raise FormatError(f"brush RLE holds {flat.size} values, expected {h}x{w}x4 = {h * w * 4}")
    return flat.reshape(h, w, 4)[..., 3] > 0


def is_brush_region(region: object) -> bool:
    """A ``brushlabels`` region (any letter case of the type)."""
    return isinstance(region, dict) and str(region.get("type", "")).lower() == "brushlabels"


def region_labels(region: dict[str, Any]) -> list[str]:
    """The label names of a brush region (``value.brushlabels``)."""
    value = region.get("value") or {}
    names = value.get("brushlabels") if isinstance(value, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else []


def mask_region(mask: np.ndarray, **fields: Any) -> dict[str, Any]:
    """An HxW mask -> a ``brushlabels`` region of that size (see :func:`rle_region` for the
    keyword arguments)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    return rle_region(mask_to_rle(m), m.shape[1], m.shape[0], **fields)


def rle_region(
    rle: "list[int] | np.ndarray",
    width: int,
    height: int,
    *,
    label: str,
    from_name: str,
    to_name: str,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
    region_id: str | None = None,
    readonly: bool = False,
) -> dict[str, Any]:
    """A ``brushlabels`` region from an encoded mask (:func:`mask_to_rle`) of ``width`` x
    ``height`` pixels, as Label Studio stores it. ``score`` is the region's score (shown next
    to it), ``meta`` its meta data (``meta.text`` is shown in the region's details)."""
    region: dict[str, Any] = {
        "id": region_id or uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }
    if score is not None:
        region["score"] = round(float(score), 6)
    region["readonly"] = bool(readonly)
    if meta is not None:
        region["meta"] = meta
    return region
