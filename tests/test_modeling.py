"""The network: SAM parity without adapter, batching, mining and Gumbel top-k."""

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, Sam

from pasam_plugins.modeling import _attention, build_pasam, gumbel_topk, pasam_model_registry
from pasam_plugins.predictor import PASamPredictor
from pasam_plugins.testing import make_test_model


def _image(h=300, w=420, seed=1):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[80:200, 100:300] = (220, 40, 40)
    return img


def _plain_sam_copy(model) -> Sam:
    """A segment_anything `Sam` (with SAM's own MaskDecoder class) holding the same weights."""
    dec = model.mask_decoder
    sam_decoder = MaskDecoder(transformer_dim=dec.transformer_dim, transformer=dec.transformer)
    sam = Sam(image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder, mask_decoder=sam_decoder)
    sam_decoder.load_state_dict(
        {k: v for k, v in dec.state_dict().items() if not k.startswith(("guiding_conv", "prompt_adapter"))}
    )
    return sam.eval()


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("adapter_loaded", [False, True])
def test_without_adapter_equals_sam_predictor(multimask, adapter_loaded):
    model = make_test_model(seed=3, adapter=adapter_loaded)
    sam = _plain_sam_copy(model)
    image = _image()
    ref = SamPredictor(sam)
    ref.set_image(image)
    ours = PASamPredictor(model, device="cpu")
    ours.set_image(image)
    prompts = dict(
        point_coords=np.array([[150.0, 120.0], [10.0, 290.0]]),
        point_labels=np.array([1, 0]),
        box=np.array([90, 70, 310, 210]),
    )
    m_ref, s_ref, l_ref = ref.predict(**prompts, multimask_output=multimask)
    if adapter_loaded:
        coords = torch.as_tensor(ours.transform.apply_coords(prompts["point_coords"], ours.original_size), dtype=torch.float)[None]
        labels = torch.as_tensor(prompts["point_labels"])[None]
        box = torch.as_tensor(ours.transform.apply_boxes(prompts["box"][None], ours.original_size), dtype=torch.float)
        out = ours.predict_torch(coords, labels, box, None, multimask, use_adapter=False)
        m, s, low = (t[0].numpy() for t in out)
    else:
        m, s, low = ours.predict(**prompts, multimask_output=multimask)
    assert m.shape == m_ref.shape == (3 if multimask else 1, *image.shape[:2])
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_allclose(s, s_ref, atol=1e-6)
    np.testing.assert_allclose(low, l_ref, atol=1e-5)


def test_adapter_changes_the_output_and_returns_pa_fields():
    model = make_test_model(seed=3)
    pred = PASamPredictor(model, device="cpu")
    pred.set_image(_image())
    box = np.array([90, 70, 310, 210])
    with_adapter = pred.predict(box=box, multimask_output=False)
    assert with_adapter.masks.shape == (1, 300, 420)
    assert with_adapter.scores.shape == (1,)
    assert with_adapter.uncertainty.shape == (300, 420)
    assert with_adapter.uncertainty.dtype == np.float32
    assert 0.0 <= with_adapter.uncertainty.min() <= with_adapter.uncertainty.max() <= 1.0
    assert with_adapter.mined_points.shape == (8, 2)
    assert with_adapter.mined_labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    b = torch.as_tensor(pred.transform.apply_boxes(box[None], pred.original_size), dtype=torch.float)
    sam_only = pred.predict_torch(None, None, b, None, False, use_adapter=False)
    assert not np.allclose(with_adapter.low_res_logits, sam_only.low_res_logits[0].numpy())


