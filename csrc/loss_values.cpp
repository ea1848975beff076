// loss_values: the whole loss of hycon_ext.hycon_loss (paper eq. 16) from the three raw
// modality batches in one op and one autograd node: softmax, row descriptors, pair_terms and
// the lambda-weighted means (docs/design.md). At small K the loss is dominated by per-op and
// per-autograd-node overhead, so fusing the glue matters more than the kernels there.
// The CPU kernel, and the generic path that the CUDA kernel (csrc/cuda/loss_values_kernel.cu)
// runs unless the fused CUDA path applies: the scalar glue runs as plain loops on CPU, at:: ops
// elsewhere (same formulas). On CPU it runs the engine directly rather than through the
// pair_terms op, so that the similarity block, when it fits one chunk, is kept for the backward
// (returned as `sim`; elsewhere and for larger batches sim is empty and the backward recomputes).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cpu/pair_engine.h"
#include "loss_values.h"
#include "ops.h"
#include "pair_common.h"
#include "pair_terms.h"

namespace hycon_ext {

LossValuesOutputs loss_values(const at::Tensor& x_l, const at::Tensor& x_a, const at::Tensor& x_v,
                              const at::Tensor& labels, double alpha, at::ArrayRef<double> lambdas,
                              int64_t h, double gamma, bool select_positives, bool select_negatives,
                              bool pair_selection, bool refinement) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::loss_values", "")
                       .typed<decltype(loss_values)>();
  return op.call(x_l, x_a, x_v, labels, alpha, lambdas, h, gamma, select_positives,
                 select_negatives, pair_selection, refinement);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hycon_ext::loss_values_backward", "")
                       .typed<decltype(loss_values_backward)>();
  return op.call(grad_losses, labels, z, alpha, lambdas, gamma, select_positives, select_negatives,
                 pair_selection, refinement, terms, stats, state, sim, dtype);
}

namespace {

constexpr int64_t kModalities = 3;
// Modes in the order of the terms (iamcl, iemcl, scl), like lambdas.
constexpr std::array<int64_t, 3> kModes = {INTRA, INTER, SAME_SAMPLE};
constexpr int64_t kTerms = static_cast<int64_t>(kModes.size());
// Outputs (total, scl, iamcl, iemcl): where each mode's own loss sits among them.
constexpr std::array<int64_t, 3> kOwnOutput = {2, 3, 1};

std::array<double, 3> mode_targets(double alpha) {
  return {1.0, alpha, alpha};
}

}  // namespace

void check_loss_inputs(const at::Tensor& x_l, const at::Tensor& x_a, const at::Tensor& x_v,
                       const at::Tensor& labels, at::ArrayRef<double> lambdas) {
  check_embeddings(x_l, "x_l");
  for (const auto& [x, name] : {std::pair{&x_a, "x_a"}, std::pair{&x_v, "x_v"}}) {
    check_embeddings(*x, name);
    check_same_kind(x_l, "x_l", *x, name);
    TORCH_CHECK(x->sizes() == x_l.sizes(), name, " must have the shape of x_l ", x_l.sizes(),
                ", got ", x->sizes());
  }
  TORCH_CHECK(x_l.size(0) >= 1 && x_l.size(1) >= 1,
              "x_l must have at least one sample and one feature, got ", x_l.sizes());
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && !at::isComplexType(labels.scalar_type()),
              "labels must hold integer class ids, got ", labels.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x_l.size(0), "labels must have shape (",
              x_l.size(0), ",), got ", labels.sizes());
  TORCH_CHECK(labels.device() == x_l.device(), "labels must be on the device of x_l (",
              x_l.device(), "), got ", labels.device());
  TORCH_CHECK(lambdas.size() == 3, "lambdas must hold three weights (IAMCL, IEMCL, SCL), got ",
              lambdas.size());
}

