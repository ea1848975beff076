#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

namespace hycon_ext {

at::Tensor pair_sums(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                     const at::Tensor& c_ids, at::IntArrayRef modes, at::ArrayRef<double> targets) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::pair_sums", "")
                       .typed<decltype(pair_sums)>();
  return op.call(za, zc, a_ids, c_ids, modes, targets);
}

std::tuple<at::Tensor, at::Tensor> pair_sums_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, int64_t constant_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::pair_sums_backward", "")
                       .typed<decltype(pair_sums_backward)>();
  return op.call(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
}

TORCH_LIBRARY_FRAGMENT(hycon_ext, m) {
  m.def(
      "pair_sums(Tensor za, Tensor zc, Tensor a_ids, Tensor c_ids, int[] modes, "
      "float[] targets) -> Tensor");
  m.def(
      "pair_sums_backward(Tensor grad_stats, Tensor za, Tensor zc, Tensor a_ids, "
      "Tensor c_ids, int[] modes, float[] targets, int constant_rows=0) -> (Tensor, Tensor)");
}

}  // namespace hycon_ext
