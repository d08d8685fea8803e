"""Small validators for request fields that several endpoints share."""

import re

_PROJECT_ID = re.compile(r"([0-9]{1,18})(?:\.[0-9]{1,30})?")


def project_id(value: object) -> int | None:
    """A Label Studio project id from a request: an integer, a ``{"id": ...}`` object, or a
    string of ASCII digits with an optional ``.<timestamp>`` suffix (``"12.1700000000"``, as
    ``/setup``, ``/predict`` and ``/train`` send it). None for anything else: other Unicode
    digits (``"²"``), signs, more than 18 digits, booleans, floats."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 1 << 63 else None
    if isinstance(value, str):
        m = _PROJECT_ID.fullmatch(value)
        return int(m.group(1)) if m else None
    return None
