#include <torch/library.h>

#include "../pair_common.h"
#include "pair_engine.h"

namespace hycon_ext {
namespace {

at::Tensor pair_sums_cpu(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                         const at::Tensor& c_ids, at::IntArrayRef modes,
                         at::ArrayRef<double> targets) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  return std::get<0>(cpu::pair_stats_forward(za, zc, a_ids, c_ids, modes, targets, std::nullopt));
}

std::tuple<at::Tensor, at::Tensor> pair_sums_backward_cpu(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, int64_t constant_rows) {
  check_pair_sums_backward_args(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
  return cpu::pair_stats_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets, std::nullopt,
                                  at::Tensor(), constant_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("pair_sums", &pair_sums_cpu);
  m.impl("pair_sums_backward", &pair_sums_backward_cpu);
}

}  // namespace hycon_ext
