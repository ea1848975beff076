// CPU test of the fused CUDA loss's host/device arithmetic (csrc/fused_loss_math.h), run by
// ctest: plain loops that use exactly those functions the way csrc/cuda/fused_loss.cuh does
// (tiles of candidates summed in the compute dtype and flushed to double, stats, terms, losses,
// dL/dS coefficients, the symmetric dZ pass and the softmax backward) must reproduce the CPU
// kernels of loss_values (values, stats, terms, gradients through the C++ autograd) in float32
// and float64, and the float64 CPU op from float32. Exits non-zero on failure.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "fused_loss_math.h"
#include "ops.h"
#include "pair_common.h"

namespace {

using namespace hycon_ext;

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// max |a - b| <= atol + rtol max |b| (NaN only where both are NaN).
bool close(const at::Tensor& a, const at::Tensor& b, double rtol, double atol) {
  const at::Tensor x = a.to(at::kDouble), y = b.to(at::kDouble);
  if (!at::equal(x.isnan(), y.isnan())) return false;
  const at::Tensor finite = y.isnan().logical_not();
  if (finite.sum().item<int64_t>() == 0) return true;
  const double err = (x - y).abs().masked_select(finite).max().item<double>();
  const double scale = y.abs().masked_select(finite).max().item<double>();
  return err <= atol + rtol * scale;
}

struct Problem {
  int64_t k, d, classes;
  double alpha;
  std::vector<double> lambdas;
  bool refinement;
  bool nan;  // one input entry NaN: a whole row of S is NaN
  uint64_t seed;
};

// The fused path's results, computed with fused_loss_math.h in compute dtype T.
template <typename T>
struct Fused {
  at::Tensor losses, terms, stats, grads;  // losses (4,), grads (3K, d) of the three inputs
};

template <typename T>
Fused<T> run_fused(const at::Tensor& x, const at::Tensor& labels, const Problem& p,
                   const at::Tensor& grad_losses) {
  const auto ct = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  const int64_t k = p.k, d = p.d, rows = 3 * k;
  const fused::LossWeights w{{p.lambdas[0], p.lambdas[1], p.lambdas[2]}, p.alpha, p.refinement};
  const at::Tensor z = at::softmax(x, 1, ct).contiguous();
  const at::Tensor s = at::mm(z, z.t()).contiguous();  // the GPU forms these in T as well
  const T* zp = z.data_ptr<T>();
  const T* sp = s.data_ptr<T>();
  const int64_t* lab = labels.data_ptr<int64_t>();
  auto relation = [&](int64_t a, int64_t c) {
    const int64_t ma = fused::row_modality(a, k), mc = fused::row_modality(c, k);
    const int64_t ia = fused::row_sample(a, k), ic = fused::row_sample(c, k);
    return fused::pair_relation(ma == mc, ia == ic, lab[ia] == lab[ic]);
  };

  // Forward: per anchor, candidate tiles of 64 in T flushed to double, over 3 splits.
  constexpr int64_t kTile = 64;
  const int64_t tiles = fused::tile_count(rows, kTile), splits = std::min<int64_t>(3, tiles);
  at::Tensor stats = at::empty({rows, 3, 4}, z.options());
  for (int64_t a = 0; a < rows; ++a) {
    double sum[fused::kSums] = {};
    int64_t count[fused::kCounts] = {};
    for (int64_t sp_i = 0; sp_i < splits; ++sp_i) {
      double part[fused::kSums] = {};
      int part_count[fused::kCounts] = {};
      for (int64_t t = fused::split_first(sp_i, splits, tiles);
           t < fused::split_first(sp_i + 1, splits, tiles); ++t) {
        T tile_sum[fused::kSums] = {};
        for (int64_t c = t * kTile; c < std::min(rows, (t + 1) * kTile); ++c) {
          fused::add_pair(relation(a, c), sp[a * rows + c], static_cast<T>(p.alpha), tile_sum,
                          part_count);
        }
        for (int q = 0; q < fused::kSums; ++q) part[q] += tile_sum[q];
      }
      for (int q = 0; q < fused::kSums; ++q) sum[q] += part[q];
      for (int q = 0; q < fused::kCounts; ++q) count[q] += part_count[q];
    }
    fused::row_stats(sum, count, stats.data_ptr<T>() + a * 12);
  }
  // Epilogue.
  double term_sum[3] = {}, term_count[3] = {};
  const T* st = stats.data_ptr<T>();
  for (int64_t a = 0; a < rows; ++a) {
    for (int m = 0; m < 3; ++m) {
      term_sum[m] += fused::anchor_term(st + (a * 3 + m) * 4, m, w.refinement);
      term_count[m] += st[(a * 3 + m) * 4 + 2] != T(0);
    }
  }
  at::Tensor terms = at::empty({2, 3}, z.options());
  T* tp = terms.data_ptr<T>();
  for (int m = 0; m < 3; ++m) {
    tp[m] = static_cast<T>(term_sum[m]);
    tp[3 + m] = static_cast<T>(term_count[m]);
  }
  at::Tensor losses = at::empty({4}, z.options());
  T* lp = losses.data_ptr<T>();
  fused::losses_from_terms(tp, w, lp, lp + 1, lp + 2, lp + 3);

  // Backward: coefficients, then dZ_r = sum_j pair_grad(r, j) Z_j and the softmax backward.
  const at::Tensor gl = grad_losses.to(ct).contiguous();
  T g_term[3];
  for (int m = 0; m < 3; ++m) g_term[m] = fused::grad_term(gl.data_ptr<T>(), tp, w, m);
  std::vector<T> coef(rows * fused::kCoefs);
  for (int64_t a = 0; a < rows; ++a) {
    fused::row_coefficients(st + a * 12, g_term, w, coef.data() + a * fused::kCoefs);
  }
  at::Tensor grads = at::empty({rows, d}, z.options());
  std::vector<T> dz(d);
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(dz.begin(), dz.end(), T(0));
    for (int64_t j = 0; j < rows; ++j) {
      const T g =
          fused::pair_grad(relation(r, j), sp[r * rows + j], coef.data() + r * fused::kCoefs,
                           coef.data() + j * fused::kCoefs);
      for (int64_t c = 0; c < d; ++c) dz[c] += g * zp[j * d + c];
    }
    double dot = 0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(dz[c]) * zp[r * d + c];
    const T mean = static_cast<T>(dot);
    for (int64_t c = 0; c < d; ++c) {
      grads.data_ptr<T>()[r * d + c] = zp[r * d + c] * (dz[c] - mean);
    }
  }
  return {losses, terms, stats, grads};
}

