// pair_terms' reduction on the CPU, for loss_values' CPU path (which runs the CPU engine
// directly, to keep its similarity block for the backward; docs/design.md).
#pragma once

#include <ATen/core/Tensor.h>

namespace hycon_ext {

// terms (2, n_modes): per-mode term sums and counts of anchors with positives, from stats
// (N, n_modes, 4), as pair_terms returns them.
at::Tensor terms_from_stats_cpu(const at::Tensor& stats, at::IntArrayRef modes, bool refinement);

// d loss / d stats (N, n_modes, 4) from d loss / d terms (2, n_modes), as pair_terms_backward.
at::Tensor grad_stats_from_terms_cpu(const at::Tensor& grad_terms, const at::Tensor& stats,
                                     at::IntArrayRef modes, bool refinement);

}  // namespace hycon_ext
