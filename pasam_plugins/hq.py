"""HQ-SAM (Ke et al., "Segment Anything in High Quality", NeurIPS 2023) as a model of this project.

Built on the modules of the official ``segment-anything-hq`` package (PyPI, 0.3), not
re-written: its ``ImageEncoderViT`` (which also returns the early-layer features, after the
first global-attention block), its ``MaskDecoderHQ`` (SAM's decoder plus the HQ output token,
its three-layer MLP and the global-local feature fusion) and its ``TwoWayTransformer``.
State dict keys are the package's, so the official ``sam_hq_vit_{b,l,h}.pth`` files load as
they are (:func:`pasam_plugins.checkpoint.load_model` recognizes them by
``mask_decoder.hf_token.weight``).

How it fits the project's pipeline (predictor, cache, ``Segmenter``, trainer):

- the per-image tensor cached with the embedding (PA-SAM's guide) is HQ-SAM's fused
  *HQ features* (``embedding_encoder(embedding) + compress_vit_feat(early features)``),
  which depend on the image only: the package computes them inside every decoder call, this
  project once per image; the result is the same (``tests/test_hq.py`` checks it exactly
  against the package's own ``SamPredictor``).
- inference output: the package's default (``hq_token_only=False``): SAM's selected mask
  logits plus the HQ token's, the paper's "error correction" sum. ``hq_token_only=True``
  gives the HQ token's mask alone.
- ``use_adapter=False`` runs SAM's decoder alone from the same weights (the HQ token then
  takes no part in the attention, so the output is exactly SAM's).
- no uncertainty map and no mined points (those are PA-SAM's); front ends say so.
- training (``pasam train --train hq``): SAM stays frozen; the HQ output token, its MLP and
  the fusion layers are trained with the paper's loss (BCE + dice on the HQ token's mask).
"""

import warnings
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # the package imports timm's deprecated paths and re-registers TinyViT names
    warnings.simplefilter("ignore")
    from segment_anything_hq.modeling.image_encoder import ImageEncoderViT as HQImageEncoderViT
    from segment_anything_hq.modeling.mask_decoder_hq import MaskDecoderHQ
    from segment_anything_hq.modeling.prompt_encoder import PromptEncoder as HQPromptEncoder
    from segment_anything_hq.modeling.transformer import TwoWayTransformer as HQTwoWayTransformer

from .hq_keys import HQ_KEY, HQ_PREFIXES
from .modeling import ENCODER_CONFIGS, DecoderOutput, PASam, capture_output, rebuilt_with

__all__ = ["HQ_KEY", "HQ_PREFIXES", "HQMaskDecoder", "HQSam", "build_hq", "with_hq"]


class HQMaskDecoder(MaskDecoderHQ):
    """The package's ``MaskDecoderHQ`` with this project's decoder interface.

    The modules and the mask computation (``predict_masks``) are the package's; ``forward``
    takes the precomputed HQ features as ``guide`` and returns a :class:`DecoderOutput`.
    The package's own ``forward`` stays reachable as ``MaskDecoderHQ.forward(decoder, ...)``.
    """

    def __init__(self, *, vit_dim: int, transformer_dim: int = 256) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=HQTwoWayTransformer(
                depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8
            ),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            vit_dim=vit_dim,
        )
        #: the prompt learning module (:mod:`pasam_plugins.prompt_learning`), when attached
        self.register_module("plm", None)
        #: inference output: the HQ token's mask alone (True) or SAM's + HQ's (the default)
        self.hq_token_only = False

    @property
    def has_adapter(self) -> bool:  # no PA-SAM adapter
        return False

    def hq_features(self, image_embeddings: Tensor, early: Tensor) -> Tensor:
        """The package's fused HQ features: 1xCxGxG embedding and 1xGxGxD early ViT features
        (channels last, as the encoder returns them) -> 1x(C/8)x4Gx4G."""
        vit_features = early.permute(0, 3, 1, 2)
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(vit_features)

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
        mining: str = "off",
        use_adapter: bool = True,
        generator: torch.Generator | None = None,
        return_features: bool = False,
        hq_token_only: bool | None = None,
    ) -> DecoderOutput:
        """Masks for B prompt sets on one image (``guide``: the HQ features of the image).

        Returns the package's output (one mask: the best of masks 1..3 with
        ``multimask_output``, else mask 0, plus the HQ token's mask) with the HQ token's
        logits apart in ``hq_masks``. ``use_adapter=False``: SAM's decoder alone.
        ``mining``/``generator``/``point_label_embeddings`` are PA-SAM's and are ignored.
        """
        if not use_adapter:
            return self._forward_sam(
                image_embeddings,
                image_pe,
                sparse_prompt_embeddings,
                dense_prompt_embeddings,
                multimask_output,
                return_features,
            )
        if guide is None:
            raise ValueError("HQ-SAM's decoder needs the image's HQ features (guide=)")
        with capture_output(self.output_upscaling, return_features) as captured:
            masks, iou_pred = self.predict_masks(
                image_embeddings=image_embeddings,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse_prompt_embeddings,
                dense_prompt_embeddings=dense_prompt_embeddings,
                hq_features=guide,
            )
        # the selection of the package's MaskDecoderHQ.forward
        b = masks.shape[0]
        if multimask_output:
            mask_slice = slice(1, self.num_mask_tokens - 1)
            iou_pred, max_iou_idx = torch.max(iou_pred[:, mask_slice], dim=1)
            iou_pred = iou_pred.unsqueeze(1)
            masks_multi = masks[:, mask_slice, :, :]
            masks_sam = masks_multi[torch.arange(b, device=masks.device), max_iou_idx].unsqueeze(1)
            mask_index = max_iou_idx + 1
        else:
            iou_pred = iou_pred[:, 0:1]
            masks_sam = masks[:, 0:1]
            mask_index = torch.zeros(b, dtype=torch.long, device=masks.device)
        masks_hq = masks[:, self.num_mask_tokens - 1 : self.num_mask_tokens]
        only = self.hq_token_only if hq_token_only is None else hq_token_only
        out = masks_hq if only else masks_sam + masks_hq
        return DecoderOutput(
            masks=out,
            iou_predictions=iou_pred,
            mask_index=mask_index,
            hq_masks=masks_hq,
            mask_features=captured.get("output"),
        )

    def _forward_sam(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse: Tensor,
        dense: Tensor,
        multimask_output: bool,
        return_features: bool,
    ) -> DecoderOutput:
        """SAM's ``MaskDecoder`` (predict_masks + selection) with the SAM part of the weights:
        the 4 mask tokens only, so the result is exactly SAM's."""
        n = self.num_mask_tokens - 1  # SAM's 4 mask tokens (the package counts the HQ one)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        src = src + dense
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + n), :]
        upscaled = self.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(n)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return DecoderOutput(
            masks=masks[:, mask_slice],
            iou_predictions=iou_pred[:, mask_slice],
            mask_features=upscaled if return_features else None,
        )


