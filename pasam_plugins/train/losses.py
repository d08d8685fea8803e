"""PA-SAM's training losses (reference section 5).

``loss = BCE + Dice`` on the output mask (upsampled to the ground truth's size)
``+ BCE + Dice`` on the coarse mask ``Mc`` restricted to ``U < 0.5`` and on the refined mask
``R`` restricted to ``U >= 0.5`` (``U`` detached, upsampled)
``+ BCE`` on the uncertainty map ``U`` (upsampled) against the ground-truth uncertainty band:
the boundary band of the foreground plus that of the background, each a mask minus its
erosion with a 3x3 kernel applied ``max(1, round(0.005 x diagonal))`` times.

All maps are compared in the frame of the ground truth given (the padded 1024-px model input
frame, at any resolution); the band width uses that ground truth's diagonal.
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ..metrics import UNCERTAINTY_BAND_RATIO, erosion_iterations
from ..modeling import DecoderOutput


def band_iterations(height: int, width: int, ratio: float = UNCERTAINTY_BAND_RATIO) -> int:
    """``max(1, round(ratio x diagonal))``."""
    return erosion_iterations(height, width, ratio)


def erode(mask: Tensor, iterations: int) -> Tensor:
    """Binary erosion of Bx1xHxW {0, 1} floats with a 3x3 kernel, ``iterations`` times.

    Equal to one min-filter of size ``2k+1`` (chessboard distance). Pixels outside the image
    are ignored (not background), so the image border does not create a band.
    """
    k = 2 * iterations + 1
    return -F.max_pool2d(-mask, kernel_size=k, stride=1, padding=iterations)


def uncertainty_target(gt: Tensor, iterations: int | None = None) -> Tensor:
    """Ground-truth uncertainty band (Bx1xHxW {0, 1}) of Bx1xHxW {0, 1} masks.

    ``(gt - erode(gt)) | ((1 - gt) - erode(1 - gt))``: the pixels within ``iterations`` of the
    mask's boundary, on both sides.
    """
    gt = (gt > 0.5).float()
    if iterations is None:
        iterations = band_iterations(gt.shape[-2], gt.shape[-1])
    fg_band = gt - erode(gt, iterations)
    bg = 1.0 - gt
    bg_band = bg - erode(bg, iterations)
    return (fg_band + bg_band).clamp_(0.0, 1.0)


def _masked_mean(x: Tensor, weight: Tensor | None) -> Tensor:
    """Per-sample mean of Bx1xHxW ``x`` over ``weight`` (all pixels when None) -> B."""
    if weight is None:
        return x.flatten(1).mean(1)
    w = weight.flatten(1)
    return (x.flatten(1) * w).sum(1) / w.sum(1).clamp_min(1.0)


def bce_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy on logits (optionally over a 0/1 region) -> scalar."""
    x = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return _masked_mean(x, weight).mean()


def dice_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """``1 - (2|P.G| + 1) / (|P| + |G| + 1)`` per sample (soft P = sigmoid), averaged -> scalar.

    With ``weight`` only the pixels of the region count.
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    if weight is not None:
        w = weight.flatten(1).float()
        p, t = p * w, t * w
    num = 2.0 * (p * t).sum(1)
    den = p.sum(1) + t.sum(1)
    return (1.0 - (num + 1.0) / (den + 1.0)).mean()


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    return F.interpolate(x.float(), size, mode="bilinear", align_corners=False)


@dataclass
class LossTerms:
    """The loss and its parts (scalars)."""

    total: Tensor
    mask_bce: Tensor
    mask_dice: Tensor
    coarse: Tensor
    refined: Tensor
    uncertainty: Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in self.__dataclass_fields__}


def pasam_loss(out: DecoderOutput, gt: Tensor, *, band: Tensor | None = None) -> LossTerms:
    """PA-SAM's loss for B prompt sets.

    Arguments:
      out (DecoderOutput): the adapter decoder's output (``masks`` Bx1x256x256 logits,
        ``uncertainty``/``coarse_mask``/``refined_mask`` Bx1x64x64).
      gt (Tensor): Bx1xHxW {0, 1} ground truth in the padded model-input frame.
      band (Tensor): Bx1xHxW precomputed :func:`uncertainty_target` (computed when None).

    Returns:
      LossTerms: ``total`` is the sum of all terms.
    """
    if out.uncertainty is None or out.coarse_mask is None or out.refined_mask is None:
        raise ValueError("pasam_loss needs the adapter's outputs (the model has no adapter)")
    size = (int(gt.shape[-2]), int(gt.shape[-1]))
    gt = gt.float()
    with torch.autocast(device_type=gt.device.type, enabled=False):
        masks = _up(out.masks[:, :1], size)
        mask_bce = bce_loss(masks, gt)
        mask_dice = dice_loss(masks, gt)

        u = _up(out.uncertainty, size).clamp(1e-6, 1.0 - 1e-6)
        certain = (u.detach() < 0.5).float()
        uncertain = 1.0 - certain
        mc = _up(out.coarse_mask, size)
        r = _up(out.refined_mask, size)
        coarse = bce_loss(mc, gt, certain) + dice_loss(mc, gt, certain)
        refined = bce_loss(r, gt, uncertain) + dice_loss(r, gt, uncertain)

        if band is None:
            band = uncertainty_target(gt)
        unc = F.binary_cross_entropy(u, band.float())
    total = mask_bce + mask_dice + coarse + refined + unc
    return LossTerms(total, mask_bce, mask_dice, coarse, refined, unc)


def balanced_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCE with the object and the background weighted equally, per mask -> B.

    Objects a zoomed-out crop or a whole microscopy frame holds are small: the plain mean
    BCE drives every logit to background within a few dozen steps from scratch, after which
    dice has no gradient left. Averaging the positive and the negative pixels separately
    and taking the mean of the two keeps both sides heard.
    """
    x = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    x, t = x.flatten(1), target.float().flatten(1)
    pos = (x * t).sum(1) / t.sum(1).clamp_min(1.0)
    neg = (x * (1 - t)).sum(1) / (1 - t).sum(1).clamp_min(1.0)
    return 0.5 * (pos + neg)


