// Autograd for loss_values at the Autograd key: one node for the whole loss. The softmax rows,
// terms, stats, state and kept similarities are outputs without gradient that the backward
// reuses.
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../ops.h"

namespace hycon_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

constexpr size_t kLosses = 4;   // total, scl, iamcl, iemcl
constexpr size_t kInputs = 12;  // forward arguments: x_l, x_a, x_v, labels, alpha, ...

class LossValuesFunction : public torch::autograd::Function<LossValuesFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x_l, const Variable& x_a,
                               const Variable& x_v, const Variable& labels, double alpha,
                               at::ArrayRef<double> lambdas, int64_t h, double gamma,
                               bool select_positives, bool select_negatives, bool pair_selection,
                               bool refinement) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [total, scl, iamcl, iemcl, z, terms, stats, state, sim] =
        loss_values(x_l, x_a, x_v, labels, alpha, lambdas, h, gamma, select_positives,
                    select_negatives, pair_selection, refinement);
    ctx->save_for_backward({labels, z, terms, stats, state, sim});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["lambdas"] = lambdas.vec();
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["select_positives"] = select_positives;
    ctx->saved_data["select_negatives"] = select_negatives;
    ctx->saved_data["pair_selection"] = pair_selection;
    ctx->saved_data["refinement"] = refinement;
    ctx->saved_data["dtype"] = x_l.scalar_type();
    ctx->mark_non_differentiable({z, terms, stats, state, sim});
    // Gradients of unused outputs stay undefined: materialised, they would be zero tensors
    // the size of every output (sim alone is (3K)^2), allocated and cleared for nothing.
    ctx->set_materialize_grads(false);
    return {total, scl, iamcl, iemcl, z, terms, stats, state, sim};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    // The backward reads z and the stats, which carry no history: run under create_graph it
    // would hand out gradients that a second backward takes for constants.
    TORCH_CHECK(!torch::autograd::GradMode::is_enabled(),
                "hycon_ext::loss_values does not support double backward (its backward was run "
                "with create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& terms = saved[2];
    // Losses that do not reach the result get undefined gradients (usually all but total).
    at::Tensor grad_losses = at::zeros({static_cast<int64_t>(kLosses)}, terms.options());
    for (size_t i = 0; i < kLosses; ++i) {
      if (grads[i].defined()) grad_losses.select(0, static_cast<int64_t>(i)).copy_(grads[i]);
    }
    const auto lambdas = ctx->saved_data["lambdas"].toDoubleVector();
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing to record (see the check above)
    auto [grad_l, grad_a, grad_v] = loss_values_backward(
        grad_losses, saved[0], saved[1], ctx->saved_data["alpha"].toDouble(), lambdas,
        ctx->saved_data["gamma"].toDouble(), ctx->saved_data["select_positives"].toBool(),
        ctx->saved_data["select_negatives"].toBool(), ctx->saved_data["pair_selection"].toBool(),
        ctx->saved_data["refinement"].toBool(), terms, saved[3], saved[4], saved[5],
        ctx->saved_data["dtype"].toScalarType());
    // No gradient for the labels and the non-tensor arguments.
    variable_list out(kInputs);
    out[0] = grad_l;
    out[1] = grad_a;
    out[2] = grad_v;
    return out;
  }
};

class LossValuesBackwardFunction : public torch::autograd::Function<LossValuesBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const Variable& grad_losses,
                               const Variable& labels, const Variable& z, double alpha,
                               at::ArrayRef<double> lambdas, double gamma, bool select_positives,
                               bool select_negatives, bool pair_selection, bool refinement,
                               const Variable& terms, const Variable& stats, const Variable& state,
                               const Variable& sim, at::ScalarType dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_l, grad_a, grad_v] = loss_values_backward(
        grad_losses, labels, z, alpha, lambdas, gamma, select_positives, select_negatives,
        pair_selection, refinement, terms, stats, state, sim, dtype);
    return {grad_l, grad_a, grad_v};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "hycon_ext::loss_values does not support double backward");
  }
};

LossValuesOutputs loss_values_autograd(const at::Tensor& x_l, const at::Tensor& x_a,
                                       const at::Tensor& x_v, const at::Tensor& labels,
                                       double alpha, at::ArrayRef<double> lambdas, int64_t h,
                                       double gamma, bool select_positives, bool select_negatives,
                                       bool pair_selection, bool refinement) {
  const auto out =
      LossValuesFunction::apply(x_l, x_a, x_v, labels, alpha, lambdas, h, gamma, select_positives,
                                select_negatives, pair_selection, refinement);
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward_autograd(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype) {
  const auto out = LossValuesBackwardFunction::apply(
      grad_losses, labels, z, alpha, lambdas, gamma, select_positives, select_negatives,
      pair_selection, refinement, terms, stats, state, sim, dtype);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, Autograd, m) {
  m.impl("loss_values", &loss_values_autograd);
  m.impl("loss_values_backward", &loss_values_backward_autograd);
}

}  // namespace hycon_ext
