// loss_values' shared pieces: the input checks and the generic kernels (CPU engine on CPU, the
// pair_terms chain elsewhere), which the CUDA kernel (csrc/cuda/loss_values_kernel.cu) falls back
// to where its fused path does not apply.
#pragma once

#include <ATen/ATen.h>

#include "ops.h"

namespace hycon_ext {

void check_loss_inputs(const at::Tensor& x_l, const at::Tensor& x_a, const at::Tensor& x_v,
                       const at::Tensor& labels, at::ArrayRef<double> lambdas);

void check_loss_backward_args(const at::Tensor& grad_losses, const at::Tensor& labels,
                              const at::Tensor& z, at::ArrayRef<double> lambdas,
                              const at::Tensor& terms, const at::Tensor& sim, at::ScalarType dtype);

LossValuesOutputs loss_values_generic(const at::Tensor& x_l, const at::Tensor& x_a,
                                      const at::Tensor& x_v, const at::Tensor& labels, double alpha,
                                      at::ArrayRef<double> lambdas, int64_t h, double gamma,
                                      bool select_positives, bool select_negatives,
                                      bool pair_selection, bool refinement);

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward_generic(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype);

}  // namespace hycon_ext