def test_batched_prompt_sets_equal_separate_calls():
    torch.manual_seed(0)
    model = make_test_model(seed=5)
    pred = PASamPredictor(model, device="cpu")
    pred.set_image(_image(h=257, w=511))
    b = 6
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(b, 3, 2, generator=g) * 1000
    labels = torch.randint(0, 2, (b, 3), generator=g)
    xy0 = torch.rand(b, 2, generator=g) * 500
    boxes = torch.cat([xy0, xy0 + 20 + torch.rand(b, 2, generator=g) * 400], dim=1)
    mask_in = torch.randn(b, 1, 256, 256, generator=g)
    # with mask prompts (dense embeddings differ per set) and without (block 0 is shared)
    for multimask, masks in ((False, mask_in), (True, mask_in), (False, None), (True, None)):
        batched = pred.predict_torch(coords, labels, boxes, masks, multimask, return_logits=True)
        for i in range(b):
            one = pred.predict_torch(
                coords[i : i + 1], labels[i : i + 1], boxes[i : i + 1],
                None if masks is None else masks[i : i + 1], multimask, return_logits=True
            )
            torch.testing.assert_close(batched.masks[i : i + 1], one.masks, atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(batched.scores[i : i + 1], one.scores, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.uncertainty[i : i + 1], one.uncertainty, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.mined_points[i : i + 1], one.mined_points)
            assert torch.equal(batched.decoder.mined_indices[i], one.decoder.mined_indices[0])


def test_many_prompt_sets_are_decoded_in_passes_under_glibcs_defaults(monkeypatch):
    """Without retain_freed_memory() (napari, library users) a call with many prompt sets is
    decoded in passes whose large tensors glibc reuses instead of mapping them afresh; the
    answer is the one pass's, field by field."""
    import pasam_plugins.predictor as predictor_module

    model = make_test_model(seed=5)
    pred = PASamPredictor(model, device="cpu")
    pred.set_image(_image(h=1024, w=1024))  # masks at the padded input size: 4 MiB per set
    monkeypatch.setattr(predictor_module, "freed_memory_retained", lambda: False)
    assert pred._sets_per_pass(16, False) == 4
    assert pred._sets_per_pass(16, True) == 1  # three masks per set
    assert pred._sets_per_pass(1, False) == 1
    g = torch.Generator().manual_seed(0)
    xy0 = torch.rand(6, 2, generator=g) * 600
    boxes = torch.cat([xy0, xy0 + 50 + torch.rand(6, 2, generator=g) * 350], 1)
    passes = pred.predict_torch(None, None, boxes, None, False, return_logits=True)
    monkeypatch.setattr(predictor_module, "freed_memory_retained", lambda: True)
    assert pred._sets_per_pass(16, False) == 16
    one = pred.predict_torch(None, None, boxes, None, False, return_logits=True)
    for name in ("masks", "scores", "low_res_logits", "uncertainty", "mined_points", "mined_labels"):
        a, b = getattr(passes, name), getattr(one, name)
        assert a.shape == b.shape and a.shape[0] == 6, name
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    assert torch.equal(passes.decoder.mined_indices, one.decoder.mined_indices)
    assert passes.decoder.pa_mask.shape == one.decoder.pa_mask.shape
    # thresholded masks (written into one bool output pass by pass): the same pixels, but
    # for logits within rounding of the threshold
    monkeypatch.setattr(predictor_module, "freed_memory_retained", lambda: False)
    bool_passes = pred.predict_torch(None, None, boxes, None, False).masks
    assert bool_passes.dtype == torch.bool and bool_passes.shape == one.masks.shape
    near = (one.masks - pred.model.mask_threshold).abs() < 1e-3
    assert torch.equal(bool_passes[~near], (one.masks > pred.model.mask_threshold)[~near])


@pytest.mark.parametrize("tokens", [7, 20])
@pytest.mark.parametrize("grad", [False, True])
def test_decoder_blocks_compute_exactly_what_sams_modules_compute(grad, tokens):
    """The adapter path evaluates SAM's attention and mask head its own way (image side
    left unprojected for few tokens, fused attention for many, shared image side, transposed
    convs as matrix products, mask head in row bands without autograd); results and
    gradients must be those of segment_anything's modules."""
    torch.manual_seed(0)
    dec = make_test_model(seed=7).mask_decoder.train(grad)
    b, n, c = 3, 4096, 256
    tok, img = torch.randn(b, tokens, c), torch.randn(b, n, c)
    shared = img[:1]
    attns = [dec.transformer.layers[1].cross_attn_image_to_token, dec.prompt_adapter.cross_attn_token_to_image]
    with torch.set_grad_enabled(grad):
        for attn in attns:
            cases = [  # (queries, keys): per-set both sides, shared image keys, shared image queries
                (attn.forward(tok, img, img), _attention(attn, tok, img, img)),
                (attn(tok, shared.expand(b, -1, -1), shared.expand(b, -1, -1)), _attention(attn, tok, shared, shared)),
                (attn(img, tok, tok), _attention(attn, img, tok, tok)),
                (attn(shared.expand(b, -1, -1), tok, tok), _attention(attn, shared, tok, tok)),
            ]
            for ref, ours in cases:
                torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
        if grad:  # and the same gradients reach the weights and both inputs
            def grads(fn, q, kv):
                q, kv = q.clone().requires_grad_(True), kv.clone().requires_grad_(True)
                attn.zero_grad()
                fn(attn, q, kv, kv).square().mean().backward()
                return [p.grad.clone() for p in attn.parameters()] + [q.grad, kv.grad]

            for q, kv in ((tok, img), (img, tok)):
                want = grads(lambda a, q, k, v: a(q, k, v), q, kv)
                for got, exp in zip(grads(_attention, q, kv), want, strict=True):
                    torch.testing.assert_close(got, exp, atol=1e-6, rtol=1e-4)

        hs, keys = torch.randn(b, 12, c), torch.randn(b, n, c)
        up = dec.output_upscaling(keys.transpose(1, 2).reshape(b, c, 64, 64))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], 1)
        ref = (hyper @ up.flatten(2)).view(b, 4, 256, 256)  # SAM's predict_masks
        for i in range(4):
            ours = dec._mask_head(hs, keys, torch.full((b,), i), 64, 64)
            torch.testing.assert_close(ours, ref[:, i : i + 1], atol=2e-5, rtol=1e-5)
        picked = dec._mask_head(hs, keys, torch.tensor([3, 0, 2]), 64, 64)
        torch.testing.assert_close(picked[:, 0], ref[[0, 1, 2], [3, 0, 2]], atol=2e-5, rtol=1e-5)
    if grad:  # the same gradients reach the weights
        dec.zero_grad()
        ref[:, 2].square().mean().backward()
        expected = [p.grad.clone() for p in dec.output_upscaling.parameters()]
        dec.zero_grad()
        dec._mask_head(hs, keys, torch.full((b,), 2), 64, 64).square().mean().backward()
        for got, want in zip((p.grad for p in dec.output_upscaling.parameters()), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_inference_shortcuts_match_the_autograd_path():
    """Without autograd the decoder writes its large temporaries into reused buffers and runs
    the mask head in row bands (5 sets: uneven bands); with autograd it does neither. Both
    must give the same outputs, for box and many-point prompt sets."""
    model = make_test_model(seed=4)
    dec = model.mask_decoder
    feats = torch.randn(1, 256, 64, 64)
    guide = dec.encode_guide(torch.rand(1, 4, 256, 256))
    boxes = torch.tensor([[10.0, 20.0, 500.0, 600.0]]) + torch.arange(5.0).view(5, 1) * 60
    coords = torch.rand(5, 20, 2, generator=torch.Generator().manual_seed(0)) * 1000
    labels = (torch.arange(20) % 2).expand(5, -1)
    for prompts in ({"boxes": boxes}, {"points": (coords, labels)}):
        with torch.no_grad():
            fast = model.decode(feats, guide=guide, **prompts)
        with torch.enable_grad():
            slow = model.decode(feats, guide=guide, **prompts)
        for name in ("masks", "iou_predictions", "uncertainty", "pa_mask"):
            torch.testing.assert_close(getattr(fast, name), getattr(slow, name).detach(), atol=2e-5, rtol=1e-5)
        assert torch.equal(fast.mined_indices, slow.mined_indices)


def test_mined_indices_are_top_k_in_row_major_order():
    model = make_test_model(seed=2)
    pred = PASamPredictor(model, device="cpu")
    pred.set_image(_image())
    out = pred.predict_torch(None, None, torch.tensor([[100.0, 100.0, 700.0, 600.0]]), None, False).decoder
    unc, r, c = out.uncertainty.flatten(1), out.refined_mask.flatten(1), out.coarse_mask.flatten(1)
    phi = unc * (torch.sigmoid(r) - torch.sigmoid(c))
    pos, neg = out.mined_indices[0, :4], out.mined_indices[0, 4:]
    assert torch.equal(pos, torch.sort(torch.topk(phi[0], 4).indices).values)
    assert torch.equal(neg, torch.sort(torch.topk(-phi[0], 4).indices).values)
    # M_pa is the hard selection of R (where U >= 0.5) and Mc
    torch.testing.assert_close(out.pa_mask, torch.where(out.uncertainty >= 0.5, out.refined_mask, out.coarse_mask))


def test_mining_switch_is_an_argument():
    model = make_test_model(seed=2)
    emb = torch.randn(1, 256, 64, 64)
    guide = model.mask_decoder.encode_guide(torch.randn(1, 4, 256, 256))
    box = torch.tensor([[100.0, 100.0, 700.0, 600.0]])
    off = model.decode(emb, guide=guide, boxes=box, mining="off")
    on = model.decode(emb, guide=guide, boxes=box, mining="topk")
    assert off.mined_indices is None and on.mined_indices.shape == (1, 8)
    assert not torch.allclose(off.masks, on.masks)
    with pytest.raises(ValueError, match="mining"):
        model.decode(emb, guide=guide, boxes=box, mining="sometimes")


def test_gumbel_topk_gives_gradients_to_its_input():
    phi = torch.randn(3, 50, requires_grad=True)
    idx, w = gumbel_topk(phi, 4, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (3, 4) and torch.all(idx[:, 1:] > idx[:, :-1])
    torch.testing.assert_close(w, torch.ones_like(w))  # straight-through: hard forward
    (w * torch.arange(4.0)).sum().backward()
    assert phi.grad is not None and phi.grad.abs().sum() > 0


def test_gumbel_mining_lets_the_mask_loss_train_the_uncertainty_head():
    """Only mining connects U to the output mask; top-k is not differentiable, Gumbel is."""
    model = make_test_model(seed=4)
    model.train()
    emb = torch.randn(1, 256, 64, 64)
    gin = torch.randn(1, 4, 256, 256)
    box = torch.tensor([[100.0, 100.0, 700.0, 600.0]])
    grads = {}
    for mode in ("topk", "gumbel"):
        model.zero_grad(set_to_none=True)
        out = model.decode(emb, guide=model.mask_decoder.encode_guide(gin), boxes=box, mining=mode,
                           generator=torch.Generator().manual_seed(0))
        out.masks.sigmoid().mean().backward()
        g = model.mask_decoder.prompt_adapter.uncertain_mlp.layers[0].weight.grad
        grads[mode] = 0.0 if g is None else float(g.abs().sum())
    assert grads["topk"] == 0.0
    assert grads["gumbel"] > 0.0


def test_registry_has_the_sam_variants_and_a_tiny_config():
    assert {"vit_b", "vit_l", "vit_h", "vit_tiny"} <= set(pasam_model_registry)
    with torch.device("meta"):
        shapes = {name: pasam_model_registry[name]().image_encoder.patch_embed.proj.weight.shape[0]
                  for name in ("vit_b", "vit_l", "vit_h")}
    assert shapes == {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}
    tiny = build_pasam("vit_tiny")
    assert sum(p.numel() for p in tiny.image_encoder.parameters()) < 2_000_000
    with pytest.raises(ValueError, match="unknown variant"):
        build_pasam("vit_q")
    with pytest.raises(ValueError, match="guide_mode"):
        build_pasam("vit_tiny", guide_mode="canny")


def _decoder_inputs(model, b: int, *, points: bool, box: bool, mask: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid, n = model.embedding_grid, model.img_size
    emb = torch.randn(1, 256, grid, grid, generator=g)
    guide = model.mask_decoder.encode_guide(torch.randn(1, 4, 4 * grid, 4 * grid, generator=g))
    pts = None
    if points:
        coords = torch.rand(b, 3, 2, generator=g) * n
        pts = (coords, torch.tensor([[1, 0, 1]] * b, dtype=torch.int))
    boxes = None
    if box:
        xy = torch.rand(b, 2, generator=g) * n / 2
        boxes = torch.cat([xy, xy + n / 4], dim=1)
    masks = torch.randn(b, 1, 4 * grid, 4 * grid, generator=g) if mask else None
    sparse, dense = model.prompt_encoder(points=pts, boxes=boxes, masks=masks)
    return emb, guide, sparse, dense


@pytest.mark.parametrize("variant", ["vit_tiny", "vit_tiny256"])
@pytest.mark.parametrize(
    ("b", "points", "box", "mask", "multimask", "mining"),
    [
        (1, True, False, False, True, "topk"),
        (3, True, True, False, False, "topk"),
        (4, False, True, True, False, "topk"),
        (2, True, True, True, True, "off"),
        (3, True, False, False, False, "gumbel"),
    ],
)
@pytest.mark.parametrize("grad", [False, True])
def test_fast_decoder_equals_the_reference_math(variant, b, points, box, mask, multimask, mining, grad):
    """The fast adapter path and the readable reference (docs/pasam-reference.md) compute the
    same outputs, and the same gradients for every trained parameter."""
    model = make_test_model(seed=5, variant=variant)
    dec = model.mask_decoder
    emb, guide, sparse, dense = _decoder_inputs(model, b, points=points, box=box, mask=mask)
    labels = model.point_label_embeddings()
    outs, grads = [], []
    for fn in (dec.forward, dec.forward_reference):
        kwargs = dict(guide=guide, point_label_embeddings=labels, mining=mining)
        kwargs["generator"] = torch.Generator().manual_seed(11)
        with torch.set_grad_enabled(grad):
            out = fn(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask, **kwargs)
            if grad:
                dec.zero_grad(set_to_none=True)
                (out.masks.square().mean() + out.iou_predictions.sum() + out.uncertainty.mean()).backward(retain_graph=True)
                grads.append({n: p.grad.clone() for n, p in dec.named_parameters() if p.grad is not None})
        outs.append(out)
    fast, ref = outs
    for field in ("masks", "iou_predictions", "uncertainty", "pa_mask", "coarse_mask", "refined_mask"):
        a, r = getattr(fast, field), getattr(ref, field)
        assert a.shape == r.shape, field
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4, msg=field)
    if mining == "off":
        assert fast.mined_indices is None and ref.mined_indices is None
    else:
        assert torch.equal(fast.mined_indices, ref.mined_indices)
    assert torch.equal(fast.mask_index, ref.mask_index)
    if grad:
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for name in grads[0]:
            torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-3, msg=name)
