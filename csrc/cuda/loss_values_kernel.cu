// CUDA kernels of loss_values and loss_values_backward. HYCON_CUDA_FUSED=1 selects the fused
// path (fused_loss.cuh) where it applies: without selection, and in the backward for
// d <= kMaxDim (a block holds its dZ rows in registers) and the dtypes its forward produces.
// Everything else, and every call without the variable, runs the generic path of
// csrc/loss_values.cpp (the pair_terms chain), which is the one that has run on a GPU
// (docs/gpu.md).
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../loss_values.h"
#include "../pair_common.h"
#include "fused_loss.cuh"

namespace hycon_ext {
namespace {

// Read on every call (a few hundred ns), so a process can compare both paths.
bool fused_requested() {
  const char* v = std::getenv("HYCON_CUDA_FUSED");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

fused::LossWeights weights(double alpha, at::ArrayRef<double> lambdas, bool refinement) {
  return {{lambdas[0], lambdas[1], lambdas[2]}, alpha, refinement};
}

LossValuesOutputs loss_values_cuda(const at::Tensor& x_l, const at::Tensor& x_a,
                                   const at::Tensor& x_v, const at::Tensor& labels, double alpha,
                                   at::ArrayRef<double> lambdas, int64_t h, double gamma,
                                   bool select_positives, bool select_negatives,
                                   bool pair_selection, bool refinement) {
  if (pair_selection || !fused_requested()) {
    return loss_values_generic(x_l, x_a, x_v, labels, alpha, lambdas, h, gamma, select_positives,
                               select_negatives, pair_selection, refinement);
  }
  check_loss_inputs(x_l, x_a, x_v, labels, lambdas);
  TORCH_CHECK(x_l.size(0) <= (int64_t(1) << 29),
              "x_l must have at most 2^29 samples on the fused CUDA path, got ", x_l.size(0));
  at::AutoDispatchBelowADInplaceOrView guard;
  auto [total, scl, iamcl, iemcl, z, terms, stats] =
      cuda::fused_path::loss_forward(x_l, x_a, x_v, labels, weights(alpha, lambdas, refinement));
  return {total, scl, iamcl, iemcl, z, terms, stats, stats.new_empty({0}), z.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward_cuda(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype) {
  const bool fits = z.dim() == 2 && z.size(1) <= cuda::fused_path::kMaxDim &&
                    cuda::fused_path::fused_dtypes_match(z.scalar_type(), dtype);
  if (pair_selection || !fits || !fused_requested()) {
    return loss_values_backward_generic(grad_losses, labels, z, alpha, lambdas, gamma,
                                        select_positives, select_negatives, pair_selection,
                                        refinement, terms, stats, state, sim, dtype);
  }
  check_loss_backward_args(grad_losses, labels, z, lambdas, terms, sim, dtype);
  check_row_table(stats, "stats", z, 3, kStatCols);
  TORCH_CHECK(stats.scalar_type() == z.scalar_type(), "stats must have the dtype of z (",
              z.scalar_type(), "), got ", stats.scalar_type());
  at::AutoDispatchBelowADInplaceOrView guard;
  return cuda::fused_path::loss_backward(grad_losses, labels, z, terms, stats,
                                         weights(alpha, lambdas, refinement), dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("loss_values", &loss_values_cuda);
  m.impl("loss_values_backward", &loss_values_backward_cuda);
}

}  // namespace hycon_ext
