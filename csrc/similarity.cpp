// The one TORCH_LIBRARY block of hycon_ext (the other ops add TORCH_LIBRARY_FRAGMENTs).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

namespace hycon_ext {

at::Tensor similarity(const at::Tensor& x, const at::Tensor& y) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::similarity", "")
                       .typed<decltype(similarity)>();
  return op.call(x, y);
}

std::tuple<at::Tensor, at::Tensor> similarity_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::similarity_backward", "")
                       .typed<decltype(similarity_backward)>();
  return op.call(grad, x, y);
}

TORCH_LIBRARY(hycon_ext, m) {
  m.def("similarity(Tensor x, Tensor y) -> Tensor");
  m.def("similarity_backward(Tensor grad, Tensor x, Tensor y) -> (Tensor, Tensor)");
}

}  // namespace hycon_ext