namespace {

// [class, modality, sample] per row, modality-major (hycon_ext.pairs.row_descriptors).
at::Tensor row_descriptors(const at::Tensor& labels) {
  const int64_t k = labels.size(0);
  if (labels.is_cpu()) {
    const at::Tensor lab = as_dtype(labels, at::kLong).contiguous();
    at::Tensor ids = at::empty({kModalities * k, kDescCols}, lab.options());
    const int64_t* l = lab.data_ptr<int64_t>();
    int64_t* out = ids.data_ptr<int64_t>();
    for (int64_t m = 0; m < kModalities; ++m) {
      for (int64_t i = 0; i < k; ++i, out += kDescCols) {
        out[kDescClass] = l[i];
        out[kDescModality] = m;
        out[kDescSample] = i;
      }
    }
    return ids;
  }
  const auto opts = labels.options().dtype(at::kLong);
  return at::stack({as_dtype(labels, at::kLong).repeat({kModalities}),
                    at::arange(kModalities, opts).repeat_interleave(k),
                    at::arange(k, opts).repeat({kModalities})},
                   1);
}

// (total, scl, iamcl, iemcl) from terms (2, 3): term k = sums[k] / max(counts[k], 1).
std::array<at::Tensor, 4> losses_from_terms(const at::Tensor& terms, at::ArrayRef<double> lambdas) {
  if (terms.is_cpu()) {
    std::array<double, 3> mean{};
    double total = 0;
    AT_DISPATCH_FLOATING_TYPES(terms.scalar_type(), "hycon_ext_loss_values", [&] {
      const scalar_t* t = terms.data_ptr<scalar_t>();
      for (int64_t k = 0; k < kTerms; ++k) {
        mean[k] = static_cast<double>(t[k]) / std::max<double>(t[kTerms + k], 1.0);
        total += lambdas[k] * mean[k];
      }
    });
    const auto opts = terms.options();
    return {at::scalar_tensor(total, opts), at::scalar_tensor(mean[2], opts),
            at::scalar_tensor(mean[0], opts), at::scalar_tensor(mean[1], opts)};
  }
  const at::Tensor means = terms[0] / terms[1].clamp_min(1);
  const at::Tensor total = (means * at::tensor(lambdas.vec(), terms.options())).sum();
  return {total, means[2].clone(), means[0].clone(), means[1].clone()};
}

// d loss / d terms (2, 3) from the gradients of (total, scl, iamcl, iemcl); counts get none.
at::Tensor grad_terms_from_losses(const at::Tensor& grad_losses, const at::Tensor& terms,
                                  at::ArrayRef<double> lambdas) {
  const at::Tensor g = as_dtype(grad_losses, terms.scalar_type()).contiguous();
  if (terms.is_cpu()) {
    at::Tensor grad = at::zeros_like(terms);
    AT_DISPATCH_FLOATING_TYPES(terms.scalar_type(), "hycon_ext_loss_values_backward", [&] {
      const scalar_t* gp = g.data_ptr<scalar_t>();
      const scalar_t* t = terms.data_ptr<scalar_t>();
      scalar_t* out = grad.data_ptr<scalar_t>();
      for (int64_t k = 0; k < kTerms; ++k) {
        out[k] = static_cast<scalar_t>((lambdas[k] * gp[0] + gp[kOwnOutput[k]]) /
                                       std::max<double>(t[kTerms + k], 1.0));
      }
    });
    return grad;
  }
  const at::Tensor own =
      g.index_select(0, at::tensor(std::vector<int64_t>(kOwnOutput.begin(), kOwnOutput.end()),
                                   g.options().dtype(at::kLong)));
  const at::Tensor sums =
      own.add(g[0] * at::tensor(lambdas.vec(), terms.options())).div_(terms[1].clamp_min(1));
  return at::stack({sums, at::zeros_like(sums)});
}

// dL/dx of each modality block of z = softmax(x) (rows modality-major, k per block), each
// written straight into its own (k, d) tensor: dx = z * (dz - <dz, z>) per row. One pass
// instead of a narrow and a softmax-backward op per block, whose per-op overhead dominates at
// small K.
std::array<at::Tensor, kModalities> softmax_backward_cpu(const at::Tensor& grad_z,
                                                         const at::Tensor& z, int64_t k) {
  const int64_t d = z.size(1);
  const at::Tensor g = grad_z.contiguous();
  const at::Tensor zc = z.contiguous();
  std::array<at::Tensor, kModalities> out;
  for (auto& o : out) o = at::empty({k, d}, zc.options());
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "hycon_ext_softmax_backward", [&] {
    const scalar_t* g_ptr = g.data_ptr<scalar_t>();
    const scalar_t* z_ptr = zc.data_ptr<scalar_t>();
    std::array<scalar_t*, kModalities> out_ptr;
    for (int64_t m = 0; m < kModalities; ++m) out_ptr[m] = out[m].data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / d);
    at::parallel_for(0, kModalities * k, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* gr = g_ptr + r * d;
        const scalar_t* zr = z_ptr + r * d;
        scalar_t* o = out_ptr[r / k] + (r % k) * d;
        // Four partial sums, so that consecutive adds do not wait on each other.
        double dot[4] = {0, 0, 0, 0};
        int64_t j = 0;
        for (; j + 4 <= d; j += 4) {
          for (int lane = 0; lane < 4; ++lane) {
            dot[lane] += static_cast<double>(gr[j + lane]) * zr[j + lane];
          }
        }
        for (; j < d; ++j) dot[0] += static_cast<double>(gr[j]) * zr[j];
        const auto mean = static_cast<scalar_t>((dot[0] + dot[1]) + (dot[2] + dot[3]));
        for (int64_t j = 0; j < d; ++j) o[j] = zr[j] * (gr[j] - mean);
      }
    });
  });
  return out;
}

}  // namespace

