// Autograd for hard_pair_sums at the Autograd key, so gradients also work from LibTorch C++.
// The selection state is an output without gradient; the backward reuses it instead of
// selecting again.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../ops.h"

namespace hycon_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

constexpr size_t kInputs = 10;  // forward arguments: za, zc, a_ids, c_ids, modes, ...

class HardPairSumsFunction : public torch::autograd::Function<HardPairSumsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& za, const Variable& zc,
                               const Variable& a_ids, const Variable& c_ids, at::IntArrayRef modes,
                               at::ArrayRef<double> targets, int64_t h, double gamma,
                               bool select_positives, bool select_negatives) {
    at::Tensor stats, state;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(stats, state) = hard_pair_sums(za, zc, a_ids, c_ids, modes, targets, h, gamma,
                                              select_positives, select_negatives);
    }
    ctx->save_for_backward({za, zc, a_ids, c_ids, state});
    ctx->saved_data["modes"] = modes.vec();
    ctx->saved_data["targets"] = targets.vec();
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["select_positives"] = select_positives;
    ctx->saved_data["select_negatives"] = select_negatives;
    ctx->mark_non_differentiable({state});
    ctx->set_materialize_grads(false);  // no zero tensors for the outputs without gradient
    return {stats, state};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    if (!grads[0].defined()) return variable_list(kInputs);  // no gradient reached the op
    const auto saved = ctx->get_saved_variables();
    const auto modes = ctx->saved_data["modes"].toIntVector();
    const auto targets = ctx->saved_data["targets"].toDoubleVector();
    auto [grad_za, grad_zc] = hard_pair_sums_backward(
        grads[0], saved[0], saved[1], saved[2], saved[3], modes, targets,
        ctx->saved_data["gamma"].toDouble(), ctx->saved_data["select_positives"].toBool(),
        ctx->saved_data["select_negatives"].toBool(), saved[4]);
    // No gradient for the ids and the non-tensor arguments.
    variable_list out(kInputs);
    out[0] = grad_za;
    out[1] = grad_zc;
    return out;
  }
};

class HardPairSumsBackwardFunction
    : public torch::autograd::Function<HardPairSumsBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const Variable& grad_stats,
                               const Variable& za, const Variable& zc, const Variable& a_ids,
                               const Variable& c_ids, at::IntArrayRef modes,
                               at::ArrayRef<double> targets, double gamma, bool select_positives,
                               bool select_negatives, const Variable& state,
                               int64_t constant_rows) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_za, grad_zc] =
        hard_pair_sums_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma,
                                select_positives, select_negatives, state, constant_rows);
    return {grad_za, grad_zc};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "hycon_ext::hard_pair_sums does not support double backward");
  }
};

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_autograd(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives) {
  const auto out = HardPairSumsFunction::apply(za, zc, a_ids, c_ids, modes, targets, h, gamma,
                                               select_positives, select_negatives);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward_autograd(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows) {
  const auto out =
      HardPairSumsBackwardFunction::apply(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma,
                                          select_positives, select_negatives, state, constant_rows);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, Autograd, m) {
  m.impl("hard_pair_sums", &hard_pair_sums_autograd);
  m.impl("hard_pair_sums_backward", &hard_pair_sums_backward_autograd);
}

}  // namespace hycon_ext
