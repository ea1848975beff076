// Autograd for pair_terms at the Autograd key, so gradients also work from LibTorch C++.
// stats and state are outputs without gradient; the backward turns d terms into d stats
// with them and reuses the selection state instead of selecting again.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../ops.h"

namespace hycon_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

constexpr size_t kInputs = 13;  // forward arguments: za, zc, a_ids, c_ids, modes, ...

class PairTermsFunction : public torch::autograd::Function<PairTermsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& za, const Variable& zc,
                               const Variable& a_ids, const Variable& c_ids, at::IntArrayRef modes,
                               at::ArrayRef<double> targets, int64_t h, double gamma,
                               bool select_positives, bool select_negatives, bool pair_selection,
                               bool refinement, int64_t constant_rows) {
    at::Tensor terms, stats, state;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(terms, stats, state) =
          pair_terms(za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives,
                     select_negatives, pair_selection, refinement, constant_rows);
    }
    ctx->save_for_backward({za, zc, a_ids, c_ids, stats, state});
    ctx->saved_data["modes"] = modes.vec();
    ctx->saved_data["targets"] = targets.vec();
    ctx->saved_data["gamma"] = gamma;
    ctx->saved_data["select_positives"] = select_positives;
    ctx->saved_data["select_negatives"] = select_negatives;
    ctx->saved_data["pair_selection"] = pair_selection;
    ctx->saved_data["refinement"] = refinement;
    ctx->saved_data["constant_rows"] = constant_rows;
    ctx->mark_non_differentiable({stats, state});
    ctx->set_materialize_grads(false);  // no zero tensors for the outputs without gradient
    return {terms, stats, state};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    if (!grads[0].defined()) return variable_list(kInputs);  // no gradient reached the op
    const auto saved = ctx->get_saved_variables();
    const auto modes = ctx->saved_data["modes"].toIntVector();
    const auto targets = ctx->saved_data["targets"].toDoubleVector();
    auto [grad_za, grad_zc] = pair_terms_backward(
        grads[0], saved[0], saved[1], saved[2], saved[3], modes, targets,
        ctx->saved_data["gamma"].toDouble(), ctx->saved_data["select_positives"].toBool(),
        ctx->saved_data["select_negatives"].toBool(), ctx->saved_data["pair_selection"].toBool(),
        ctx->saved_data["refinement"].toBool(), saved[4], saved[5],
        ctx->saved_data["constant_rows"].toInt());
    // No gradient for the ids and the non-tensor arguments.
    variable_list out(kInputs);
    out[0] = grad_za;
    out[1] = grad_zc;
    return out;
  }
};

class PairTermsBackwardFunction : public torch::autograd::Function<PairTermsBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const Variable& grad_terms,
                               const Variable& za, const Variable& zc, const Variable& a_ids,
                               const Variable& c_ids, at::IntArrayRef modes,
                               at::ArrayRef<double> targets, double gamma, bool select_positives,
                               bool select_negatives, bool pair_selection, bool refinement,
                               const Variable& stats, const Variable& state,
                               int64_t constant_rows) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_za, grad_zc] = pair_terms_backward(
        grad_terms, za, zc, a_ids, c_ids, modes, targets, gamma, select_positives, select_negatives,
        pair_selection, refinement, stats, state, constant_rows);
    return {grad_za, grad_zc};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "hycon_ext::pair_terms does not support double backward");
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_terms_autograd(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives, bool pair_selection, bool refinement,
    int64_t constant_rows) {
  const auto out =
      PairTermsFunction::apply(za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives,
                               select_negatives, pair_selection, refinement, constant_rows);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> pair_terms_backward_autograd(
    const at::Tensor& grad_terms, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& stats, const at::Tensor& state,
    int64_t constant_rows) {
  const auto out = PairTermsBackwardFunction::apply(
      grad_terms, za, zc, a_ids, c_ids, modes, targets, gamma, select_positives, select_negatives,
      pair_selection, refinement, stats, state, constant_rows);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, Autograd, m) {
  m.impl("pair_terms", &pair_terms_autograd);
  m.impl("pair_terms_backward", &pair_terms_backward_autograd);
}

}  // namespace hycon_ext