LossValuesOutputs loss_values_generic(const at::Tensor& x_l, const at::Tensor& x_a,
                                      const at::Tensor& x_v, const at::Tensor& labels, double alpha,
                                      at::ArrayRef<double> lambdas, int64_t h, double gamma,
                                      bool select_positives, bool select_negatives,
                                      bool pair_selection, bool refinement) {
  check_loss_inputs(x_l, x_a, x_v, labels, lambdas);
  if (pair_selection) check_selection_args(h, gamma);
  at::AutoDispatchBelowADInplaceOrView guard;
  const at::Tensor z = at::softmax(at::cat({x_l, x_a, x_v}), 1, compute_dtype(x_l.scalar_type()));
  const at::Tensor ids = row_descriptors(labels);
  at::Tensor terms, stats, state, sim;
  if (z.is_cpu()) {
    std::tie(stats, state) = cpu::pair_stats_forward(
        z, z, ids, ids, kModes, mode_targets(alpha),
        cpu::make_pair_selection(pair_selection, h, gamma, select_positives, select_negatives),
        &sim);
    terms = terms_from_stats_cpu(stats, kModes, refinement);
  } else {
    std::tie(terms, stats, state) =
        pair_terms(z, z, ids, ids, kModes, mode_targets(alpha), h, gamma, select_positives,
                   select_negatives, pair_selection, refinement);
  }
  if (!state.defined()) state = stats.new_empty({0});
  if (!sim.defined()) sim = z.new_empty({0});
  auto [total, scl, iamcl, iemcl] = losses_from_terms(terms, lambdas);
  return {total, scl, iamcl, iemcl, z, terms, stats, state, sim};
}

