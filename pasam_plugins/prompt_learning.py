"""Task-specific prompt learning (Kim et al., arXiv 2403.09199): PLM and PMM on a frozen model.

**PLM** (prompt learning module, :class:`PromptLearningModule`): moves the sparse prompt
embeddings (points, box corners) toward what the task means by them. It computes a residual
offset for the prompt embeddings from multi-head self-attention over the prompt tokens and
prompt-to-image attention over the image embedding, then an MLP (a transformer block over
the prompt tokens, SAM's ``Attention`` and ``MLPBlock``); ``prompts + offset`` go to the
frozen mask decoder. The offset layer starts at zero, so an untrained PLM leaves the model's
output exactly as it was. About 1.5 M parameters at SAM's width 256 (the paper: 1.6 M). It
lives in the decoder (``mask_decoder.plm``) and runs in :meth:`PASam.decode` whenever the
model's additions are used (``use_adapter=True``), for SAM, PA-SAM and HQ-SAM alike.

**PMM** (point matching module, :class:`PointMatchingModule`, training only): takes points
on the boundary of the predicted mask, reads the decoder's upscaled mask features there
(bilinear), and a small transformer encoder-decoder over those points predicts each point's
offset to the ground-truth contour (the nearest point of the densely interpolated contour).
The smooth-L1 error of these offsets is an auxiliary loss; its gradient reaches the trained
modules (PLM, adapter, HQ token) through the decoder features, which is how it sharpens the
boundaries. It is not part of a saved model (about 1.3 M parameters, discarded after
training).

The paper's details that it leaves open are chosen here: the PLM block has SAM's decoder
layout (8 heads, prompt-to-image attention at half width, MLP width 2048); the PMM samples
32 points per mask, has one encoder and one decoder layer of width 256 (8 heads, feed-forward
512), predicts offsets in low-res mask pixels, and weighs its loss 0.05
(:data:`pasam_plugins.train.trainer.PMM_WEIGHT`).
"""

import cv2
import numpy as np
import torch
from segment_anything.modeling.common import MLPBlock
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn
from torch.nn import functional as F

#: the PLM's parameters in a state dict (decoder-relative)
PLM_PREFIX = "plm."
#: boundary points per mask the PMM works on
PMM_POINTS = 32


class PromptLearningModule(nn.Module):
    """Residual offset for BxNxC prompt embeddings from self-attention over the prompts and
    prompt-to-image attention (see the module docstring)."""

    def __init__(self, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_prompt_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.GELU)
        self.norm3 = nn.LayerNorm(dim)
        self.offset = nn.Linear(dim, dim)
        nn.init.zeros_(self.offset.weight)  # starts as the identity on the prompts
        nn.init.zeros_(self.offset.bias)

    def forward(self, prompts: Tensor, image_embeddings: Tensor, image_pe: Tensor) -> Tensor:
        """BxNxC prompt embeddings, 1xCxGxG image embedding and positional encoding ->
        BxNxC adjusted prompt embeddings (``prompts + offset``)."""
        keys = image_embeddings.flatten(2).transpose(1, 2)  # 1 x GG x C
        k_pe = image_pe.flatten(2).transpose(1, 2)
        q = self.norm1(prompts + self.self_attn(q=prompts, k=prompts, v=prompts))
        attn = self.cross_attn_prompt_to_image(q=q + prompts, k=keys + k_pe, v=keys)
        q = self.norm2(q + attn)
        q = self.norm3(q + self.mlp(q))
        return prompts + self.offset(q)


def attach_plm(model, *, seed: int = 0) -> nn.Module:
    """Give ``model`` a new prompt learning module (seeded; the output is unchanged until
    it is trained) unless it has one; returns the module."""
    decoder = model.mask_decoder
    if decoder.plm is not None:
        return decoder.plm
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        plm = PromptLearningModule(int(model.prompt_encoder.embed_dim))
    finally:
        torch.random.set_rng_state(state)
    decoder.plm = plm.to(next(model.parameters()).device)
    model.origin = model.origin.derived(plm=True)
    return decoder.plm


