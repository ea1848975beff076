// The one TORCH_LIBRARY block of hycon_ext (the other ops add TORCH_LIBRARY_FRAGMENTs), and
// similarity's kernels: softmax and matmuls through ATen, so one device-generic implementation
// serves CPU and CUDA. Computed in float32 for float16 / bfloat16 / float32 inputs (float64 for
// float64), returned in the inputs' dtype.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"
#include "pair_common.h"

namespace hycon_ext {
namespace {

at::Tensor similarity_kernel(const at::Tensor& x, const at::Tensor& y) {
  check_similarity_inputs(x, y);
  const auto dtype = compute_dtype(x.scalar_type());
  const at::Tensor zx = at::softmax(as_dtype(x, dtype), 1);
  const at::Tensor zy = at::softmax(as_dtype(y, dtype), 1);
  return as_dtype(at::mm(zx, zy.t()), x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> similarity_backward_kernel(const at::Tensor& grad,
                                                              const at::Tensor& x,
                                                              const at::Tensor& y) {
  check_similarity_inputs(x, y);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == y.size(0),
              "grad must have shape (", x.size(0), ", ", y.size(0), "), got ", grad.sizes());
  const auto dtype = compute_dtype(x.scalar_type());
  const at::Tensor zx = at::softmax(as_dtype(x, dtype), 1);
  const at::Tensor zy = at::softmax(as_dtype(y, dtype), 1);
  const at::Tensor g = as_dtype(grad, dtype);
  // Softmax backward: dz -> z * (dz - <dz, z>) per row.
  const at::Tensor gzx = at::mm(g, zy);
  const at::Tensor gzy = at::mm(g.t(), zx);
  const at::Tensor gx = zx * (gzx - (gzx * zx).sum(1, /*keepdim=*/true));
  const at::Tensor gy = zy * (gzy - (gzy * zy).sum(1, /*keepdim=*/true));
  return {as_dtype(gx, x.scalar_type()), as_dtype(gy, y.scalar_type())};
}

}  // namespace

at::Tensor similarity(const at::Tensor& x, const at::Tensor& y) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::similarity", "")
                       .typed<decltype(similarity)>();
  return op.call(x, y);
}

std::tuple<at::Tensor, at::Tensor> similarity_backward(const at::Tensor& grad, const at::Tensor& x,
                                                       const at::Tensor& y) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::similarity_backward", "")
                       .typed<decltype(similarity_backward)>();
  return op.call(grad, x, y);
}

TORCH_LIBRARY(hycon_ext, m) {
  m.def("similarity(Tensor x, Tensor y) -> Tensor");
  m.def("similarity_backward(Tensor grad, Tensor x, Tensor y) -> (Tensor, Tensor)");
}

// CUDA is registered in CPU-only builds too: the key exists there, and no CUDA tensor can reach it.
TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("similarity", &similarity_kernel);
  m.impl("similarity_backward", &similarity_backward_kernel);
}

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("similarity", &similarity_kernel);
  m.impl("similarity_backward", &similarity_backward_kernel);
}

}  // namespace hycon_ext