void check_loss_backward_args(const at::Tensor& grad_losses, const at::Tensor& labels,
                              const at::Tensor& z, at::ArrayRef<double> lambdas,
                              const at::Tensor& terms, const at::Tensor& sim,
                              at::ScalarType dtype) {
  TORCH_CHECK(z.dim() == 2 && z.size(0) % kModalities == 0, "z must have shape (3K, d), got ",
              z.sizes());
  const int64_t k = z.size(0) / kModalities;
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == k, "labels must have shape (", k, ",), got ",
              labels.sizes());
  TORCH_CHECK(grad_losses.dim() == 1 && grad_losses.size(0) == 4,
              "grad_losses must have shape (4,) [total, scl, iamcl, iemcl], got ",
              grad_losses.sizes());
  TORCH_CHECK(grad_losses.device() == z.device() && at::isFloatingType(grad_losses.scalar_type()),
              "grad_losses must be a floating tensor on the device of z (", z.device(), "), got ",
              grad_losses.scalar_type(), " on ", grad_losses.device());
  TORCH_CHECK(labels.device() == z.device(), "labels must be on the device of z (", z.device(),
              "), got ", labels.device());
  TORCH_CHECK(terms.dim() == 2 && terms.size(0) == 2 && terms.size(1) == 3,
              "terms must have shape (2, 3), got ", terms.sizes());
  TORCH_CHECK(lambdas.size() == 3, "lambdas must hold three weights, got ", lambdas.size());
  TORCH_CHECK(at::isFloatingType(dtype), "dtype must be a floating dtype, got ", dtype);
  TORCH_CHECK(
      sim.numel() == 0 || (sim.dim() == 2 && sim.size(0) == z.size(0) && sim.size(1) == z.size(0)),
      "sim must be empty or have shape (", z.size(0), ", ", z.size(0), "), got ", sim.sizes());
  TORCH_CHECK(sim.scalar_type() == z.scalar_type() && sim.device() == z.device(),
              "sim must have the dtype and device of z (", z.scalar_type(), ", ", z.device(),
              "), got ", sim.scalar_type(), " on ", sim.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_values_backward_generic(
    const at::Tensor& grad_losses, const at::Tensor& labels, const at::Tensor& z, double alpha,
    at::ArrayRef<double> lambdas, double gamma, bool select_positives, bool select_negatives,
    bool pair_selection, bool refinement, const at::Tensor& terms, const at::Tensor& stats,
    const at::Tensor& state, const at::Tensor& sim, at::ScalarType dtype) {
  check_loss_backward_args(grad_losses, labels, z, lambdas, terms, sim, dtype);
  const int64_t k = z.size(0) / kModalities;
  at::AutoDispatchBelowADInplaceOrView guard;
  const at::Tensor ids = row_descriptors(labels);
  const at::Tensor grad_terms = grad_terms_from_losses(grad_losses, terms.contiguous(), lambdas);
  if (z.is_cpu()) {
    // pair_terms_backward's checks, then its CPU path with the kept similarities.
    check_row_table(stats, "stats", z, kTerms, kStatCols);
    TORCH_CHECK(stats.scalar_type() == z.scalar_type(), "stats must have the dtype of z (",
                z.scalar_type(), "), got ", stats.scalar_type());
    if (pair_selection) {
      check_selection_args(/*h=*/1, gamma);
      check_selection_state(state, z, kTerms);
    }
    const at::Tensor grad_stats = grad_stats_from_terms_cpu(grad_terms, stats, kModes, refinement);
    const at::Tensor grad_z = cpu::pair_stats_backward_same_rows(
        grad_stats, z, ids, kModes, mode_targets(alpha),
        cpu::make_pair_selection(pair_selection, 0, gamma, select_positives, select_negatives),
        state, sim.numel() > 0 ? sim : at::Tensor());
    auto [grad_l, grad_a, grad_v] = softmax_backward_cpu(grad_z, z, k);
    return {as_dtype(grad_l, dtype), as_dtype(grad_a, dtype), as_dtype(grad_v, dtype)};
  }
  auto [grad_za, grad_zc] = pair_terms_backward(
      grad_terms, z, z, ids, ids, kModes, mode_targets(alpha), gamma, select_positives,
      select_negatives, pair_selection, refinement, stats, state);
  const at::Tensor grad_z = grad_za.add_(grad_zc);
  std::array<at::Tensor, kModalities> grad_x;
  for (int64_t m = 0; m < kModalities; ++m) {
    grad_x[m] = as_dtype(at::_softmax_backward_data(grad_z.narrow(0, m * k, k),
                                                    z.narrow(0, m * k, k), 1, z.scalar_type()),
                         dtype);
  }
  return {grad_x[0], grad_x[1], grad_x[2]};
}

TORCH_LIBRARY_FRAGMENT(hycon_ext, m) {
  m.def(
      "loss_values(Tensor x_l, Tensor x_a, Tensor x_v, Tensor labels, float alpha, "
      "float[] lambdas, int h, float gamma, bool select_positives, bool select_negatives, "
      "bool pair_selection, bool refinement) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "loss_values_backward(Tensor grad_losses, Tensor labels, Tensor z, float alpha, "
      "float[] lambdas, float gamma, bool select_positives, bool select_negatives, "
      "bool pair_selection, bool refinement, Tensor terms, Tensor stats, Tensor state, "
      "Tensor sim, ScalarType dtype) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hycon_ext, CPU, m) {
  m.impl("loss_values", &loss_values_generic);
  m.impl("loss_values_backward", &loss_values_backward_generic);
}

}  // namespace hycon_ext
