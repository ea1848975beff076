// Autograd for pair_sums at the Autograd key, so gradients also work from LibTorch C++.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../ops.h"

namespace hycon_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class PairSumsFunction : public torch::autograd::Function<PairSumsFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& za, const Variable& zc,
                          const Variable& a_ids, const Variable& c_ids, at::IntArrayRef modes,
                          at::ArrayRef<double> targets) {
    ctx->save_for_backward({za, zc, a_ids, c_ids});
    ctx->saved_data["modes"] = modes.vec();
    ctx->saved_data["targets"] = targets.vec();
    at::AutoDispatchBelowADInplaceOrView guard;
    return pair_sums(za, zc, a_ids, c_ids, modes, targets);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    const auto modes = ctx->saved_data["modes"].toIntVector();
    const auto targets = ctx->saved_data["targets"].toDoubleVector();
    auto [grad_za, grad_zc] =
        pair_sums_backward(grads[0], saved[0], saved[1], saved[2], saved[3], modes, targets);
    // No gradient for the ids, modes and targets.
    return {grad_za, grad_zc, Variable(), Variable(), Variable(), Variable()};
  }
};

class PairSumsBackwardFunction : public torch::autograd::Function<PairSumsBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const Variable& grad_stats,
                               const Variable& za, const Variable& zc, const Variable& a_ids,
                               const Variable& c_ids, at::IntArrayRef modes,
                               at::ArrayRef<double> targets, int64_t constant_rows) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_za, grad_zc] =
        pair_sums_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
    return {grad_za, grad_zc};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "hycon_ext::pair_sums does not support double backward");
  }
};

at::Tensor pair_sums_autograd(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                              const at::Tensor& c_ids, at::IntArrayRef modes,
                              at::ArrayRef<double> targets) {
  return PairSumsFunction::apply(za, zc, a_ids, c_ids, modes, targets);
}

std::tuple<at::Tensor, at::Tensor> pair_sums_backward_autograd(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, int64_t constant_rows) {
  const auto out = PairSumsBackwardFunction::apply(grad_stats, za, zc, a_ids, c_ids, modes, targets,
                                                   constant_rows);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, Autograd, m) {
  m.impl("pair_sums", &pair_sums_autograd);
  m.impl("pair_sums_backward", &pair_sums_backward_autograd);
}

}  // namespace hycon_ext
