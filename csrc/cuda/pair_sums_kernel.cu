// CUDA kernels of pair_sums: every pair kept, unweighted (pair_stats.cuh, kSelect = false).
#include <torch/library.h>

#include "pair_stats.cuh"

namespace hycon_ext {
namespace {

at::Tensor pair_sums_cuda(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                          const at::Tensor& c_ids, at::IntArrayRef modes,
                          at::ArrayRef<double> targets) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  return std::get<0>(cuda::pair_stats_forward</*kSelect=*/false>(
      za, zc, a_ids, c_ids, modes, targets, /*h=*/0, /*gamma=*/1.0, false, false));
}

std::tuple<at::Tensor, at::Tensor> pair_sums_backward_cuda(
    const at::Tensor& grad_stats, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, int64_t constant_rows) {
  check_pair_sums_backward_args(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
  return cuda::pair_stats_backward</*kSelect=*/false>(grad_stats, za, zc, a_ids, c_ids, modes,
                                                      targets, /*gamma=*/1.0, false, false,
                                                      at::Tensor(), constant_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("pair_sums", &pair_sums_cuda);
  m.impl("pair_sums_backward", &pair_sums_backward_cuda);
}

}  // namespace hycon_ext
