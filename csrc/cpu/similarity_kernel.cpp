// similarity = softmax(x) softmax(y)^T, computed in float32 (float64 for float64 inputs).
#include <torch/library.h>

#include "../pair_common.h"

namespace hycon_ext {
namespace {

at::Tensor similarity_cpu(const at::Tensor& x, const at::Tensor& y) {
  check_similarity_inputs(x, y);
  const auto dtype = compute_dtype(x.scalar_type());
  const at::Tensor zx = at::softmax(x.to(dtype), 1);
  const at::Tensor zy = at::softmax(y.to(dtype), 1);
  return at::mm(zx, zy.t()).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> similarity_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y) {
  check_similarity_inputs(x, y);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == y.size(0),
              "grad must have shape (", x.size(0), ", ", y.size(0), "), got ", grad.sizes());
  const auto dtype = compute_dtype(x.scalar_type());
  const at::Tensor zx = at::softmax(x.to(dtype), 1);
  const at::Tensor zy = at::softmax(y.to(dtype), 1);
  const at::Tensor g = grad.to(dtype);
  // Softmax backward: dz -> z * (dz - <dz, z>) per row.
  const at::Tensor gzx = at::mm(g, zy);
  const at::Tensor gzy = at::mm(g.t(), zx);
  const at::Tensor gx = zx * (gzx - (gzx * zx).sum(1, /*keepdim=*/true));
  const at::Tensor gy = zy * (gzy - (gzy * zy).sum(1, /*keepdim=*/true));
  return {gx.to(x.scalar_type()), gy.to(y.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("similarity", &similarity_cpu);
  m.impl("similarity_backward", &similarity_backward_cpu);
}

}  // namespace hycon_ext
