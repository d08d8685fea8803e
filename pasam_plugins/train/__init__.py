"""Training, fine-tuning and data readers for the PA-SAM adapter (SAM itself stays frozen).

Modules: :mod:`.datasets` (image/mask readers), :mod:`.losses` (PA-SAM's loss terms),
:mod:`.trainer` (the paper's training protocol, ``pasam train``), :mod:`.finetune` (fast
small-data fine-tuning on cached embeddings), :mod:`.cli` (``pasam train`` / ``pasam eval``).
"""
