// pair_terms: the loss terms of pair_sums / hard_pair_sums in one op (docs/design.md), so the
// loss runs one op and one autograd node instead of a few dozen small ones. Device-generic:
// the kernels call pair_sums / hard_pair_sums through the dispatcher, so the same code is the
// CPU and the CUDA kernel; the reduction runs as plain loops on CPU, as at:: ops elsewhere.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops.h"
#include "pair_common.h"
#include "pair_terms.h"

namespace hycon_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_terms(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives, bool pair_selection, bool refinement,
    int64_t constant_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::pair_terms", "")
                       .typed<decltype(pair_terms)>();
  return op.call(za, zc, a_ids, c_ids, modes, targets, h, gamma, select_positives, select_negatives,
                 pair_selection, refinement, constant_rows);
}

std::tuple<at::Tensor, at::Tensor> pair_terms_backward(
    const at::Tensor& grad_terms, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& stats, const at::Tensor& state,
    int64_t constant_rows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::pair_terms_backward", "")
                       .typed<decltype(pair_terms_backward)>();
  return op.call(grad_terms, za, zc, a_ids, c_ids, modes, targets, gamma, select_positives,
                 select_negatives, pair_selection, refinement, stats, state, constant_rows);
}

namespace {

// Per anchor and mode the term is c_ratio * ratio + refine_sum * (c_mean / pos_count + c_sum),
// ratio = pos_sum / (pos_sum + neg_sum + [pos_sum == 0]) (0, not 0/0, without positives):
// (c_ratio, c_mean, c_sum) = (-1, 1, 0) for INTRA / INTER (c_mean = 0 without refinement),
// (0, 0, 1/2) for SAME_SAMPLE. Zero coefficients still multiply, so NaN stats stay NaN.
struct TermCoef {
  double ratio, mean, sum;
};

std::vector<TermCoef> term_coefficients(at::IntArrayRef modes, bool refinement) {
  std::vector<TermCoef> c;
  for (const int64_t mode : modes) {
    const bool same = mode == SAME_SAMPLE;
    c.push_back({same ? 0.0 : -1.0, (!same && refinement) ? 1.0 : 0.0, same ? 0.5 : 0.0});
  }
  return c;
}

// (3, n_modes) rows c_ratio, c_mean, c_sum, on the device of `like`.
at::Tensor coefficient_table(const std::vector<TermCoef>& coef, const at::Tensor& like) {
  const int64_t n = static_cast<int64_t>(coef.size());
  std::vector<double> c(3 * n);
  for (int64_t k = 0; k < n; ++k) {
    c[k] = coef[k].ratio;
    c[n + k] = coef[k].mean;
    c[2 * n + k] = coef[k].sum;
  }
  return at::tensor(c, at::kDouble).view({3, n}).to(like.options(), /*non_blocking=*/true);
}

// The CPU path: plain loops, as a few dozen tiny at:: ops would cost more than the
// whole per-anchor arithmetic. Other devices use the at:: ops below (same formulas).
at::Tensor terms_cpu(const at::Tensor& stats, const std::vector<TermCoef>& coef) {
  const at::Tensor st = stats.contiguous();
  const int64_t n = st.size(0), n_modes = st.size(1);
  at::Tensor terms = at::zeros({2, n_modes}, st.options());
  AT_DISPATCH_FLOATING_TYPES(st.scalar_type(), "hycon_ext_pair_terms", [&] {
    const scalar_t* p = st.data_ptr<scalar_t>();
    scalar_t* out = terms.data_ptr<scalar_t>();
    for (int64_t k = 0; k < n_modes; ++k) {
      const TermCoef c = coef[k];
      double sum = 0;
      int64_t count = 0;
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t* a = p + (i * n_modes + k) * kStatCols;
        const double pos = a[kPosSum], cnt = a[kPosCount];
        const double ratio = pos / (pos + a[kNegSum] + (pos == 0));
        sum += c.ratio * ratio + a[kRefineSum] * (c.mean / std::max(cnt, 1.0) + c.sum);
        count += cnt != 0;
      }
      out[k] = static_cast<scalar_t>(sum);
      out[n_modes + k] = static_cast<scalar_t>(count);
    }
  });
  return terms;
}

