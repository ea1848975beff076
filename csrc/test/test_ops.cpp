// C++ test of the LibTorch build (run by ctest): the ops are found through the dispatcher,
// their forward values match a hand computation, and backward through the C++ autograd gives
// the gradient that central finite differences of the op predict. Exits non-zero on failure.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <tuple>
#include <vector>

#include "ops.h"

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

using PairSumsFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, at::IntArrayRef, at::ArrayRef<double>);
using HardPairSumsFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                          const at::Tensor&, const at::Tensor&,
                                                          at::IntArrayRef, at::ArrayRef<double>,
                                                          int64_t, double, bool, bool);

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

// d f / d z by central differences, f scalar-valued, z float64.
at::Tensor finite_difference(const std::function<double(const at::Tensor&)>& f,
                             const at::Tensor& z) {
  const double eps = 1e-6;
  at::Tensor grad = at::zeros_like(z);
  at::Tensor probe = z.detach().clone();
  auto flat = probe.view(-1);
  auto out = grad.view(-1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double v = flat[i].item<double>();
    flat[i] = v + eps;
    const double up = f(probe);
    flat[i] = v - eps;
    const double down = f(probe);
    flat[i] = v;
    out[i] = (up - down) / (2 * eps);
  }
  return grad;
}

// Four rows of one modality: samples 0..3, classes 0, 0, 1, 1; every row is an anchor.
struct Problem {
  at::Tensor z, ids;
  Problem() {
    const auto f64 = at::TensorOptions().dtype(at::kDouble);
    z = at::softmax(
        at::tensor({0.3, -1.2, 0.8, 1.5, 0.1, -0.4, -0.7, 0.9, 0.2, 0.6, -0.3, 1.1}, f64)
            .view({4, 3}),
        1);
    ids = at::tensor({0, 0, 0, 0, 0, 1, 1, 0, 2, 1, 0, 3}, at::kLong).view({4, 3});
  }
};

void test_similarity() {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor x = at::tensor({1.0, 2.0, 0.5, -1.0}, f64).view({2, 2});
  const at::Tensor y = at::tensor({0.0, 0.0, 3.0, 1.0, -2.0, 2.0}, f64).view({3, 2});
  // Through the C++ API of ops.h (the dispatcher underneath).
  const at::Tensor s = hycon_ext::similarity(x, y);
  // Hand computation: softmax of a 2-vector (a, b) is (1, e^(b-a)) / (1 + e^(b-a)).
  auto softmax2 = [](double a, double b) {
    const double e = std::exp(b - a);
    return std::pair<double, double>{1 / (1 + e), e / (1 + e)};
  };
  bool ok = s.sizes() == at::IntArrayRef({2, 3});
  const double xs[2][2] = {{1.0, 2.0}, {0.5, -1.0}}, ys[3][2] = {{0, 0}, {3, 1}, {-2, 2}};
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) {
      const auto [p0, p1] = softmax2(xs[i][0], xs[i][1]);
      const auto [q0, q1] = softmax2(ys[j][0], ys[j][1]);
      ok = ok && std::abs(s[i][j].item<double>() - (p0 * q0 + p1 * q1)) < 1e-12;
    }
  }
  check(ok, "similarity forward matches softmax(x) softmax(y)^T by hand");
}

void test_pair_sums() {
  const Problem p;
  const auto op = find_op<PairSumsFn>("hycon_ext::pair_sums");
  const std::vector<int64_t> modes = {0};  // INTRA
  const std::vector<double> targets = {1.0};
  const at::Tensor stats = op.call(p.z, p.z, p.ids, p.ids, modes, targets);

  // Anchor 0 (class 0): positive row 1, negatives rows 2 and 3.
  const at::Tensor s = at::mm(p.z, p.z.t());
  const double s01 = s[0][1].item<double>(), s02 = s[0][2].item<double>(),
               s03 = s[0][3].item<double>();
  const at::Tensor row0 = stats[0][0];
  check(stats.sizes() == at::IntArrayRef({4, 1, 4}), "pair_sums stats shape (N, modes, 4)");
  check(std::abs(row0[0].item<double>() - s01) < 1e-12 &&
            std::abs(row0[1].item<double>() - (s02 + s03)) < 1e-12 &&
            row0[2].item<double>() == 1.0 &&
            std::abs(row0[3].item<double>() - (s01 - 1) * (s01 - 1)) < 1e-12,
        "pair_sums forward matches the hand computation for anchor 0");

  // Backward through the C++ autograd (the Autograd-key kernel) against finite differences.
  const at::Tensor weights = at::tensor({1.0, -0.5, 0.0, 0.25}, p.z.options());
  auto loss_of = [&](const at::Tensor& za) {
    return (op.call(za, p.z, p.ids, p.ids, modes, targets) * weights).sum();
  };
  const at::Tensor za = p.z.detach().clone().requires_grad_(true);
  loss_of(za).backward();
  const at::Tensor expected =
      finite_difference([&](const at::Tensor& z) { return loss_of(z).item<double>(); }, p.z);
  check(za.grad().defined() && at::allclose(za.grad(), expected, 1e-6, 1e-8),
        "pair_sums backward (C++ autograd) matches finite differences");
}

