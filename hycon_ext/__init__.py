"""hycon-ext: fast HyCon contrastive losses (Mai et al., TAFFC 2022) as PyTorch custom ops.

Public API: hycon_loss / HyConLoss (docs/losses.md); hycon_terms for distributed training.
The kernels live in hycon_ext.ops, the pure-PyTorch twins in hycon_ext.reference.
"""

from .loss import HyConLoss, HyConOutput, HyConTerms, hycon_loss, hycon_terms, terms_to_output

__all__ = ["HyConLoss", "HyConOutput", "HyConTerms", "hycon_loss", "hycon_terms",
           "terms_to_output"]