class PointMatchingModule(nn.Module):
    """Offsets of boundary points to the ground-truth contour from the decoder's features
    there (training only; see the module docstring)."""

    def __init__(
        self, feature_dim: int = 32, dim: int = 256, num_heads: int = 8, ff_dim: int = 512
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(feature_dim + 2, dim)
        self.encoder = nn.TransformerEncoderLayer(
            dim, num_heads, ff_dim, dropout=0.0, batch_first=True
        )
        self.decoder = nn.TransformerDecoderLayer(
            dim, num_heads, ff_dim, dropout=0.0, batch_first=True
        )
        self.head = nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Linear(dim // 2, 2))

    def forward(self, features: Tensor, points: Tensor) -> Tensor:
        """BxFxSxS features and BxPx2 points (x, y in [0, 1] of the feature map) -> BxPx2
        predicted offsets (same units)."""
        grid = points * 2.0 - 1.0  # grid_sample's frame (align_corners=False)
        sampled = F.grid_sample(
            features.float(), grid.unsqueeze(2), mode="bilinear", align_corners=False
        )  # B x F x P x 1
        tokens = self.embed(torch.cat([sampled[..., 0].transpose(1, 2), points], dim=-1))
        memory = self.encoder(tokens)
        return self.head(self.decoder(tokens, memory))


def _contour(mask: np.ndarray) -> np.ndarray | None:
    """Kx2 (x, y) pixel-centre points along the outer contour of the largest component of a
    HxW bool mask (None when empty)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)
    return c + 0.5


def resample_closed(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points evenly spaced by arc length along the closed polyline ``points`` (Kx2)."""
    closed = np.concatenate([points, points[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return np.repeat(points[:1], n, axis=0)
    t = np.linspace(0.0, cum[-1], n, endpoint=False)
    x = np.interp(t, cum, closed[:, 0])
    y = np.interp(t, cum, closed[:, 1])
    return np.stack([x, y], axis=1)


def boundary_targets(
    pred: np.ndarray, gt: np.ndarray, n: int = PMM_POINTS, density: int = 4
) -> tuple[np.ndarray, np.ndarray] | None:
    """Points on the predicted boundary and their offsets to the ground-truth contour.

    Arguments:
      pred, gt: SxS bool masks in the same frame (the low-res mask frame).
      n: points per mask, evenly spaced along the predicted contour.
      density: the ground-truth contour is interpolated to ``density`` points per pixel
        step of its length before the nearest point is looked up.

    Returns:
      ``(points, offsets)``, both nx2 in units of the side S (points in [0, 1]); None when
      either mask is empty.
    """
    pc, gc = _contour(pred), _contour(gt)
    if pc is None or gc is None:
        return None
    pts = resample_closed(pc, n)
    dense = resample_closed(gc, max(n, density * len(gc)))
    d2 = ((pts[:, None, :] - dense[None, :, :]) ** 2).sum(-1)
    target = dense[d2.argmin(axis=1)]
    s = float(pred.shape[-1])
    return (pts / s).astype(np.float32), ((target - pts) / s).astype(np.float32)


def pmm_loss(
    pmm: PointMatchingModule, features: Tensor, logits: Tensor, gt: Tensor
) -> Tensor | None:
    """The PMM's auxiliary loss for B masks (None when no mask has a boundary).

    Arguments:
      features: BxFxSxS decoder mask features (with their autograd graph).
      logits: Bx1xSxS predicted low-res logits (only their sign is used).
      gt: Bx1xHxW {0, 1} ground truth (resampled to SxS here).
    """
    s = int(features.shape[-1])
    with torch.no_grad():
        gt_s = F.interpolate(gt.float(), (s, s), mode="area")[:, 0] > 0.5
        pred_s = F.interpolate(logits.float(), (s, s), mode="bilinear", align_corners=False)
        pred_s = pred_s[:, 0] > 0
    pts, offs, keep = [], [], []
    for i in range(features.shape[0]):
        got = boundary_targets(pred_s[i].cpu().numpy(), gt_s[i].cpu().numpy())
        if got is not None:
            pts.append(got[0])
            offs.append(got[1])
            keep.append(i)
    if not keep:
        return None
    dev = features.device
    points = torch.as_tensor(np.stack(pts), device=dev)
    target = torch.as_tensor(np.stack(offs), device=dev)
    pred = pmm(features[keep], points)
    # in units of the mask side: one low-res pixel is 1/S; beta = one pixel
    return F.smooth_l1_loss(pred * s, target * s, beta=1.0)
