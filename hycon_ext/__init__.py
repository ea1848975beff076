"""hycon-ext: fast HyCon contrastive losses (Mai et al., TAFFC 2022) as PyTorch custom ops.

Which one to call:
- training on one process: ``hycon_loss`` (a function) or ``HyConLoss`` (an ``nn.Module``,
  also with a cross-batch memory: ``memory_size``); ``hycon_loss_multi`` for any number of
  modalities;
- training across ranks: ``hycon_loss_distributed`` (pairs every local anchor with the global
  batch), or ``hycon_terms`` + ``terms_to_output`` to reduce the terms yourself;
- custom losses: the building-block ops in ``hycon_ext.ops`` (pure-PyTorch twins in
  ``hycon_ext.reference``).
Semantics: docs/losses.md; the op contract: docs/design.md.
"""

__version__ = "0.2.0"

from .distributed import hycon_loss_distributed
from .loss import (
    HyConLoss,
    HyConOutput,
    HyConTerms,
    hycon_loss,
    hycon_loss_multi,
    hycon_terms,
    terms_to_output,
)

__all__ = [
    "HyConLoss",
    "HyConOutput",
    "HyConTerms",
    "__version__",
    "hycon_loss",
    "hycon_loss_distributed",
    "hycon_loss_multi",
    "hycon_terms",
    "terms_to_output",
]