void test_relations_match_classify_pair() {
  bool ok = true;
  for (int same_modality = 0; same_modality < 2; ++same_modality) {
    for (int same_sample = 0; same_sample < 2; ++same_sample) {
      for (int same_class = 0; same_class < 2; ++same_class) {
        if (same_sample && !same_class) continue;  // a sample has one class in loss_values
        const int rel = fused::pair_relation(same_modality, same_sample, same_class);
        const int expected[3][2] = {{fused::kIntraPos, fused::kIntraNeg},
                                    {fused::kInterPos, fused::kInterNeg},
                                    {fused::kSamePos, -1}};
        int members = 0;
        for (int mode = 0; mode < 3; ++mode) {
          const int cls = classify_pair(mode, same_class ? 0 : 1, same_modality ? 0 : 1,
                                        same_sample ? 0 : 1, 0, 0, 0);
          if (cls == kPositive) ok = ok && rel == expected[mode][0];
          if (cls == kNegative) ok = ok && rel == expected[mode][1];
          members += cls != kIgnored;
        }
        ok = ok && (members == 1 || (members == 0 && rel == fused::kSelf));
      }
    }
  }
  check(ok, "pair_relation agrees with classify_pair for every mode (one relation a pair)");
}

void test_splits_cover_every_tile_once() {
  bool ok = true;
  for (int64_t a_tiles = 1; a_tiles < 400; a_tiles += 7) {
    for (int64_t c_tiles = 1; c_tiles < 300; c_tiles += 11) {
      const int64_t splits = fused::candidate_splits(a_tiles, c_tiles, 132);
      ok = ok && splits >= 1 && splits <= c_tiles && splits <= fused::kMaxSplits;
      ok = ok && fused::split_first(0, splits, c_tiles) == 0 &&
           fused::split_first(splits, splits, c_tiles) == c_tiles;
      for (int64_t s = 0; s < splits; ++s) {
        ok = ok &&
             fused::split_first(s, splits, c_tiles) < fused::split_first(s + 1, splits, c_tiles);
      }
    }
  }
  ok = ok && fused::tile_count(192, 64) == 3 && fused::tile_count(193, 64) == 4 &&
       fused::lane_row(64, 3, 2) == 64 + 3 + 32;
  check(ok, "candidate splits are contiguous, non-empty and cover every tile once");
}

