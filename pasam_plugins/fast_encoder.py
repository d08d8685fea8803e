"""A faster forward for SAM's ViT image encoder, on SAM's own (unmodified) modules.

:class:`FastImageEncoder` wraps a ``segment_anything`` ``ImageEncoderViT`` and shares all of
its parameters (nothing is copied, so fine-tuning the wrapped encoder changes both). Its
forward computes the same function as the wrapped module's, with three changes in how:

- **fused attention:** windowed and global attention run through
  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on
  CPU and CUDA). SAM's decomposed relative position bias, ``q_i . R_h[y_i - y_j] +
  q_i . R_w[x_i - x_j]``, is passed as the additive attention mask, built from the two small
  per-axis tables (``B x heads x N x h`` and ``... x w``) broadcast to ``N x N``, instead of
  SAM's materialized attention matrix plus two broadcast adds and a separate softmax.
- **precision:** run under ``torch.autocast(dtype=bfloat16)`` by the caller
  (:class:`pasam_plugins.predictor.PASamPredictor`) where the hardware computes bf16
  products fast; the additive mask follows the queries' dtype. The output is float32.
- **channels-last:** the patch embedding's input is given in channels-last layout, so its
  output (which SAM permutes to BxHxWxC) is already in that layout; the neck's input is
  channels-last anyway (a permuted view of BxHxWxC).

The wrapped module's own forward stays the float32 reference (golden and parity tests use
it); :func:`fast_encoder` builds the wrapper, :mod:`pasam_plugins.precision` decides the
dtype.
"""

import torch
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import Tensor, nn
from torch.nn import functional as F


def rel_pos_bias(
    attn: Attention, q: Tensor, size: tuple[int, int], out: Tensor | None = None
) -> Tensor:
    """SAM's decomposed relative position bias as an additive attention mask.

    Arguments:
      attn (Attention): the encoder attention module (its ``rel_pos_h``/``rel_pos_w``).
      q (Tensor): B x heads x N x d queries before scaling (N = h * w).
      size (tuple): (h, w) of the token grid (queries and keys alike).
      out (Tensor or None): a contiguous buffer of at least B*heads*N*N elements of ``q``'s
        dtype to write into (no autograd); None allocates.

    Returns:
      Tensor: B x heads x N x N contiguous, ``q_i . Rh[y_i, y_j] + q_i . Rw[x_i, x_j]`` in
        ``q``'s dtype (SAM's ``add_decomposed_rel_pos`` without the attention matrix).
    """
    h, w = size
    b, heads, n, d = q.shape
    rh = get_rel_pos(h, h, attn.rel_pos_h).to(q.dtype)  # h x h x d (query row, key row)
    rw = get_rel_pos(w, w, attn.rel_pos_w).to(q.dtype)
    r_q = q.reshape(b * heads, h, w, d)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh).unsqueeze(-1)  # BH x h x w x kh x 1
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw).unsqueeze(-2)  # BH x h x w x 1 x kw
    shape = (b * heads, h, w, h, w)
    if torch.compiler.is_compiling() or rel_h.requires_grad or rel_w.requires_grad:
        bias = (rel_h + rel_w).contiguous()  # out= is for neither autograd nor compile
    elif out is not None:
        bias = torch.add(rel_h, rel_w, out=out[: b * heads * n * n].view(shape))
    else:
        # the einsum outputs are permuted views, so a plain sum would come out permuted
        # (and need a copy): write it in the standard layout directly
        bias = torch.add(rel_h, rel_w, out=q.new_empty(shape))
    return bias.view(b, heads, n, n)


class _Scratch:
    """One reusable mask buffer per forward: the global blocks' N x N masks (hundreds of
    MB for the 1024-px models) are written into the same memory instead of a fresh
    allocation each (whose pages the OS would fault in again)."""

    def __init__(self) -> None:
        self.buf: Tensor | None = None

    def get(self, numel: int, like: Tensor) -> Tensor | None:
        if torch.compiler.is_compiling() or torch.is_grad_enabled():
            return None  # inductor plans its own memory; autograd keeps every mask
        buf = self.buf
        if (
            buf is None
            or buf.numel() < numel
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = self.buf = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf


def attention_forward(attn: Attention, x: Tensor, scratch: _Scratch | None = None) -> Tensor:
    """``attn(x)`` (SAM's encoder ``Attention``) with fused attention. x: B x H x W x C."""
    b, h, w, c = x.shape
    heads = attn.num_heads
    n = h * w
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # B x heads x N x d
    mask = None
    if attn.use_rel_pos:
        buf = None if scratch is None else scratch.get(b * heads * n * n, q)
        mask = rel_pos_bias(attn, q, (h, w), out=buf)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


def block_forward(blk: Block, x: Tensor, scratch: _Scratch | None = None) -> Tensor:
    """``blk(x)`` (SAM's encoder ``Block``) with :func:`attention_forward`."""
    shortcut = x
    x = blk.norm1(x)
    if blk.window_size > 0:
        hw = (x.shape[1], x.shape[2])
        x, pad_hw = window_partition(x, blk.window_size)
        x = attention_forward(blk.attn, x, scratch)
        x = window_unpartition(x, blk.window_size, pad_hw, hw)
    else:
        x = attention_forward(blk.attn, x, scratch)
    x = shortcut + x
    return x + blk.mlp(blk.norm2(x))


class FastImageEncoder(nn.Module):
    """SAM's ``ImageEncoderViT`` forward with fused attention (see the module docstring).

    Arguments:
      encoder (ImageEncoderViT): the encoder whose parameters are used (shared, not copied).
      channels_last (bool): feed the patch embedding channels-last.
    """

    def __init__(self, encoder: ImageEncoderViT, *, channels_last: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels_last = channels_last

    @property
    def img_size(self) -> int:
        return int(self.encoder.img_size)

    def forward(self, x: Tensor) -> Tensor:
        """Bx3xSxS preprocessed images -> BxCxGxG embeddings (as the wrapped encoder)."""
        enc = self.encoder
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        scratch = _Scratch()
        for blk in enc.blocks:
            x = block_forward(blk, x, scratch)
        return enc.neck(x.permute(0, 3, 1, 2))


def fast_encoder(encoder: ImageEncoderViT, *, channels_last: bool = True) -> FastImageEncoder:
    """The fused-attention forward of ``encoder`` (its parameters, shared)."""
    return FastImageEncoder(encoder, channels_last=channels_last)