at::Tensor grad_stats_cpu(const at::Tensor& grad_terms, const at::Tensor& stats,
                          const std::vector<TermCoef>& coef) {
  const at::Tensor st = stats.contiguous();
  const at::Tensor g = as_dtype(grad_terms, st.scalar_type()).contiguous();
  const int64_t n = st.size(0), n_modes = st.size(1);
  at::Tensor grad = at::empty_like(st);
  AT_DISPATCH_FLOATING_TYPES(st.scalar_type(), "hycon_ext_pair_terms_backward", [&] {
    const scalar_t* p = st.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < n_modes; ++k) {
        const TermCoef c = coef[k];
        const scalar_t* a = p + (i * n_modes + k) * kStatCols;
        scalar_t* d = out + (i * n_modes + k) * kStatCols;
        const double pos = a[kPosSum], g_k = gp[k], g_ratio = g_k * c.ratio;
        const double inv_den = 1.0 / (pos + a[kNegSum] + (pos == 0));
        const double d_neg = -(pos * inv_den * inv_den * g_ratio);
        d[kPosSum] = static_cast<scalar_t>(g_ratio * inv_den + d_neg);
        d[kNegSum] = static_cast<scalar_t>(d_neg);
        d[kPosCount] = 0;
        d[kRefineSum] =
            static_cast<scalar_t>(g_k * (c.mean / std::max<double>(a[kPosCount], 1.0) + c.sum));
      }
    }
  });
  return grad;
}

at::Tensor terms_generic(const at::Tensor& stats, const std::vector<TermCoef>& coef) {
  const at::Tensor c = coefficient_table(coef, stats);
  const at::Tensor pos = stats.select(2, kPosSum), neg = stats.select(2, kNegSum);
  const at::Tensor count = stats.select(2, kPosCount), refine = stats.select(2, kRefineSum);
  const at::Tensor ratio = pos / (pos + neg).add_(pos == 0);
  const at::Tensor per_anchor =
      at::addcmul(ratio * c[0], refine, (c[1] / count.clamp_min(1)).add_(c[2]));
  const at::Tensor counts = count.ne(0).sum({0}, /*keepdim=*/false, stats.scalar_type());
  return at::stack({per_anchor.sum(0), counts});
}

at::Tensor grad_stats_generic(const at::Tensor& grad_terms, const at::Tensor& stats,
                              const std::vector<TermCoef>& coef) {
  const at::Tensor g = as_dtype(grad_terms[0], stats.scalar_type());
  const at::Tensor c = coefficient_table(coef, stats);
  const at::Tensor pos = stats.select(2, kPosSum), neg = stats.select(2, kNegSum);
  const at::Tensor count = stats.select(2, kPosCount);
  const at::Tensor inv_den = (pos + neg).add_(pos == 0).reciprocal_();
  const at::Tensor g_ratio = g * c[0];
  const at::Tensor d_neg = (pos * inv_den).mul_(inv_den).mul_(g_ratio).neg_();
  return at::stack({(g_ratio * inv_den).add_(d_neg), d_neg, at::zeros_like(pos),
                    (c[1] / count.clamp_min(1)).add_(c[2]).mul_(g)},
                   /*dim=*/2);
}

