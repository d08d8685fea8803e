"""PA-SAM loss terms: uncertainty band target, BCE/Dice, the U-restricted Mc/R terms."""

import pytest
import torch

from pasam_plugins.modeling import DecoderOutput
from pasam_plugins.train.losses import (
    band_iterations,
    bce_loss,
    dice_loss,
    pasam_loss,
    uncertainty_target,
)


def _square(h, w, r0, r1, c0, c1):
    m = torch.zeros(1, 1, h, w)
    m[..., r0 : r1 + 1, c0 : c1 + 1] = 1.0
    return m


def test_band_iterations():
    assert band_iterations(20, 20) == 1  # 0.14 -> at least one
    assert band_iterations(1024, 1024) == 7  # 7.24
    assert band_iterations(256, 256) == 2  # 1.81


def test_uncertainty_band_of_a_square():
    sq = _square(20, 20, 5, 14, 5, 14)  # 10x10
    band = uncertainty_target(sq)  # one erosion on a 20x20 image
    # inside: 10^2 - 8^2 = 36; outside: 12^2 - 10^2 = 44
    assert band.sum().item() == 36 + 44
    assert band[0, 0, 5, 5] == 1 and band[0, 0, 4, 4] == 1 and band[0, 0, 9, 9] == 0
    assert band[0, 0, 3, 3] == 0
    band2 = uncertainty_target(sq, iterations=2)
    assert band2.sum().item() == (100 - 36) + (14 * 14 - 100)


def test_image_border_is_not_uncertain():
    assert uncertainty_target(torch.ones(1, 1, 16, 16)).sum() == 0
    assert uncertainty_target(torch.zeros(1, 1, 16, 16)).sum() == 0
    # an object touching the border: the band follows only its inner edges
    half = torch.zeros(1, 1, 16, 16)
    half[..., :, :8] = 1
    band = uncertainty_target(half, iterations=1)
    assert band.sum().item() == 2 * 16  # columns 7 and 8


def test_bce_and_dice_values():
    gt = _square(8, 8, 0, 3, 0, 7)  # 32 foreground pixels
    perfect = gt * 40 - 20
    assert bce_loss(perfect, gt).item() < 1e-6
    assert dice_loss(perfect, gt).item() < 1e-6
    all_bg = torch.full_like(gt, -1e4)
    assert dice_loss(all_bg, gt).item() == pytest.approx(1 - 1 / 33)
    zero = torch.zeros_like(gt)
    assert bce_loss(zero, gt).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # restricted to a region where the prediction is right, the error elsewhere is ignored
    wrong_bottom = perfect.clone()
    wrong_bottom[..., 4:, :] = 20
    top = _square(8, 8, 0, 3, 0, 7)
    assert bce_loss(wrong_bottom, gt, top).item() < 1e-6
    assert bce_loss(wrong_bottom, gt).item() > 5


def _output(h=64):
    torch.manual_seed(0)
    masks = torch.randn(1, 1, 256, 256, requires_grad=True)
    u_logit = torch.full((1, 1, h, h), -3.0)
    u_logit[..., :, : h // 2] = 3.0  # left half uncertain (U >= 0.5), right half certain
    u_logit.requires_grad_(True)
    coarse = torch.randn(1, 1, h, h, requires_grad=True)
    refined = torch.randn(1, 1, h, h, requires_grad=True)
    out = DecoderOutput(
        masks=masks,
        iou_predictions=torch.zeros(1, 4),
        uncertainty=torch.sigmoid(u_logit),
        pa_mask=coarse.detach(),
        coarse_mask=coarse,
        refined_mask=refined,
    )
    return out, masks, u_logit, coarse, refined


def test_coarse_and_refined_terms_are_restricted_by_u():
    out, masks, u_logit, coarse, refined = _output()
    gt = _square(64, 64, 10, 50, 10, 50)
    terms = pasam_loss(out, gt)
    terms.total.backward()
    assert masks.grad.abs().sum() > 0 and u_logit.grad.abs().sum() > 0
    # Mc learns only where U < 0.5 (right half), R only where U >= 0.5 (left half)
    assert coarse.grad[..., :, :32].abs().sum() == 0 and coarse.grad[..., :, 32:].abs().sum() > 0
    assert refined.grad[..., :, 32:].abs().sum() == 0 and refined.grad[..., :, :32].abs().sum() > 0
    parts = terms.as_dict()
    assert parts["total"] == pytest.approx(
        sum(v for k, v in parts.items() if k != "total"), rel=1e-5
    )


def test_loss_is_small_for_a_perfect_prediction():
    gt = _square(256, 256, 40, 200, 60, 180)
    small = torch.nn.functional.interpolate(gt, (64, 64), mode="area")
    band = uncertainty_target(gt)
    band64 = torch.nn.functional.interpolate(band, (64, 64), mode="area")
    out = DecoderOutput(
        masks=gt * 40 - 20,
        iou_predictions=torch.zeros(1, 4),
        uncertainty=band64.clamp(0.01, 0.99),
        pa_mask=small,
        coarse_mask=(small > 0.5).float() * 40 - 20,
        refined_mask=(small > 0.5).float() * 40 - 20,
    )
    good = pasam_loss(out, gt).as_dict()
    bad = pasam_loss(
        DecoderOutput(
            masks=-(gt * 40 - 20),
            iou_predictions=out.iou_predictions,
            uncertainty=1 - out.uncertainty,
            pa_mask=small,
            coarse_mask=-out.coarse_mask,
            refined_mask=-out.refined_mask,
        ),
        gt,
    ).as_dict()
    assert good["mask_bce"] < 1e-3 and good["mask_dice"] < 1e-3
    assert good["total"] < 0.5 * bad["total"]
    for key in ("mask_bce", "mask_dice", "uncertainty"):
        assert good[key] < bad[key]
