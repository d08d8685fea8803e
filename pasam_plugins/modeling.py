"""PA-SAM network: SAM's modules plus the prompt adapter, tensors in and tensors out.

The computation follows ``docs/pasam-reference.md`` (a copy of the project specification,
checked against the authors' code). :meth:`PAMaskDecoder.forward_reference` writes it out as
readable math with SAM's modules; :meth:`PAMaskDecoder.forward` is the fast path, tested
against it.
Everything here takes and returns tensors; image I/O, Canny edges and prompt transforms live
in :mod:`pasam_plugins.guide` and :mod:`pasam_plugins.predictor`.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import Attention
from torch import Tensor, nn
from torch.nn import functional as F

from .guide import guide_input as _guide_input
from .origin import ModelOrigin

GuideMode = Literal["reference", "image"]
MiningMode = Literal["topk", "gumbel", "off"]
GUIDE_MODES: tuple[str, ...] = ("reference", "image")

#: number of mined points of each sign (the paper's k)
NUM_MINED = 4
#: without autograd, the mask head runs in bands of rows with temporaries of at most this
#: size (a single prompt set's 64x64 embedding is one band)
MASK_HEAD_TILE_BYTES = 8 << 20


@dataclass
class DecoderOutput:
    """Everything the PA-SAM decoder computes for B prompt sets.

    Shapes are given for the official 1024-px models, whose image embedding is a 64x64 grid
    (G); for other input sizes read 64 as G and 256 as 4G.

    Attributes:
      masks: Bx1x256x256 low-res logits with the adapter (BxCx256x256 without).
      iou_predictions: Bx4 (single mask, adapter), Bx1 (multimask, adapter) or BxC (SAM).
      uncertainty: Bx1x64x64 uncertainty map U in [0, 1] (None without adapter).
      pa_mask: Bx1x64x64 intermediate mask M_pa (hard selection of R / Mc).
      coarse_mask: Bx1x64x64 Mc logits.
      refined_mask: Bx1x64x64 R logits.
      mined_indices: Bx8 flat cell indices into the 64x64 grid, 4 positive then 4 negative,
        row-major within each group (None when mining is off or without adapter).
      mask_index: B indices of the returned mask among the 4 mask tokens.
      hq_masks: Bx1x256x256 logits of HQ-SAM's HQ output token alone (HQ-SAM only; what
        its training loss sees, :mod:`pasam_plugins.hq`).
      mask_features: BxC/8x256x256 upscaled decoder features the masks are read from (only
        with ``return_features=True``: the point matching module's input in training).
    """

    masks: Tensor
    iou_predictions: Tensor
    uncertainty: Tensor | None = None
    pa_mask: Tensor | None = None
    coarse_mask: Tensor | None = None
    refined_mask: Tensor | None = None
    mined_indices: Tensor | None = None
    mask_index: Tensor | None = None
    hq_masks: Tensor | None = None
    mask_features: Tensor | None = None


@contextmanager
def capture_output(module: nn.Module, enabled: bool = True) -> Iterator[dict[str, Tensor]]:
    """While active (and ``enabled``), ``captured["output"]`` is set to what ``module``
    returns (with its autograd graph): the decoder's upscaled mask features, read by the
    point matching module in training without changing SAM's or HQ-SAM's own code."""
    captured: dict[str, Tensor] = {}
    if not enabled:
        yield captured
        return

    def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        captured["output"] = output

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class GuidingConv(nn.Sequential):
    """Dense prompt compensation: 4x4Gx4G guide input -> CxGxG guide (official layout; G = 64
    for the 1024-px models)."""

    def __init__(self, *, transformer_dim: int = 256, in_chans: int = 4) -> None:
        super().__init__(
            nn.Conv2d(in_chans, 64, kernel_size=2, stride=2),
            LayerNorm2d(64),
            nn.GELU(),
            nn.Conv2d(64, transformer_dim, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim),
            nn.GELU(),
            nn.Conv2d(transformer_dim, transformer_dim, kernel_size=1),
        )


class PromptAdapter(nn.Module):
    """The PA-SAM prompt adapter (key names as in the official checkpoint)."""

    def __init__(self, *, transformer_dim: int = 256, num_heads: int = 8) -> None:
        super().__init__()
        self.static_uncertain_token = nn.Embedding(1, transformer_dim)
        self.static_refined_token = nn.Embedding(1, transformer_dim)
        self.uncertain_mlp = MLP(2 * transformer_dim, 64, transformer_dim, 3)
        self.refined_mlp = MLP(2 * transformer_dim, 64, transformer_dim, 3)
        self.cross_attn_token_to_image = Attention(transformer_dim, num_heads, downsample_rate=2)


def gumbel_topk(
    phi: Tensor, k: int, *, tau: float = 1.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Differentiable Gumbel top-k over the last dim.

    Arguments:
      phi (Tensor): BxN scores.
      k (int): number of selected entries.

    Returns:
      Tensor: Bxk selected indices, ascending (row-major order).
      Tensor: Bxk straight-through weights at those indices (1 forward, gradient to ``phi``).
    """
    u = torch.rand(phi.shape, generator=generator, device=phi.device, dtype=phi.dtype)
    tiny = torch.finfo(phi.dtype).tiny
    gumbel = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
    logits = phi + gumbel
    khot = torch.zeros_like(phi)
    for _ in range(k):
        p = torch.softmax(logits / tau, dim=-1)
        khot = khot + p
        logits = logits + torch.log((1.0 - p).clamp_min(tiny))
    idx = torch.topk(khot, k, dim=-1).indices.sort(dim=-1).values
    hard = torch.zeros_like(khot).scatter_(-1, idx, 1.0)
    st = hard - khot.detach() + khot
    return idx, st.gather(-1, idx)


class PAMaskDecoder(MaskDecoder):
    """SAM's mask decoder with an optional PA-SAM prompt adapter in the second block.

    With ``adapter=False`` the module holds exactly SAM's parameters and its forward is
    SAM's. With the adapter it adds ``guiding_conv`` and ``prompt_adapter`` (the official
    PA-SAM key names) and inserts the adapter in parallel into transformer block 1.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        adapter: bool = True,
        num_mined: int = NUM_MINED,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            activation=activation,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.num_mined = num_mined
        #: the prompt learning module (:mod:`pasam_plugins.prompt_learning`), when attached
        self.register_module("plm", None)
        if adapter:
            self.guiding_conv = GuidingConv(transformer_dim=transformer_dim)
            self.prompt_adapter = PromptAdapter(
                transformer_dim=transformer_dim, num_heads=transformer.num_heads
            )
        else:
            self.guiding_conv = None
            self.prompt_adapter = None

    @property
    def has_adapter(self) -> bool:
        return self.prompt_adapter is not None

    def encode_guide(self, guide_input: Tensor) -> Tensor:
        """Bx4x4Gx4G guide input -> BxCxGxG guide ``g`` (G: the embedding grid)."""
        if self.guiding_conv is None:
            raise RuntimeError("this decoder has no PA-SAM adapter")
        return self.guiding_conv(guide_input)

    def forward(  # type: ignore[override]
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        *,
        guide: Tensor | None = None,
        point_label_embeddings: Tensor | None = None,
        mining: MiningMode = "topk",
        use_adapter: bool = True,
        generator: torch.Generator | None = None,
        return_features: bool = False,
    ) -> DecoderOutput:
        """Predict masks for B prompt sets on one image.

        Arguments:
          image_embeddings (Tensor): 1xCx64x64 image embedding.
          image_pe (Tensor): 1xCx64x64 dense positional encoding.
          sparse_prompt_embeddings (Tensor): BxNxC point/box embeddings.
          dense_prompt_embeddings (Tensor): BxCx64x64 mask embeddings.
          multimask_output (bool): SAM: masks 1..3; adapter: the best of masks 1..3.
          guide (Tensor): 1xCx64x64 guide from :meth:`encode_guide` (adapter only).
          point_label_embeddings (Tensor): 2xC, the prompt encoder's negative and positive
            point embeddings (``point_embeddings[0]``, ``point_embeddings[1]``).
          mining (str): ``"topk"`` (inference), ``"gumbel"`` (training) or ``"off"``.
          use_adapter (bool): False runs plain SAM even when the adapter is loaded.
          return_features (bool): also return the upscaled mask features (training).

        Returns:
          DecoderOutput: see its docstring for shapes.
        """
        if not (use_adapter and self.has_adapter):
            with capture_output(self.output_upscaling, return_features) as captured:
                masks, iou = super().forward(
                    image_embeddings,
                    image_pe,
                    sparse_prompt_embeddings,
                    dense_prompt_embeddings,
                    multimask_output,
                )
            return DecoderOutput(
                masks=masks, iou_predictions=iou, mask_features=captured.get("output")
            )
        if guide is None or point_label_embeddings is None:
            raise ValueError("the PA-SAM adapter needs `guide` and `point_label_embeddings`")
        return self._forward_adapter(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            multimask_output,
            guide,
            point_label_embeddings,
            mining,
            generator,
            return_features,
        )

    def _forward_adapter(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        multimask_output: bool,
        guide: Tensor,
        point_label_embeddings: Tensor,
        mining: MiningMode,
        generator: torch.Generator | None,
        return_features: bool = False,
    ) -> DecoderOutput:
        b = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse), dim=1)

        if dense.shape[0] > 1 and dense.stride(0) == 0:
            # no mask prompts: the dense embedding is one vector broadcast over the batch, so
            # the image side of block 0 (key/value/query projections of 4096 positions) is
            # the same for every prompt set: keep it at batch 1 (see `_attention`)
            dense = dense[:1]
        src = image_embeddings + dense  # 1|B x C x H x W
        _, c, h, w = src.shape
        # token layout, contiguous: a transposed view here would make every elementwise
        # product with it (g * keys, keys + k_pe) come out transposed, and each projection
        # of those then copies its input
        keys = _token_layout(src)  # 1|B x HW x C
        k_pe = _token_layout(image_pe)  # 1 x HW x C
        g = _token_layout(guide)  # 1|B x HW x C

        transformer = self.transformer
        layer0, layer1 = transformer.layers[0], transformer.layers[1]
        q_pe = tokens
        # reused buffers for the B x HW temporaries: every "pe" sum below is consumed
        # inside the `_attention` call it is passed to, every "o" result by the residual
        # and norm around that call, before the name is used again
        ws = _Workspace(keys.device.type)

        # --- block 0: SAM's TwoWayAttentionBlock (skip_first_layer_pe=True) ---
        queries = layer0.norm1(_attention(layer0.self_attn, tokens, tokens, tokens))
        kk = keys + k_pe  # used twice: not a workspace buffer
        queries = layer0.norm2(
            queries + _attention(layer0.cross_attn_token_to_image, queries + q_pe, kk, keys)
        )
        queries = layer0.norm3(queries + layer0.mlp(queries))
        qq = queries + q_pe
        keys = layer0.norm4(
            _residual(keys, _attention(layer0.cross_attn_image_to_token, kk, qq, queries, ws, "o"))
        )

        # --- block 1 with the adapter in parallel ---
        qq = queries + q_pe
        queries = layer1.norm1(queries + _attention(layer1.self_attn, qq, qq, queries))
        qq = queries + q_pe
        a = _attention(layer1.cross_attn_token_to_image, qq, ws.add("pe", keys, k_pe), keys, ws)

        pa = self.prompt_adapter
        gated = g * keys  # guided gate (CRM): B x HW x C
        adapted = _attention(pa.cross_attn_token_to_image, qq, ws.add("pe", gated, k_pe), gated, ws)
        t1 = adapted[:, 1]  # B x C
        u_tok = pa.uncertain_mlp(
            torch.cat([pa.static_uncertain_token.weight.expand(b, -1), t1], dim=-1)
        )
        r_tok = pa.refined_mlp(
            torch.cat([pa.static_refined_token.weight.expand(b, -1), t1], dim=-1)
        )
        maps = torch.einsum("bnc,bkc->bkn", gated, torch.stack([u_tok, r_tok, t1], dim=1))
        unc = torch.sigmoid(maps[:, 0])  # B x HW
        refined, coarse = maps[:, 1], maps[:, 2]
        pa_mask = torch.where(unc >= 0.5, refined, coarse)
        adapted = torch.cat([adapted[:, :1], r_tok.unsqueeze(1), adapted[:, 2:]], dim=1)

        keys_g = _residual(keys, gated)  # `gated` is not used after this
        mined = None
        if mining != "off":
            phi = unc * (torch.sigmoid(refined) - torch.sigmoid(coarse))  # B x HW
            k = self.num_mined
            if mining == "topk":
                pos = torch.topk(phi, k, dim=-1).indices.sort(dim=-1).values
                neg = torch.topk(-phi, k, dim=-1).indices.sort(dim=-1).values
                weights = None
            elif mining == "gumbel":
                pos, wpos = gumbel_topk(phi, k, generator=generator)
                neg, wneg = gumbel_topk(-phi, k, generator=generator)
                weights = torch.cat([wpos, wneg], dim=1).unsqueeze(-1)
            else:
                raise ValueError(f"unknown mining mode {mining!r}; use 'topk', 'gumbel' or 'off'")
            mined = torch.cat([pos, neg], dim=1)  # B x 2k
            gather_idx = mined.unsqueeze(-1).expand(-1, -1, c)
            contents = keys_g.gather(1, gather_idx)
            pe_b = k_pe.expand(b, -1, -1)
            label_emb = torch.cat(
                [
                    point_label_embeddings[1].expand(k, -1),
                    point_label_embeddings[0].expand(k, -1),
                ],
                dim=0,
            )
            encodings = pe_b.gather(1, gather_idx) + label_emb.unsqueeze(0)
            if weights is not None:
                contents = contents * weights
                encodings = encodings * weights
            adapted = torch.cat([adapted, contents], dim=1)
            q_pe = torch.cat([q_pe, encodings], dim=1)
            pad = queries.new_zeros(b, 2 * k, c)
            a = torch.cat([a, pad], dim=1)
            queries = torch.cat([queries, pad], dim=1)
        a = a + adapted
        keys = keys_g

        queries = layer1.norm2(queries + a)
        queries = layer1.norm3(queries + layer1.mlp(queries))
        qq = queries + q_pe
        kk = ws.add("pe", keys, k_pe)
        keys = layer1.norm4(
            _residual(keys, _attention(layer1.cross_attn_image_to_token, kk, qq, queries, ws, "o"))
        )

        for layer in transformer.layers[2:]:  # SAM has two blocks; kept for generality
            queries, keys = layer(queries=queries, keys=keys, query_pe=q_pe, key_pe=k_pe)

        qq = queries + q_pe
        attn_out = _attention(
            transformer.final_attn_token_to_image, qq, ws.add("pe", keys, k_pe), keys, ws
        )
        hs = transformer.norm_final_attn(queries + attn_out)
        del ws, kk  # release the buffers: the mask head runs in bands of its own

        iou_pred = self.iou_prediction_head(hs[:, 0])
        if multimask_output:
            mask_index = iou_pred[:, 1:].argmax(dim=1) + 1  # B
            iou_pred = iou_pred.gather(1, mask_index.view(b, 1))
        else:
            mask_index = torch.zeros(b, dtype=torch.long, device=hs.device)
        masks = self._mask_head(hs, keys, mask_index, h, w)
        features = None
        if return_features:  # what the head computes without materializing it (training)
            features = self.output_upscaling(
                keys.expand(b, -1, -1).transpose(1, 2).reshape(b, c, h, w)
            )

        def grid(t: Tensor) -> Tensor:
            return t.view(b, 1, h, w)

        return DecoderOutput(
            masks=masks,
            iou_predictions=iou_pred,
            uncertainty=grid(unc),
            pa_mask=grid(pa_mask),
            coarse_mask=grid(coarse),
            refined_mask=grid(refined),
            mined_indices=mined,
            mask_index=mask_index,
            mask_features=features,
        )

    def forward_reference(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        *,
        guide: Tensor,
        point_label_embeddings: Tensor,
        mining: MiningMode = "topk",
        generator: torch.Generator | None = None,
    ) -> DecoderOutput:
        """The adapter decoder as readable reference math (docs/pasam-reference.md,
        section 3), in the shape of SAM's ``MaskDecoder.predict_masks``: SAM's own modules
        called as they are, every tensor materialized. :meth:`forward` computes the same with
        less work (tests/test_modeling.py checks the two against each other, with and
        without autograd); use this one to read or to check the math, not to run fast.

        Shapes (B prompt sets, N sparse prompts, C = 256, G x G embedding grid):
          image_embeddings 1xCxGxG, image_pe 1xCxGxG, sparse BxNxC, dense BxCxGxG (or 1x..),
          guide 1xCxGxG, point_label_embeddings 2xC (negative, positive).
        """
        b = sparse_prompt_embeddings.shape[0]
        c = self.transformer_dim
        pa = self.prompt_adapter
        assert pa is not None and self.guiding_conv is not None, "no adapter"
        # 1. tokens: IoU token, 4 mask tokens, then the prompts (B x T x C); q_pe = tokens
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            (output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), 1
        )
        src = image_embeddings.expand(b, -1, -1, -1) + dense_prompt_embeddings  # B x C x G x G
        _, _, gh, gw = src.shape
        keys = src.flatten(2).permute(0, 2, 1)  # B x GG x C
        k_pe = image_pe.flatten(2).permute(0, 2, 1).expand(b, -1, -1)  # B x GG x C
        g = guide.flatten(2).permute(0, 2, 1).expand(b, -1, -1)  # B x GG x C
        q, q_pe = tokens, tokens
        layer0, layer1 = self.transformer.layers[0], self.transformer.layers[1]

        # 2. block 0: SAM's TwoWayAttentionBlock unchanged
        q, keys = layer0(queries=q, keys=keys, query_pe=q_pe, key_pe=k_pe)

        # 3. block 1 with the adapter in parallel
        q = layer1.norm1(q + layer1.self_attn(q=q + q_pe, k=q + q_pe, v=q))
        a = layer1.cross_attn_token_to_image(q=q + q_pe, k=keys + k_pe, v=keys)
        gated = g * keys  # guided gate (CRM)
        adapted = pa.cross_attn_token_to_image(q=q + q_pe, k=gated + k_pe, v=gated)  # B x T x C
        t1 = adapted[:, 1]
        u_tok = pa.uncertain_mlp(
            torch.cat([pa.static_uncertain_token.weight.expand(b, -1), t1], -1)
        )
        r_tok = pa.refined_mlp(torch.cat([pa.static_refined_token.weight.expand(b, -1), t1], -1))
        unc = torch.sigmoid(torch.einsum("bc,bnc->bn", u_tok, gated))  # U, B x GG
        refined = torch.einsum("bc,bnc->bn", r_tok, gated)  # R
        coarse = torch.einsum("bc,bnc->bn", t1, gated)  # Mc
        pa_mask = torch.where(unc >= 0.5, refined, coarse)  # hard selection [ref]
        adapted = torch.cat([adapted[:, :1], r_tok.unsqueeze(1), adapted[:, 2:]], dim=1)
        mined = None
        if mining != "off":
            k = self.num_mined
            phi = unc * (torch.sigmoid(refined) - torch.sigmoid(coarse))
            if mining == "topk":
                pos = torch.topk(phi, k, dim=-1).indices.sort(dim=-1).values
                neg = torch.topk(-phi, k, dim=-1).indices.sort(dim=-1).values
                weights = None
            else:
                pos, wpos = gumbel_topk(phi, k, generator=generator)
                neg, wneg = gumbel_topk(-phi, k, generator=generator)
                weights = torch.cat([wpos, wneg], dim=1).unsqueeze(-1)
            mined = torch.cat([pos, neg], dim=1)  # B x 2k, positives first, row-major
            idx = mined.unsqueeze(-1).expand(-1, -1, c)
            contents = (keys + gated).gather(1, idx)
            labels = torch.cat(
                [point_label_embeddings[1].expand(k, -1), point_label_embeddings[0].expand(k, -1)]
            )
            encodings = k_pe.gather(1, idx) + labels
            if weights is not None:
                contents, encodings = contents * weights, encodings * weights
            adapted = torch.cat([adapted, contents], dim=1)
            q_pe = torch.cat([q_pe, encodings], dim=1)
            pad = q.new_zeros(b, 2 * k, c)
            a, q = torch.cat([a, pad], dim=1), torch.cat([q, pad], dim=1)
        a = a + adapted
        keys = keys + gated
        q = layer1.norm2(q + a)
        q = layer1.norm3(q + layer1.mlp(q))
        keys = layer1.norm4(keys + layer1.cross_attn_image_to_token(q=keys + k_pe, k=q + q_pe, v=q))
        for layer in self.transformer.layers[2:]:
            q, keys = layer(queries=q, keys=keys, query_pe=q_pe, key_pe=k_pe)

        # 4. final attention, with the extended q_pe
        attn = self.transformer.final_attn_token_to_image(q=q + q_pe, k=keys + k_pe, v=keys)
        hs = self.transformer.norm_final_attn(q + attn)

        # 5. SAM's mask head: upscaled embedding . hypernetwork of each mask token
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, gh, gw))
        hyper = torch.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B x 4 x C/8
        bu, cu, hu, wu = upscaled.shape
        masks = (hyper @ upscaled.view(bu, cu, hu * wu)).view(b, -1, hu, wu)
        iou = self.iou_prediction_head(hs[:, 0])

        # 6. output selection [ref]
        if multimask_output:
            mask_index = iou[:, 1:].argmax(dim=1) + 1
            iou = iou.gather(1, mask_index.view(b, 1))
        else:
            mask_index = torch.zeros(b, dtype=torch.long, device=hs.device)
        masks = masks.gather(1, mask_index.view(b, 1, 1, 1).expand(-1, 1, hu, wu))

        def grid(t: Tensor) -> Tensor:
            return t.view(b, 1, gh, gw)

        return DecoderOutput(
            masks=masks,
            iou_predictions=iou,
            uncertainty=grid(unc),
            pa_mask=grid(pa_mask),
            coarse_mask=grid(coarse),
            refined_mask=grid(refined),
            mined_indices=mined,
            mask_index=mask_index,
        )

    def _mask_head(self, hs: Tensor, keys: Tensor, mask_index: Tensor, h: int, w: int) -> Tensor:
        """SAM's mask head for one mask token per prompt set.

        Arguments:
          hs (Tensor): BxTxC transformer output tokens.
          keys (Tensor): BxHWxC transformer output image embedding.
          mask_index (Tensor): B indices of the mask token to use (0..3).

        Returns:
          Tensor: Bx1x4hx4w mask logits.

        Same math as ``output_upscaling`` + hypernetwork product, computed where the
        embedding already lies: each 2x2 stride-2 transposed convolution is one matrix
        product per position (its four sub-pixels side by side), LayerNorm2d is a LayerNorm
        over each sub-pixel's channels, and only the product with the selected token is
        formed. The 4x4 sub-pixels are put in place once, on the final Bx1x4hx4w logits,
        instead of rearranging the 32-channel embedding.

        Every step is per position, so without autograd the head runs over bands of rows
        whose temporaries stay under ``MASK_HEAD_TILE_BYTES`` (one band for a single prompt
        set): a batch of many sets then neither holds a B x 4HW x 4*C2 tensor (128 MiB at
        B=16) nor maps and faults in fresh pages for it on every call.
        """
        b = hs.shape[0]
        hyper_in = torch.stack(
            [mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # B x 4 x C/8
        hyper = hyper_in.gather(1, mask_index.view(b, 1, 1).expand(-1, 1, hyper_in.shape[-1]))
        hyper_t = hyper.transpose(1, 2)  # B x C/8 x 1
        up1, up2 = self.output_upscaling[0], self.output_upscaling[3]
        w1, bias1 = _subpixel_weight(up1), up1.bias.repeat(4)
        w2, bias2 = _subpixel_weight(up2), up2.bias.repeat(4)
        per_row = b * w * 16 * up2.out_channels * keys.element_size()  # largest temporary
        rows = h if torch.is_grad_enabled() else max(1, min(h, MASK_HEAD_TILE_BYTES // per_row))
        if rows == h:
            return self._upscale_dot(keys, hyper_t, w1, bias1, w2, bias2, h, w)
        out = keys.new_empty(b, 1, 4 * h, 4 * w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            band = keys[:, r0 * w : r1 * w]
            out[:, :, 4 * r0 : 4 * r1] = self._upscale_dot(
                band, hyper_t, w1, bias1, w2, bias2, r1 - r0, w
            )
        return out

    def _upscale_dot(
        self,
        keys: Tensor,
        hyper_t: Tensor,
        w1: Tensor,
        bias1: Tensor,
        w2: Tensor,
        bias2: Tensor,
        h: int,
        w: int,
    ) -> Tensor:
        """BxhwxC embedding rows (h full rows of width w) -> Bx1x4hx4w logits (see
        :meth:`_mask_head`; w1/w2 from :func:`_subpixel_weight`, hyper_t Bx(C/8)x1)."""
        b = keys.shape[0]
        _, norm, act1, _, act2 = self.output_upscaling
        c1, c2 = w1.shape[0] // 4, w2.shape[0] // 4
        if keys.is_contiguous():
            x = F.linear(keys, w1, bias1)  # B x hw x 4*C1
        else:  # a band of rows: strided across the batch, which bmm reads in place
            x = torch.baddbmm(bias1, keys, w1.t().expand(b, -1, -1))
        x = _activation(
            act1, F.layer_norm(x.view(b, -1, c1), (c1,), norm.weight, norm.bias, norm.eps)
        )
        x = _activation(act2, F.linear(x, w2, bias2))  # B x 4hw x 4*C2
        masks = x.view(b, -1, c2) @ hyper_t  # B x 16hw x 1
        masks = masks.view(b, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, 1, 4 * h, 4 * w)


def _token_layout(x: Tensor) -> Tensor:
    """BxCxHxW -> contiguous BxHWxC (one 2D transpose per image: ~3x faster than the
    strided 3D copy)."""
    b, c = x.shape[:2]
    if b == 1:
        return x.reshape(c, -1).t().contiguous().unsqueeze(0)
    return x.flatten(2).transpose(1, 2).contiguous()


def _residual(x: Tensor, delta: Tensor) -> Tensor:
    """``x + delta``. Without autograd recording, written into ``delta``: a fresh temporary
    the caller no longer needs (saves allocating and faulting in one more BxHWxC tensor)."""
    if torch.is_grad_enabled() or delta.shape != torch.broadcast_shapes(x.shape, delta.shape):
        return x + delta
    return delta.add_(x)


def _activation(act: nn.Module, x: Tensor) -> Tensor:
    """``act(x)``; GELU in place on the temporary ``x`` when no gradient is recorded."""
    if isinstance(act, nn.GELU) and not torch.is_grad_enabled():
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    return act(x)


def _subpixel_weight(conv: nn.ConvTranspose2d) -> Tensor:
    """(4*Cout)xCin matrix of a kernel-2 stride-2 transposed conv: rows ordered (dy, dx, out)."""
    cin, cout = conv.weight.shape[:2]
    return conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)


def _attention(
    attn: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ws: "_Workspace | None" = None,
    out_name: str | None = None,
) -> Tensor:
    """``attn(q=q, k=k, v=v)`` for SAM's ``Attention``: same math, cheaper evaluation.

    Arguments:
      q (Tensor): BqxNqxC queries; k, v (Tensor): BkxNkxC keys and values.
      ws (_Workspace): where the projections of large inputs may be written.
      out_name (str): the workspace buffer the result of many queries may be written to
        (the caller consumes it before that name is used again).

    Either side may have batch 1 while the other has B (prompt sets sharing the image):
    with shared keys (Bk=1) all B*Nq query rows attend to them in one call; with shared
    queries (Bq=1) the queries are projected once and broadcast.

    Between the 4096 image positions and a few prompt tokens, the image side is never
    projected (see :func:`_attention_token_queries` and :func:`_attention_token_keys`)
    while heads x tokens <= the attention's internal width; otherwise the projections go
    through ``scaled_dot_product_attention`` without copying the transposed heads or
    materializing the attention matrix.

    Returns:
      Tensor: max(Bq, Bk) x Nq x C.
    """
    bq, nq, _ = q.shape
    bk, nk, _ = k.shape
    if bk == 1 and bq > 1:  # attention rows are independent: fold the sets into the rows
        return _attention(attn, q.reshape(1, bq * nq, -1), k, v, ws).view(bq, nq, -1)
    if ws is None:
        ws = _Workspace(enabled=False)
    heads = attn.num_heads
    if nq < nk and heads * nq <= attn.internal_dim:
        return _attention_token_queries(attn, q, k, v)
    if nk < nq and heads * nk <= attn.internal_dim:
        return _attention_token_keys(attn, q, k, v, ws, out_name)
    qh = ws.linear("q", q, attn.q_proj).view(bq, nq, heads, -1).transpose(1, 2)
    kh = ws.linear("k", k, attn.k_proj).view(bk, nk, heads, -1).transpose(1, 2)
    vh = ws.linear("v", v, attn.v_proj).view(bk, nk, heads, -1).transpose(1, 2)
    if bq < bk:
        qh = qh.expand(bk, -1, -1, -1)
    out = F.scaled_dot_product_attention(qh, kh, vh)  # B x heads x Nq x d
    return attn.out_proj(out.transpose(1, 2).reshape(out.shape[0], nq, -1))


def _attention_token_queries(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention of a few token queries (BqxTxC) to many keys (BkxNxC).

    Per head h, with projections W (d x C) and biases b, and Q_h = q Wq_h' + bq_h:
      scores = Q_h (k Wk_h' + bk_h)' = (Q_h Wk_h) k' + Q_h bk_h,
      out_h = P (v Wv_h' + bv_h) = (P v) Wv_h' + bv_h (each row of P sums to 1).
    So the queries are carried into the keys' space (HT x C per set) and the N keys and
    values are used as they are: 2*N*H*T*C multiply-adds per set instead of
    2*N*C*d_internal for projecting them.
    """
    bq, t, _ = q.shape
    b = max(bq, k.shape[0])
    heads = attn.num_heads
    d = attn.internal_dim // heads
    qh = attn.q_proj(q).view(bq, t, heads, d) * d**-0.5
    qk = torch.einsum("bthd,hdc->bhtc", qh, attn.k_proj.weight.view(heads, d, -1))
    qb = torch.einsum("bthd,hd->bht", qh, attn.k_proj.bias.view(heads, d))
    scores = torch.baddbmm(  # B x HT x N
        qb.reshape(bq, heads * t, 1).expand(b, -1, -1),
        qk.reshape(bq, heads * t, -1).expand(b, -1, -1),
        k.expand(b, -1, -1).transpose(1, 2),
    )
    pv = torch.matmul(torch.softmax(scores, dim=-1), v).view(b, heads, t, -1)  # B x H x T x C
    out = torch.einsum("bhtc,hdc->bthd", pv, attn.v_proj.weight.view(heads, d, -1))
    return attn.out_proj(out.reshape(b, t, heads * d) + attn.v_proj.bias)


def _attention_token_keys(
    attn: Attention, q: Tensor, k: Tensor, v: Tensor, ws: "_Workspace", out_name: str | None
) -> Tensor:
    """Attention of many queries (BqxNxC, Bq in {1, B}) to a few token keys (BxTxC).

    Per head h: scores = (q Wq_h' + bq_h) K_h' = q (Wq_h' K_h') + bq_h K_h' with the
    projected keys K_h (T x d), and out = sum_h P_h (V_h Wo_h') + bo with the projected
    values V_h and the output projection's columns Wo_h (C x d). Each set's keys and
    values are carried into the queries' space (HT x C), so the N queries are used as
    they are: 2*N*H*T*C multiply-adds per set instead of 2*N*C*d_internal for the query
    and output projections. Scores are laid out HxTxN, so that the softmax over the few
    tokens runs along N-long contiguous rows.
    """
    bq, n, c = q.shape
    b, t, _ = k.shape
    heads = attn.num_heads
    d = attn.internal_dim // heads
    kh = attn.k_proj(k).view(b, t, heads, d) * d**-0.5
    vh = attn.v_proj(v).view(b, t, heads, d)
    kq = torch.einsum("bthd,hdc->bhtc", kh, attn.q_proj.weight.view(heads, d, c))
    bias = torch.einsum("hd,bthd->bht", attn.q_proj.bias.view(heads, d), kh)
    vo = torch.einsum("bthd,ehd->bhte", vh, attn.out_proj.weight.view(-1, heads, d))
    if bq == b:
        scores = torch.baddbmm(
            bias.reshape(b, heads * t, 1), kq.reshape(b, heads * t, c), q.transpose(1, 2)
        )
    else:  # shared queries: one product for all sets
        scores = torch.addmm(bias.reshape(-1, 1), kq.reshape(-1, c), q[0].t())
    p = torch.softmax(scores.view(b, heads, t, n), dim=2).view(b, heads * t, n)
    return ws.baddbmm(out_name, attn.out_proj.bias, p.transpose(1, 2), vo.reshape(b, heads * t, -1))


class _Workspace:
    """Buffers reused for the large temporaries of one decoder call.

    With B prompt sets, each image-side temporary is B x 4096 x C (64 MiB at B=16). glibc
    serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on free, so
    each such temporary costs a page fault per 4 KiB on first touch (about 20 ms per
    64 MiB here) in a host process with default allocator settings (napari, a notebook).
    Writing the temporaries that are consumed right away (``x + pe`` sums, attention
    outputs before their residual, large projections) into per-call buffers pays those
    faults once per buffer instead of once per use.

    Only without autograd and autocast (``out=`` ops record no gradient and are not
    autocast); otherwise, and for small inputs, the plain ops run. A name's previous
    result must be dead when the name is used again: each call site says so.
    """

    MIN_NUMEL = 1 << 20  # below 4 MiB of float32 a fresh allocation is cheap

    def __init__(self, device_type: str = "cpu", *, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = not torch.is_grad_enabled() and not torch.is_autocast_enabled(device_type)
        self.enabled = enabled
        self._bufs: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: torch.Size, like: Tensor) -> Tensor:
        n = shape.numel()
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._bufs[name] = like.new_empty(n)
        return buf[:n].view(shape)

    def add(self, name: str, a: Tensor, b: Tensor) -> Tensor:
        """``a + b``."""
        shape = torch.broadcast_shapes(a.shape, b.shape)
        if not self.enabled or shape.numel() < self.MIN_NUMEL:
            return a + b
        return torch.add(a, b, out=self._buffer(name, shape, a))

    def baddbmm(self, name: str | None, bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """``torch.baddbmm(bias, a, b)``; into the buffer ``name`` when one is given."""
        shape = torch.Size((a.shape[0], a.shape[1], b.shape[2]))
        if name is None or not self.enabled or shape.numel() < self.MIN_NUMEL:
            return torch.baddbmm(bias, a, b)
        return torch.baddbmm(bias, a, b, out=self._buffer(name, shape, a))

    def linear(self, name: str, x: Tensor, layer: nn.Linear) -> Tensor:
        """``layer(x)`` for a ...xCin input."""
        rows = x.numel() // layer.in_features
        if not self.enabled or rows * layer.out_features < self.MIN_NUMEL or not x.is_contiguous():
            return layer(x)
        out = self._buffer(name, torch.Size((rows, layer.out_features)), x)
        x2 = x.view(rows, layer.in_features)
        if layer.bias is None:
            torch.mm(x2, layer.weight.t(), out=out)
        else:
            torch.addmm(layer.bias, x2, layer.weight.t(), out=out)
        return out.view(*x.shape[:-1], layer.out_features)


class PASam(Sam):
    """SAM with a PA-SAM mask decoder.

    Attributes:
      guide_mode (str): how the guide input is built from the image (``"reference"`` for
        the official checkpoint, ``"image"`` for adapters trained with this project).
      variant (str): the builder name (``vit_b``, ``vit_l``, ``vit_h``, ``vit_s256`` ...).
      origin (ModelOrigin): where the weights came from (file, base, untrained, metadata).
    """

    mask_decoder: PAMaskDecoder
    #: the model family: ``"pasam"`` (SAM, optionally with the PA-SAM adapter) or
    #: ``"hq-sam"`` (:class:`pasam_plugins.hq.HQSam`)
    family: str = "pasam"

    def __init__(
        self,
        *,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: PAMaskDecoder,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        guide_mode: GuideMode = "reference",
        variant: str = "custom",
    ) -> None:
        super().__init__(
            image_encoder=image_encoder,
            prompt_encoder=prompt_encoder,
            mask_decoder=mask_decoder,
            pixel_mean=pixel_mean or [123.675, 116.28, 103.53],
            pixel_std=pixel_std or [58.395, 57.12, 57.375],
        )
        if guide_mode not in GUIDE_MODES:
            raise ValueError(f"guide_mode must be one of {GUIDE_MODES}, got {guide_mode!r}")
        self.guide_mode = guide_mode
        self.variant = variant
        #: where the weights came from (set by the loaders; "built" for models made here)
        self.origin = ModelOrigin(
            kind="built",
            variant=variant,
            guide_mode=guide_mode,
            has_adapter=mask_decoder.has_adapter,
        )

    @property
    def has_adapter(self) -> bool:
        return self.mask_decoder.has_adapter

    @property
    def plm(self) -> nn.Module | None:
        """The prompt learning module (:mod:`pasam_plugins.prompt_learning`), or None."""
        return self.mask_decoder.plm

    @property
    def has_additions(self) -> bool:
        """Whether ``use_adapter=True`` differs from plain SAM: a PA-SAM adapter, HQ-SAM's
        HQ output token or a prompt learning module."""
        return self.has_adapter or self.family != "pasam" or self.plm is not None

    @property
    def method_name(self) -> str:
        """The row name of this model's predictions with its additions on: "PA-SAM",
        "HQ-SAM", "SAM + PLM", "PA-SAM + PLM" ...; "SAM" without additions."""
        name = "HQ-SAM" if self.family == "hq-sam" else "PA-SAM" if self.has_adapter else "SAM"
        return f"{name} + PLM" if self.plm is not None else name

    @property
    def has_uncertainty(self) -> bool:
        """Whether predictions carry an uncertainty map and mined points (PA-SAM only)."""
        return self.has_adapter

    # ------------------------------------------------------------- per-image computation
    # The predictor, the trainer and the cache go through these, so that a model family
    # with another per-image input (HQ-SAM's HQ features) needs no change there.
    @property
    def uses_guide(self) -> bool:
        """Whether the decoder needs a per-image tensor besides the embedding (the PA-SAM
        guide; HQ-SAM's HQ features), computed once per image and cached with it."""
        return self.has_adapter

    @property
    def guide_shape(self) -> tuple[int, ...]:
        """Shape of that tensor for one image."""
        g = self.embedding_grid
        return (1, int(self.prompt_encoder.embed_dim), g, g)

    def guide_modules(self) -> list[tuple[str, nn.Module]]:
        """Trainable modules the guide is computed with (hashed whole into the cache key)."""
        if self.has_adapter:
            return [("guiding_conv", self.mask_decoder.guiding_conv)]
        return []

    def encode_image(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Preprocessed 1|Bx3xNxN input -> (image embedding, early encoder features or None)."""
        return self.image_encoder(x), None

    def guide_input(self, x: Tensor, resized_u8: np.ndarray | None, early: Tensor | None) -> Tensor:
        """The frozen per-image input the trained guide is computed from (PA-SAM: the
        4-channel guide input of the guide mode)."""
        return _guide_input(self.guide_mode, x, resized_u8)

    def encode_guide(self, guide_input: Tensor, embedding: Tensor) -> Tensor:
        """The guide the decoder takes, from :meth:`guide_input` (and the embedding)."""
        return self.mask_decoder.encode_guide(guide_input)

    @property
    def img_size(self) -> int:
        """Side of the square model input in pixels (1024 for the official models)."""
        return int(self.image_encoder.img_size)

    @property
    def embedding_grid(self) -> int:
        """Image embedding cells on a side (64 for the official models)."""
        return int(self.prompt_encoder.image_embedding_size[0])

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits and mask prompts (256 for the official models)."""
        return 4 * self.embedding_grid

    def point_label_embeddings(self) -> Tensor:
        """2xC: the prompt encoder's negative (row 0) and positive (row 1) point embeddings."""
        pe = self.prompt_encoder.point_embeddings
        return torch.cat([pe[0].weight, pe[1].weight], dim=0)

    def decode(
        self,
        image_embeddings: Tensor,
        *,
        guide: Tensor | None,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = False,
        mining: MiningMode = "topk",
        use_adapter: bool = True,
        generator: torch.Generator | None = None,
        return_features: bool = False,
    ) -> DecoderOutput:
        """Prompt encoder + decoder for B prompt sets on one image.

        Arguments:
          image_embeddings (Tensor): 1xCxGxG (G = :attr:`embedding_grid`, 64 at 1024 px).
          guide (Tensor): 1xCxGxG guide (None without adapter).
          points (tuple): BxNx2 coordinates in the model's input frame (:attr:`img_size`
            px, 1024 for the official models) and BxN labels.
          boxes (Tensor): Bx4 boxes in the same frame.
          mask_input (Tensor): Bx1x4Gx4G low-res mask logits.
          use_adapter (bool): False: plain SAM from the same weights (no adapter, no HQ
            token, no prompt learning module).
          return_features (bool): also return the decoder's upscaled mask features.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        image_pe = self.prompt_encoder.get_dense_pe()
        if use_adapter and self.plm is not None and sparse.shape[1] > 0:
            sparse = self.plm(sparse, image_embeddings, image_pe)
        return self.mask_decoder(
            image_embeddings,
            image_pe,
            sparse,
            dense,
            multimask_output,
            guide=guide,
            point_label_embeddings=self.point_label_embeddings(),
            mining=mining,
            use_adapter=use_adapter,
            generator=generator,
            return_features=return_features,
        )


# ---------------------------------------------------------------------------------------
# builders


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture of a variant: SAM's ViT image encoder and the input size.

    The input size is part of the variant: the image embedding is
    ``img_size / patch_size`` cells on a side (64 for the official 1024-px models), the
    low-res masks and mask prompts are 4x that, and the PA-SAM guide input is 4x that too.
    """

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14

    @property
    def grid(self) -> int:
        """Image embedding cells on a side."""
        return self.img_size // self.patch_size


ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    "vit_h": EncoderConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": EncoderConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": EncoderConfig(768, 12, 12, (2, 5, 8, 11)),
    # the small-input family trained by this project (model/cards/pasam_micro.md): 256-px
    # input, 16x16 embedding, 64x64 low-res masks; SAM's prompt encoder and mask decoder
    "vit_s256": EncoderConfig(256, 6, 8, (2, 5), img_size=256, window_size=8),
    # small config for CPU tests: same code paths, 2 narrow blocks
    "vit_tiny": EncoderConfig(64, 2, 2, (1,)),
    # the same at a small input size (tests of the non-1024 code paths)
    "vit_tiny256": EncoderConfig(64, 2, 2, (1,), img_size=256, window_size=8),
}
#: the official SAM / PA-SAM variants (1024-px input); every other variant is this project's
OFFICIAL_VARIANTS: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")


def _build(variant: str, *, adapter: bool, guide_mode: GuideMode) -> PASam:
    if variant not in ENCODER_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(ENCODER_CONFIGS)}")
    cfg = ENCODER_CONFIGS[variant]
    prompt_embed_dim = 256
    image_size = cfg.img_size
    image_embedding_size = cfg.grid
    model = PASam(
        image_encoder=ImageEncoderViT(
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(image_embedding_size, image_embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=PAMaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            adapter=adapter,
        ),
        guide_mode=guide_mode,
        variant=variant,
    )
    return model.eval()


def build_pasam(
    variant: str = "vit_b",
    *,
    adapter: bool = True,
    guide_mode: GuideMode = "reference",
) -> PASam:
    """Build a PA-SAM model with freshly initialized weights (load files with
    :func:`pasam_plugins.checkpoint.load_model`)."""
    return _build(variant, adapter=adapter, guide_mode=guide_mode)


def rebuilt_with(
    model: "PASam", build: "Callable[[], PASam]", *, seed: int, new_prefixes: tuple[str, ...]
) -> "PASam":
    """A new model from ``build()`` (its new parts initialized under ``seed``, the global RNG
    left as it was) holding ``model``'s weights and its prompt learning module, on
    ``model``'s device: only parameters under ``new_prefixes`` are not ``model``'s."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        new = build()
    finally:
        torch.random.set_rng_state(state)
    if model.plm is not None:
        from .prompt_learning import attach_plm

        attach_plm(new, seed=seed)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(new_prefixes) for k in missing), missing
    return new.to(next(model.parameters()).device)


pasam_model_registry = {name: partial(build_pasam, name) for name in ENCODER_CONFIGS}
pasam_model_registry["default"] = pasam_model_registry["vit_h"]