void test_hard_pair_sums() {
  const Problem p;
  const auto op = find_op<HardPairSumsFn>("hycon_ext::hard_pair_sums");
  const std::vector<int64_t> modes = {0, 1};  // INTRA, INTER
  const std::vector<double> targets = {1.0, 0.8};
  // h = 1 of the two negatives, softmax-weighted; positives unselected (their detached
  // weights would make finite differences disagree by design).
  auto run = [&](const at::Tensor& za) {
    return op.call(za, p.z, p.ids, p.ids, modes, targets, 1, 1.0, false, true);
  };
  const auto [stats, state] = run(p.z);
  const at::Tensor s = at::mm(p.z, p.z.t());
  const double s02 = s[0][2].item<double>(), s03 = s[0][3].item<double>();
  check(stats.sizes() == at::IntArrayRef({4, 2, 4}) && state.sizes() == at::IntArrayRef({4, 2, 7}),
        "hard_pair_sums shapes: stats (N, modes, 4), state (N, modes, 7)");
  // One kept negative: its softmax weight is 1, so neg_sum is the larger similarity.
  check(std::abs(stats[0][0][1].item<double>() - std::max(s02, s03)) < 1e-12 &&
            state[0][0][3].item<double>() == (s02 >= s03 ? 2.0 : 3.0),
        "hard_pair_sums keeps the hardest negative of anchor 0");

  const at::Tensor weights = at::tensor({0.5, -1.0, 0.0, 0.3}, p.z.options());
  auto loss_of = [&](const at::Tensor& za) { return (std::get<0>(run(za)) * weights).sum(); };
  const at::Tensor za = p.z.detach().clone().requires_grad_(true);
  loss_of(za).backward();
  const at::Tensor expected =
      finite_difference([&](const at::Tensor& z) { return loss_of(z).item<double>(); }, p.z);
  check(za.grad().defined() && at::allclose(za.grad(), expected, 1e-6, 1e-8),
        "hard_pair_sums backward (C++ autograd) matches finite differences");
}

void test_loss_values() {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto rows = [&](std::initializer_list<double> v) { return at::tensor(v, f64).view({3, 3}); };
  const at::Tensor x_l = rows({0.3, -1.2, 0.8, 1.5, 0.1, -0.4, 0.5, 0.2, -0.9});
  const at::Tensor x_a = rows({-0.7, 0.9, 0.2, 0.6, -0.3, 1.1, 0.0, 0.4, -0.2});
  const at::Tensor x_v = rows({1.0, 0.2, -0.5, -0.1, 0.7, 0.3, 0.8, -0.6, 0.1});
  const at::Tensor labels = at::tensor({0, 1, 0}, at::kLong);
  const std::vector<double> lambdas = {0.5, 2.0, 1.5};
  auto run = [&](const at::Tensor& a) {
    return hycon_ext::loss_values(x_l, a, x_v, labels, 0.8, lambdas, 1, 1.0, false, true, true,
                                  true);
  };
  const auto out = run(x_a);
  const double total = std::get<0>(out).item<double>(), scl = std::get<1>(out).item<double>(),
               iamcl = std::get<2>(out).item<double>(), iemcl = std::get<3>(out).item<double>();
  check(std::abs(total - (0.5 * iamcl + 2.0 * iemcl + 1.5 * scl)) < 1e-12,
        "loss_values total = lambda-weighted IAMCL, IEMCL, SCL");

  auto total_of = [&](const at::Tensor& a) { return std::get<0>(run(a)); };
  const at::Tensor a = x_a.detach().clone().requires_grad_(true);
  total_of(a).backward();
  const at::Tensor expected =
      finite_difference([&](const at::Tensor& z) { return total_of(z).item<double>(); }, x_a);
  check(a.grad().defined() && at::allclose(a.grad(), expected, 1e-6, 1e-8),
        "loss_values backward (C++ autograd) matches finite differences");
}

}  // namespace

int main() {
  test_similarity();
  test_pair_sums();
  test_hard_pair_sums();
  test_loss_values();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