@dataclass
class SamLossTerms:
    """Loss of a decoder without adapter (stage-1 SAM training and the control run)."""

    total: Tensor
    mask_bce: Tensor
    mask_dice: Tensor
    iou_mse: Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in self.__dataclass_fields__}


def sam_loss(
    masks: Tensor, iou_predictions: Tensor, gt: Tensor, *, balanced: bool = True
) -> tuple[SamLossTerms, Tensor]:
    """SAM's training loss for B prompt sets with C candidate masks each.

    Arguments:
      masks (Tensor): BxCxhxw low-res logits (upsampled to the ground truth's size here).
      iou_predictions (Tensor): BxC predicted IoU.
      gt (Tensor): Bx1xHxW {0, 1} ground truth in the model-input frame.
      balanced (bool): per-mask class-balanced BCE (:func:`balanced_bce_loss`) instead of
        the plain mean.

    Returns:
      The terms (means over the batch) and the B indices of the mask that was scored. The
      mask loss is BCE + dice of the best of the C masks (SAM: only the lowest-loss mask of
      an ambiguous prompt is trained); the IoU head learns the true IoU of every mask (MSE).
    """
    size = (int(gt.shape[-2]), int(gt.shape[-1]))
    b, c = masks.shape[:2]
    with torch.autocast(device_type=gt.device.type, enabled=False):
        up = _up(masks, size)  # B x C x H x W
        flat = up.reshape(b * c, 1, *size)
        gt_rep = gt.float().repeat_interleave(c, dim=0)
        if balanced:
            bce = balanced_bce_loss(flat, gt_rep)
        else:
            x = F.binary_cross_entropy_with_logits(flat, gt_rep, reduction="none")
            bce = x.flatten(1).mean(1)
        p = torch.sigmoid(flat).flatten(1)
        t = gt_rep.flatten(1)
        dice = 1.0 - (2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)
        per = (bce + dice).view(b, c)
        best = per.argmin(dim=1)
        pick = best.view(b, 1)
        with torch.no_grad():
            hard = (flat > 0).float().flatten(1)
            inter = (hard * t).sum(1)
            union = hard.sum(1) + t.sum(1) - inter
            true_iou = (inter / union.clamp_min(1.0)).view(b, c)
        iou_mse = F.mse_loss(iou_predictions.float(), true_iou)
        mask_bce = bce.view(b, c).gather(1, pick).mean()
        mask_dice = dice.view(b, c).gather(1, pick).mean()
    total = mask_bce + mask_dice + iou_mse
    return SamLossTerms(total, mask_bce, mask_dice, iou_mse), best


@dataclass
class HQLossTerms:
    """HQ-SAM's training loss (the HQ output token's mask; SAM stays frozen)."""

    total: Tensor
    mask_bce: Tensor
    mask_dice: Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in self.__dataclass_fields__}


def hq_loss(out: DecoderOutput, gt: Tensor) -> HQLossTerms:
    """HQ-SAM's loss (its paper and training code): BCE + dice of the HQ output token's mask
    logits (``out.hq_masks``, upsampled to the ground truth) against the Bx1xHxW ground truth."""
    if out.hq_masks is None:
        raise ValueError("hq_loss needs HQ-SAM's output (the model is not an HQ-SAM)")
    size = (int(gt.shape[-2]), int(gt.shape[-1]))
    with torch.autocast(device_type=gt.device.type, enabled=False):
        masks = _up(out.hq_masks[:, :1], size)
        mask_bce = bce_loss(masks, gt)
        mask_dice = dice_loss(masks, gt)
    return HQLossTerms(mask_bce + mask_dice, mask_bce, mask_dice)


@dataclass
class CombinedTerms:
    """A loss plus auxiliary terms (e.g. the point matching module's)."""

    total: Tensor
    parts: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **self.parts}


def with_term(terms: Any, name: str, value: Tensor) -> CombinedTerms:
    """``terms`` (any loss terms object) with ``value`` added to the total as ``name``."""
    parts = {k: v for k, v in terms.as_dict().items() if k != "total"}
    parts[name] = float(value.detach())
    return CombinedTerms(terms.total + value, parts)