void check_terms_args(const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids,
                      const at::Tensor& c_ids, at::IntArrayRef modes, at::ArrayRef<double> targets,
                      int64_t h, double gamma, bool pair_selection, int64_t constant_rows) {
  check_pair_inputs(za, zc, a_ids, c_ids, modes, targets);
  if (pair_selection) check_selection_args(h, gamma);
  check_constant_rows(constant_rows, zc);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pair_terms_kernel(
    const at::Tensor& za, const at::Tensor& zc, const at::Tensor& a_ids, const at::Tensor& c_ids,
    at::IntArrayRef modes, at::ArrayRef<double> targets, int64_t h, double gamma,
    bool select_positives, bool select_negatives, bool pair_selection, bool refinement,
    int64_t constant_rows) {
  // constant_rows only matters to the backward; checked here so a bad value fails at once.
  check_terms_args(za, zc, a_ids, c_ids, modes, targets, h, gamma, pair_selection, constant_rows);
  at::AutoDispatchBelowADInplaceOrView guard;
  at::Tensor stats, state;
  if (pair_selection) {
    std::tie(stats, state) = hard_pair_sums(za, zc, a_ids, c_ids, modes, targets, h, gamma,
                                            select_positives, select_negatives);
  } else {
    stats = pair_sums(za, zc, a_ids, c_ids, modes, targets);
    state = stats.new_empty({0});
  }
  const auto coef = term_coefficients(modes, refinement);
  const at::Tensor terms = stats.is_cpu() ? terms_cpu(stats, coef) : terms_generic(stats, coef);
  return {terms, stats, state};
}

std::tuple<at::Tensor, at::Tensor> pair_terms_backward_kernel(
    const at::Tensor& grad_terms, const at::Tensor& za, const at::Tensor& zc,
    const at::Tensor& a_ids, const at::Tensor& c_ids, at::IntArrayRef modes,
    at::ArrayRef<double> targets, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& stats, const at::Tensor& state,
    int64_t constant_rows) {
  check_terms_args(za, zc, a_ids, c_ids, modes, targets, /*h=*/1, gamma, pair_selection,
                   constant_rows);
  const int64_t n_modes = static_cast<int64_t>(modes.size());
  check_row_table(stats, "stats", za, n_modes, kStatCols);
  TORCH_CHECK(grad_terms.dim() == 2 && grad_terms.size(0) == 2 && grad_terms.size(1) == n_modes,
              "grad_terms must have shape (2, ", n_modes, "), got ", grad_terms.sizes());
  TORCH_CHECK(grad_terms.device() == za.device(), "grad_terms must be on the device of za (",
              za.device(), "), got ", grad_terms.device());
  TORCH_CHECK(at::isFloatingType(grad_terms.scalar_type()),
              "grad_terms must be a floating tensor, got ", grad_terms.scalar_type());
  at::AutoDispatchBelowADInplaceOrView guard;
  // d term / d stats per anchor; the counts row of terms has no gradient.
  const auto coef = term_coefficients(modes, refinement);
  const at::Tensor grad_stats = stats.is_cpu() ? grad_stats_cpu(grad_terms, stats, coef)
                                               : grad_stats_generic(grad_terms, stats, coef);
  if (pair_selection) {
    return hard_pair_sums_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets, gamma,
                                   select_positives, select_negatives, state, constant_rows);
  }
  return pair_sums_backward(grad_stats, za, zc, a_ids, c_ids, modes, targets, constant_rows);
}

}  // namespace

at::Tensor terms_from_stats_cpu(const at::Tensor& stats, at::IntArrayRef modes, bool refinement) {
  return terms_cpu(stats, term_coefficients(modes, refinement));
}

at::Tensor grad_stats_from_terms_cpu(const at::Tensor& grad_terms, const at::Tensor& stats,
                                     at::IntArrayRef modes, bool refinement) {
  return grad_stats_cpu(grad_terms, stats, term_coefficients(modes, refinement));
}

TORCH_LIBRARY_FRAGMENT(hycon_ext, m) {
  m.def(
      "pair_terms(Tensor za, Tensor zc, Tensor a_ids, Tensor c_ids, int[] modes, "
      "float[] targets, int h, float gamma, bool select_positives, bool select_negatives, "
      "bool pair_selection, bool refinement, int constant_rows=0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pair_terms_backward(Tensor grad_terms, Tensor za, Tensor zc, Tensor a_ids, "
      "Tensor c_ids, int[] modes, float[] targets, float gamma, bool select_positives, "
      "bool select_negatives, bool pair_selection, bool refinement, Tensor stats, Tensor state, "
      "int constant_rows=0) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("pair_terms", &pair_terms_kernel);
  m.impl("pair_terms_backward", &pair_terms_backward_kernel);
}

TORCH_LIBRARY_IMPL(hycon_ext, CUDA, m) {
  m.impl("pair_terms", &pair_terms_kernel);
  m.impl("pair_terms_backward", &pair_terms_backward_kernel);
}

}  // namespace hycon_ext
