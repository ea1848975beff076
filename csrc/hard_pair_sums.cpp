#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

namespace hycon_ext {

std::tuple<at::Tensor, at::Tensor> hard_pair_sums(const at::Tensor& za, const at::Tensor& zc,
                                                  const at::Tensor& a_ids, const at::Tensor& c_ids,
                                                  at::IntArrayRef modes,
                                                  at::ArrayRef<double> targets, int64_t h,
                                                  double gamma, bool select_positives,
                                                  bool select_negatives) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::hard_pair_sums", "")
                       .typed<decltype(hard_pair_sums)>();
  return op.call(za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives,
                 select_negatives);
}

std::tuple<at::Tensor, at::Tensor> hard_pair_sums_backward(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    const at::Tensor& state, int64_t constant_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::hard_pair_sums_backward", "")
                       .typed<decltype(hard_pair_sums_backward)>();
  return op.call(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma, select_positives,
                 select_negatives, state, constant_rows);
}

TORCH_LIBRARY_FRAGMENT(hycon_ext, m) {
  m.def(
      "hard_pair_sums(Tensor za, Tensor zc, Tensor a_ids, Tensor c_ids, int[] modes, "
      "float[] targets, int h, float gamma, bool select_positives, bool select_negatives) "
      "-> (Tensor, Tensor)");
  m.def(
      "hard_pair_sums_backward(Tensor grad_stats, Tensor za, Tensor zc, Tensor a_ids, "
      "Tensor c_ids, int[] modes, float[] targets, float gamma, bool select_positives, "
      "bool select_negatives, Tensor state, int constant_rows=0) -> (Tensor, Tensor)");
}

}  // namespace hycon_ext