template <typename T>
void test_problem(const Problem& p) {
  const auto ct = std::is_same_v<T, double> ? at::kDouble : at::kFloat;
  const char* name = std::is_same_v<T, double> ? "float64" : "float32";
  at::manual_seed(p.seed);
  const at::Tensor x64 = 2 * at::randn({3 * p.k, p.d}, at::kDouble);
  if (p.nan) x64[4][0] = NAN;
  const at::Tensor labels = at::randint(0, p.classes, {p.k}, at::kLong);
  const at::Tensor weights = at::randn({4}, at::kDouble);

  // The CPU kernels through the dispatcher and the C++ autograd, in T and in float64.
  auto reference = [&](at::ScalarType dtype) {
    const at::Tensor x = x64.to(dtype).detach().requires_grad_(true);
    const auto xs = x.chunk(3);
    const auto out = loss_values(xs[0], xs[1], xs[2], labels, p.alpha, p.lambdas, 1, 1.0, true,
                                 true, false, p.refinement);
    const at::Tensor losses =
        at::stack({std::get<0>(out), std::get<1>(out), std::get<2>(out), std::get<3>(out)});
    (losses * weights.to(losses.scalar_type())).sum().backward();
    return std::tuple{losses.detach(), std::get<5>(out), std::get<6>(out), x.grad()};
  };
  const auto [losses, terms, stats, grads] = reference(ct);
  const auto [losses64, terms64, stats64, grads64] = reference(at::kDouble);
  const Fused<T> f = run_fused<T>(x64.to(ct), labels, p, weights);

  const bool f32 = ct == at::kFloat;
  const double rtol = f32 ? 2e-5 : 1e-11, atol = f32 ? 1e-6 : 1e-13;
  const std::string what = std::string(name) + " K=" + std::to_string(p.k) +
                           " d=" + std::to_string(p.d) + (p.refinement ? "" : " no refinement") +
                           (p.nan ? " with a NaN row" : "");
  check(close(f.stats, stats, rtol, atol), "stats match the CPU kernel, " + what);
  check(close(f.terms, terms, rtol, atol), "terms match the CPU kernel, " + what);
  check(close(f.losses, losses, rtol, atol), "losses match the CPU kernel, " + what);
  if (p.nan) return;  // NaN gradients: their spread is the GEMM's business, not this header's
  check(close(f.grads, grads, f32 ? 1e-4 : 1e-10, atol),
        "gradients match the CPU kernel's autograd, " + what);
  if (f32) {
    check(close(f.losses, losses64, 1e-4, 1e-6) && close(f.grads, grads64, 1e-3, 1e-6),
          "float32 losses and gradients match the float64 CPU op, " + what);
  }
}

}  // namespace

int main() {
  test_relations_match_classify_pair();
  test_splits_cover_every_tile_once();
  const std::vector<Problem> problems = {
      {1, 3, 1, 0.8, {1.0, 1.0, 1.0}, true, false, 1},
      {10, 7, 3, 0.8, {0.5, 2.0, 1.5}, true, false, 2},
      {70, 50, 4, 0.6, {1.0, 0.3, 2.0}, true, false, 3},   // 210 rows: 4 tiles, 3 splits
      {43, 65, 2, 0.8, {1.0, 1.0, 1.0}, false, false, 4},  // no refinement
      {20, 9, 3, 0.8, {1.0, 1.0, 1.0}, true, true, 5},
  };
  for (const auto& p : problems) {
    test_problem<float>(p);
    test_problem<double>(p);
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
