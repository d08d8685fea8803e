"""The names HQ-SAM's parameters go by in a state dict, shared by
:mod:`pasam_plugins.checkpoint` (which loads HQ-SAM files) and :mod:`pasam_plugins.hq` (which
builds the model), so neither has to import the other for them."""

#: the parameters HQ-SAM adds to SAM's decoder (what ``--train hq`` trains)
HQ_PREFIXES = (
    "hf_token.",
    "hf_mlp.",
    "compress_vit_feat.",
    "embedding_encoder.",
    "embedding_maskfeature.",
)
#: the key that tells an HQ-SAM state dict from a SAM one
HQ_KEY = "mask_decoder.hf_token.weight"
