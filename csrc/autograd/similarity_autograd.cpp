// Autograd for similarity at the Autograd key, so gradients also work from LibTorch C++.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../ops.h"

namespace hycon_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class SimilarityFunction : public torch::autograd::Function<SimilarityFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& x, const Variable& y) {
    ctx->save_for_backward({x, y});
    at::AutoDispatchBelowADInplaceOrView guard;
    return similarity(x, y);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_x, grad_y] = similarity_backward(grads[0], saved[0], saved[1]);
    return {grad_x, grad_y};
  }
};

// The backward op is differentiable-looking but has no double backward.
class SimilarityBackwardFunction : public torch::autograd::Function<SimilarityBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const Variable& grad, const Variable& x,
                               const Variable& y) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_x, grad_y] = similarity_backward(grad, x, y);
    return {grad_x, grad_y};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "hycon_ext::similarity does not support double backward");
  }
};

at::Tensor similarity_autograd(const at::Tensor& x, const at::Tensor& y) {
  return SimilarityFunction::apply(x, y);
}

std::tuple<at::Tensor, at::Tensor> similarity_backward_autograd(const at::Tensor& grad,
                                                                const at::Tensor& x,
                                                                const at::Tensor& y) {
  const auto out = SimilarityBackwardFunction::apply(grad, x, y);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, Autograd, m) {
  m.impl("similarity", &similarity_autograd);
  m.impl("similarity_backward", &similarity_backward_autograd);
}

}  // namespace hycon_ext