class HQSam(PASam):
    """HQ-SAM as a :class:`PASam` (same predictor, cache, segmenter and trainer paths)."""

    family = "hq-sam"
    mask_decoder: HQMaskDecoder  # type: ignore[assignment]

    @property
    def hq_token_only(self) -> bool:
        return bool(self.mask_decoder.hq_token_only)

    @property
    def uses_guide(self) -> bool:
        return True

    @property
    def guide_shape(self) -> tuple[int, ...]:
        return (
            1,
            int(self.mask_decoder.transformer_dim) // 8,
            self.low_res_size,
            self.low_res_size,
        )

    def guide_modules(self) -> list[tuple[str, nn.Module]]:
        d = self.mask_decoder
        return [
            ("compress_vit_feat", d.compress_vit_feat),
            ("embedding_encoder", d.embedding_encoder),
        ]

    def encode_image(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        embedding, interm = self.image_encoder(x)
        return embedding, interm[0]  # after the first global-attention block

    def guide_input(self, x: Tensor, resized_u8: np.ndarray | None, early: Tensor | None) -> Tensor:
        if early is None:
            raise ValueError("HQ-SAM needs the early encoder features of the image")
        return early

    def encode_guide(self, guide_input: Tensor, embedding: Tensor) -> Tensor:
        return self.mask_decoder.hq_features(embedding, guide_input)


def build_hq(variant: str = "vit_b", *, hq_token_only: bool = False) -> HQSam:
    """An HQ-SAM of a variant of :data:`pasam_plugins.modeling.ENCODER_CONFIGS` with freshly
    initialized weights (the official ones are vit_b/l/h at 1024 px)."""
    if variant not in ENCODER_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(ENCODER_CONFIGS)}")
    cfg = ENCODER_CONFIGS[variant]
    prompt_embed_dim = 256
    decoder = HQMaskDecoder(vit_dim=cfg.embed_dim, transformer_dim=prompt_embed_dim)
    decoder.hq_token_only = bool(hq_token_only)
    model = HQSam(
        image_encoder=HQImageEncoderViT(  # type: ignore[arg-type]
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            img_size=cfg.img_size,
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
        prompt_encoder=HQPromptEncoder(  # type: ignore[arg-type]
            embed_dim=prompt_embed_dim,
            image_embedding_size=(cfg.grid, cfg.grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=decoder,  # type: ignore[arg-type]
        variant=variant,
    )
    model.origin = model.origin.derived(family="hq-sam")
    return model.eval()


def with_hq(model: PASam, *, seed: int = 0) -> HQSam:
    """``model`` itself when it is an HQ-SAM, else an HQ-SAM holding its SAM weights with a
    newly initialized (seeded) HQ output token, MLP and fusion layers (and its prompt
    learning module, if it has one)."""
    if isinstance(model, HQSam):
        return model
    if model.has_adapter:
        raise ValueError("HQ-SAM is built on a SAM without PA-SAM adapter")
    new = rebuilt_with(
        model,
        lambda: build_hq(model.variant),
        seed=seed,
        new_prefixes=tuple(f"mask_decoder.{p}" for p in HQ_PREFIXES),
    )
    new.origin = model.origin.derived(family="hq-sam", has_adapter=False)
    return new
