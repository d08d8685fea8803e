"""A stand-in decoder for automatic-segmentation tests: real windows, grid, filters and
NMS around it, without the cost (or the arbitrariness) of random-weight masks."""

import cv2
import numpy as np
import torch

from pasam_plugins.modeling import DecoderOutput
from pasam_plugins.predictor import PASamPredictor


def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


class ComponentModel:
    """A stand-in for the decoder: each point prompt (or box prompt: its centre) gets the
    connected foreground component of the window it lies on (bright discs on a dark image)
    as sharp low-res logits, with predicted IoU 0.95 on an object and 0.3 on background,
    and a constant uncertainty map whose value is the object's brightness / 255."""

    def __init__(self, predictor: PASamPredictor) -> None:
        self.pred = predictor
        self.crop: np.ndarray | None = None
        self.calls = 0
        real_set = predictor.set_image

        def set_image(image, *a, **k):
            self.crop = np.asarray(image)
            return real_set(image, *a, **k)

        predictor.set_image = set_image  # type: ignore[method-assign]
        predictor.model.decode = self.decode  # type: ignore[method-assign]

    def decode(
        self, features, *, guide, multimask_output, use_adapter, points=None, boxes=None, **_
    ):
        self.calls += 1
        pred = self.pred
        model = pred.model
        gray = self.crop[..., 0] if self.crop.ndim == 3 else self.crop
        n, comps = cv2.connectedComponents((gray > 60).astype(np.uint8), connectivity=8)
        if points is not None:
            coords = points[0][:, 0, :].double().cpu().numpy()
        else:  # box prompts: their centres
            b = boxes.double().cpu().numpy()
            coords = (b[:, :2] + b[:, 2:]) / 2.0
        xy = coords / pred.transform.target_length * max(gray.shape)  # input -> crop pixels
        img, low = model.img_size, 4 * model.embedding_grid
        ih, iw = pred.input_size
        masks, ious, uncs = [], [], []
        for x, y in xy:
            c = comps[min(int(y), gray.shape[0] - 1), min(int(x), gray.shape[1] - 1)]
            m = comps == c if c > 0 else np.zeros(gray.shape, bool)
            full = np.zeros((img, img), np.float32)
            full[:ih, :iw] = cv2.resize(
                m.astype(np.float32), (iw, ih), interpolation=cv2.INTER_LINEAR
            )
            lr = cv2.resize(full, (low, low), interpolation=cv2.INTER_AREA)
            masks.append((lr - 0.5) * 40.0)
            ious.append(0.95 if c > 0 else 0.3)
            uncs.append(float(gray[m].mean()) / 255.0 if c > 0 else 0.0)
        b = len(masks)
        c_out = 1 if (use_adapter and model.has_adapter) else 3
        m_t = torch.as_tensor(np.stack(masks))[:, None].repeat(1, c_out, 1, 1)
        iou_t = torch.as_tensor(ious)[:, None].repeat(1, c_out)
        unc_t = None
        if use_adapter and model.has_adapter:
            g = model.embedding_grid
            unc_t = torch.as_tensor(uncs, dtype=torch.float32)[:, None, None, None].expand(
                b, 1, g, g
            )
        return DecoderOutput(masks=m_t, iou_predictions=iou_t, uncertainty=unc_t)
