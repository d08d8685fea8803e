"""Overlay images: mask fill and outline, PA-SAM's uncertainty heat map, mined points.

Drawing uses OpenCV and numpy (no figure, exact pixel size). The uncertainty colour map is
matplotlib's ``magma``. Mined positive points are green ``+`` crosses, mined negative points
red ``x`` crosses (colour *and* shape differ, so they stay distinguishable for colour-blind
users), each with a dark outline so they show on any background. A legend is drawn in the
top-left corner when the image is large enough.
"""

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

MASK_COLOR = (0, 200, 255)  # RGB cyan
POSITIVE_COLOR = (40, 220, 40)  # RGB green
NEGATIVE_COLOR = (235, 40, 40)  # RGB red
BOX_COLOR = (255, 215, 0)  # RGB yellow
PROMPT_COLORS = {1: (255, 255, 255), 0: (255, 0, 255)}  # user points: white fg, magenta bg
OUTLINE_COLOR = (0, 0, 0)
MIN_LEGEND_SIDE = 160


@lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    """256x3 uint8 lookup table of a matplotlib colour map."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.linspace(0.0, 1.0, 256))
    return (rgba[:, :3] * 255.0).round().astype(np.uint8)


def colorize_uncertainty(uncertainty: np.ndarray, *, cmap: str = "magma") -> np.ndarray:
    """Map an HxW uncertainty map in [0, 1] to HxWx3 uint8 RGB (NaN counts as 0).

    Values are not rescaled: 0 is the colour map's low end and 1 its high end, so maps of
    different images are comparable.
    """
    u = np.asarray(uncertainty, dtype=np.float32)
    if u.ndim != 2:
        raise ValueError(f"uncertainty must be HxW, got shape {u.shape}")
    u = np.nan_to_num(u, nan=0.0, posinf=1.0, neginf=0.0)
    idx = (np.clip(u, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return _lut(cmap)[idx]


def _check_inputs(
    image: np.ndarray,
    mask: np.ndarray | None,
    uncertainty: np.ndarray | None,
    points: np.ndarray | None,
    labels: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"image must be HxWx3 (or HxW) uint8, got shape {img.shape} dtype {img.dtype}"
        )
    hw = img.shape[:2]
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.shape != hw:
            raise ValueError(f"mask shape {m.shape} does not match the image's {hw}")
        m = m.astype(bool)
    u = None
    if uncertainty is not None:
        u = np.asarray(uncertainty, dtype=np.float32)
        if u.shape != hw:
            raise ValueError(f"uncertainty shape {u.shape} does not match the image's {hw}")
    if points is None:
        pts = np.zeros((0, 2), np.float32)
        lab = np.zeros((0,), np.int64)
    else:
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        if labels is None:
            raise ValueError("mined_labels are needed with mined_points")
        lab = np.asarray(labels).reshape(-1).astype(np.int64)
        if len(lab) != len(pts):
            raise ValueError(f"{len(pts)} mined points but {len(lab)} labels")
    return img, m, u, pts, lab


def _draw_marker(canvas: np.ndarray, xy: tuple[int, int], color, kind: int, size: int) -> None:
    import cv2

    thick = max(1, size // 6)
    cv2.drawMarker(canvas, xy, OUTLINE_COLOR, kind, size + 2, thick + 2, cv2.LINE_AA)
    cv2.drawMarker(canvas, xy, color, kind, size, thick, cv2.LINE_AA)


def _draw_legend(
    canvas: np.ndarray,
    items: list[tuple[str, str, tuple[int, int, int]]],
    avoid: np.ndarray | None = None,
) -> None:
    """Draw the legend in the corner that hides the fewest of the ``avoid`` (x, y) points."""
    import cv2

    h, w = canvas.shape[:2]
    scale = max(0.35, min(h, w) / 900.0)
    thick = 1 if scale < 0.8 else 2
    line_h = int(22 * scale / 0.5)
    pad = max(4, line_h // 4)
    text_w = max(
        cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for _, t, _ in items
    )
    box_w = pad * 3 + line_h + text_w
    box_h = pad * 2 + line_h * len(items)
    corners = [(pad, pad), (w - box_w - pad, pad), (pad, h - box_h - pad)]
    corners.append((w - box_w - pad, h - box_h - pad))
    pts = np.zeros((0, 2)) if avoid is None else np.asarray(avoid, float).reshape(-1, 2)

    def hidden(corner: tuple[int, int]) -> int:
        cx0, cy0 = corner
        inside = (
            (pts[:, 0] >= cx0 - pad)
            & (pts[:, 0] <= cx0 + box_w + pad)
            & (pts[:, 1] >= cy0 - pad)
            & (pts[:, 1] <= cy0 + box_h + pad)
        )
        return int(inside.sum())

    x0, y0 = min(corners, key=hidden)  # first corner (top-left) wins ties
    region = canvas[y0 : y0 + box_h, x0 : x0 + box_w]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)
    marker_kinds = {"pos": cv2.MARKER_CROSS, "neg": cv2.MARKER_TILTED_CROSS}
    for i, (kind, text, color) in enumerate(items):
        cy = y0 + pad + line_h * i + line_h // 2
        cx = x0 + pad + line_h // 2
        if kind in marker_kinds:
            _draw_marker(canvas, (cx, cy), color, marker_kinds[kind], int(line_h * 0.8))
        elif kind == "heat":
            strip = _lut("magma")[np.linspace(0, 255, line_h).astype(int)]
            y_top = cy - line_h // 4
            canvas[y_top : y_top + line_h // 2, cx - line_h // 2 : cx - line_h // 2 + line_h] = (
                strip[None]
            )
        elif kind == "rect":
            r = line_h // 3
            cv2.rectangle(canvas, (cx - r, cy - r), (cx + r, cy + r), color, max(1, thick))
        elif kind == "dot":
            cv2.circle(canvas, (cx, cy), line_h // 4 + 1, OUTLINE_COLOR, -1, cv2.LINE_AA)
            cv2.circle(canvas, (cx, cy), line_h // 4, color, -1, cv2.LINE_AA)
        else:
            r = line_h // 3
            cv2.rectangle(canvas, (cx - r, cy - r), (cx + r, cy + r), color, -1)
        base = cy + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] // 2
        cv2.putText(
            canvas,
            text,
            (x0 + pad * 2 + line_h, base),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )


def overlay(
    image_rgb_uint8: np.ndarray,
    mask: np.ndarray | None,
    uncertainty: np.ndarray | None = None,
    mined_points: np.ndarray | None = None,
    mined_labels: np.ndarray | None = None,
    *,
    mask_alpha: float = 0.35,
    heat_alpha: float = 0.75,
    legend: bool = True,
    marker_size: int | None = None,
    box: np.ndarray | None = None,
    prompt_points: np.ndarray | None = None,
    prompt_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a prediction on its image.

    Arguments:
      image_rgb_uint8 (np.ndarray): HxWx3 uint8 RGB (HxW grayscale is accepted).
      mask (np.ndarray or None): HxW bool (or 1xHxW); filled translucent cyan with an opaque
        outline.
      uncertainty (np.ndarray or None): HxW float in [0, 1]; blended as a magma heat map
        whose opacity grows with the uncertainty (certain pixels keep the image visible).
      mined_points (np.ndarray or None): Nx2 (x, y) image pixels.
      mined_labels (np.ndarray or None): N, 1 = positive (green ``+``), 0 = negative (red ``x``).
      mask_alpha, heat_alpha (float): fill / maximum heat-map opacity.
      legend (bool): draw a legend (only on images at least 160 px on the short side).
      marker_size (int or None): cross size in pixels; default ~1/30 of the short side.
      box (np.ndarray or None): the user's box prompt (x0, y0, x1, y1), drawn in yellow.
      prompt_points (np.ndarray or None): the user's Mx2 (x, y) point prompts, drawn as
        outlined dots: white = foreground (label 1), magenta = background (label 0).
      prompt_labels (np.ndarray or None): M labels of ``prompt_points`` (default all 1).

    Returns:
      np.ndarray: HxWx3 uint8 RGB, a new array.
    """
    import cv2

    img, m, u, pts, lab = _check_inputs(
        image_rgb_uint8, mask, uncertainty, mined_points, mined_labels
    )
    canvas = img.astype(np.float32)
    if u is not None:
        heat = colorize_uncertainty(u).astype(np.float32)
        a = (np.clip(np.nan_to_num(u, nan=0.0), 0.0, 1.0) * heat_alpha)[..., None]
        canvas = canvas * (1.0 - a) + heat * a
    if m is not None and m.any():
        fill = np.asarray(MASK_COLOR, np.float32)
        canvas[m] = canvas[m] * (1.0 - mask_alpha) + fill * mask_alpha
    out = np.ascontiguousarray(np.clip(canvas.round(), 0, 255).astype(np.uint8))
    h, w = out.shape[:2]
    if m is not None and m.any():
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, MASK_COLOR, max(1, min(h, w) // 300), cv2.LINE_8)
    size = marker_size or max(5, min(h, w) // 30)
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(round(v)) for v in b)
        thick = max(1, min(h, w) // 250)
        cv2.rectangle(out, (x0, y0), (x1, y1), OUTLINE_COLOR, thick + 2, cv2.LINE_8)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOR, thick, cv2.LINE_8)
    user_pts = np.zeros((0, 2)) if prompt_points is None else np.asarray(prompt_points, float)
    user_pts = user_pts.reshape(-1, 2)
    user_lab = (
        np.ones(len(user_pts), np.int64)
        if prompt_labels is None
        else np.asarray(prompt_labels).reshape(-1).astype(np.int64)
    )
    if len(user_lab) != len(user_pts):
        raise ValueError(f"{len(user_pts)} prompt points but {len(user_lab)} labels")
    radius = max(3, size // 3)
    for (x, y), label in zip(pts, lab, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        xy = (int(round(float(x))), int(round(float(y))))
        if label == 1:
            _draw_marker(out, xy, POSITIVE_COLOR, cv2.MARKER_CROSS, size)
        else:
            _draw_marker(out, xy, NEGATIVE_COLOR, cv2.MARKER_TILTED_CROSS, size)
    for (x, y), label in zip(user_pts, user_lab, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        xy = (int(round(float(x))), int(round(float(y))))
        cv2.circle(out, xy, radius + 1, OUTLINE_COLOR, -1, cv2.LINE_AA)
        cv2.circle(out, xy, radius, PROMPT_COLORS[1 if label == 1 else 0], -1, cv2.LINE_AA)
    if legend and min(h, w) >= MIN_LEGEND_SIDE:
        items: list[tuple[str, str, tuple[int, int, int]]] = []
        if box is not None:
            items.append(("rect", "box prompt", BOX_COLOR))
        if (user_lab == 1).any():
            items.append(("dot", "point prompt (fg)", PROMPT_COLORS[1]))
        if (user_lab != 1).any():
            items.append(("dot", "point prompt (bg)", PROMPT_COLORS[0]))
        if m is not None:
            items.append(("mask", "mask", MASK_COLOR))
        if u is not None:
            items.append(("heat", "uncertainty", (0, 0, 0)))
        if len(pts):
            items.append(("pos", "mined positive", POSITIVE_COLOR))
            items.append(("neg", "mined negative", NEGATIVE_COLOR))
        if items:
            # user prompts matter most, then mined points, then the box outline
            avoid = [user_pts, user_pts, user_pts, pts[:, :2], pts[:, :2]]
            if box is not None:  # box corners and edge midpoints
                bx0, by0, bx1, by1 = np.asarray(box, float).reshape(-1)
                xs, ys = (bx0, (bx0 + bx1) / 2, bx1), (by0, (by0 + by1) / 2, by1)
                avoid.append(np.array([[x, y] for x in xs for y in ys]))
            _draw_legend(out, items, np.concatenate(avoid, axis=0))
    return out


def save_png(path: str | Path, rgb_or_gray: np.ndarray) -> Path:
    """Write a uint8 (HxW or HxWx3) array as PNG, creating parent directories."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb_or_gray)).save(path, format="PNG")
    return path


def save_overlay_png(
    path: str | Path,
    image_rgb_uint8: np.ndarray,
    mask: np.ndarray | None,
    uncertainty: np.ndarray | None = None,
    mined_points: np.ndarray | None = None,
    mined_labels: np.ndarray | None = None,
    **kwargs,
) -> Path:
    """:func:`overlay` written to ``path`` as PNG; returns the path."""
    img = overlay(image_rgb_uint8, mask, uncertainty, mined_points, mined_labels, **kwargs)
    return save_png(path, img)


#: outline colour of the objects a person should review first (automatic segmentation)
REVIEW_COLOR = (255, 40, 40)


def instances_overlay(
    image_rgb_uint8: np.ndarray,
    labels: np.ndarray,
    *,
    review: Sequence[int] = (),
    alpha: float = 0.4,
) -> np.ndarray:
    """A label image drawn on its image: every object filled in its own colour with a
    white outline; the labels in ``review`` (the most uncertain objects) outlined thickly
    in red. Returns HxWx3 uint8 RGB."""
    import cv2

    img, *_ = _check_inputs(image_rgb_uint8, None, None, None, None)
    lab = np.asarray(labels)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"labels of shape {lab.shape} do not match the image {img.shape[:2]}")
    top = int(lab.max()) if lab.size else 0
    rng = np.random.default_rng(0)
    colors = np.concatenate(
        [np.zeros((1, 3)), rng.uniform(60, 255, (max(top, 0), 3))], axis=0
    ).astype(np.float32)
    canvas = img.astype(np.float32)
    fg = lab > 0
    canvas[fg] = canvas[fg] * (1.0 - alpha) + colors[lab[fg]] * alpha
    out = np.ascontiguousarray(np.clip(canvas.round(), 0, 255).astype(np.uint8))
    edges = np.zeros(lab.shape, bool)
    edges[:-1] |= lab[:-1] != lab[1:]
    edges[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    out[edges & fg] = (255, 255, 255)
    thick = max(1, min(lab.shape) // 250)
    for value in review:
        m = (lab == int(value)).astype(np.uint8)
        if m.any():
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, REVIEW_COLOR, thick + 1, cv2.LINE_8)
    return out
