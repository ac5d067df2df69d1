"""The solver's two matrix products for problems of few outputs, in one C++ kernel built for this CPU.

Every FISTA iteration multiplies the design X (rows, features) by the weights forwards, ``Z = W X^T + b`` (outputs,
rows), and the logits' residuals backwards, ``G = R X`` (outputs, features). With 1-6 outputs (binary problems and
up to 6 classes) both are skinny: BLAS's general products run them at a fraction of the memory bandwidth that a
matrix-vector product reaches, so a 5-class iteration cost ~3x a binary one (BENCHMARKS.md, Loop at scale). This
kernel reads each row of X once per product and keeps every output's partial sums in registers for a few rows at a
time, which brings the 5-class products within reach of the binary ones.

Results do not depend on the number of threads: forwards, each output is one row's own sum; backwards, threads
split the features at multiples of the vector width and every feature sums the rows in the same order. Where the
kernel cannot be built, or for wider output counts and narrow designs (where BLAS is as fast), the products are
torch's; ``SPIN_CACHE_SOLVER_KERNEL=0`` turns the kernel off.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .. import native

ENVIRONMENT_SWITCH = "SPIN_CACHE_SOLVER_KERNEL"
#: Output counts the kernel is built for (1 = binary, one logit); more go to torch's products, which were as fast
#: from 8 outputs on (fewer rows fit in registers at once).
MAX_OUTPUTS = 6
#: Narrower designs go to torch: below this the products cost microseconds and BLAS's were as fast or faster.
MIN_FEATURES = 128

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>

namespace {

// Eight floats: one AVX register; the compiler maps it to this CPU's vectors (-march=native).
typedef float v8 __attribute__((vector_size(32)));
inline v8 load8(const float* p) { v8 v; __builtin_memcpy(&v, p, sizeof v); return v; }
inline void store8(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof v); }

#if defined(__AVX512F__)
constexpr int kRegisters = 32;
#else
constexpr int kRegisters = 16;
#endif

// Rows per step: every (row, output) sum and the rows' vectors must fit in registers.
template <int K> constexpr int rows_per_step() {
  return (8 * (K + 1) + 1 <= kRegisters)   ? 8
         : (4 * (K + 1) + 1 <= kRegisters) ? 4
         : (2 * (K + 1) + 1 <= kRegisters) ? 2
                                           : 1;
}

// Z[c, i] = b[c] + sum_j X[i, j] W[c, j] for rows [begin, end).
template <int K>
void forward_rows(const float* X, const float* W, const float* b, float* Z, int64_t n, int64_t d, int64_t begin,
                  int64_t end) {
  constexpr int R = rows_per_step<K>();
  const int64_t d8 = d - d % 8;
  for (int64_t i = begin; i < end; i += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, end - i));
    const float* x[R];
    for (int r = 0; r < R; ++r) x[r] = X + (i + std::min(r, rows - 1)) * d;
    v8 acc[R][K];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < K; ++c) acc[r][c] = v8{};
    for (int64_t j = 0; j < d8; j += 8) {
      v8 xv[R];
      for (int r = 0; r < R; ++r) xv[r] = load8(x[r] + j);
      for (int c = 0; c < K; ++c) {
        const v8 wv = load8(W + c * d + j);
        for (int r = 0; r < R; ++r) acc[r][c] += xv[r] * wv;
      }
    }
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < K; ++c) {
        float s = 0.f;
        for (int t = 0; t < 8; ++t) s += acc[r][c][t];
        for (int64_t j = d8; j < d; ++j) s += x[r][j] * W[c * d + j];
        Z[c * n + i + r] = s + b[c];
      }
  }
}

// G[c, j] = sum_i R[c, i] X[i, j] for features [j0, j1) (j0 a multiple of 8), rows in order.
template <int K>
void backward_columns(const float* Rs, const float* X, float* G, int64_t n, int64_t d, int64_t j0, int64_t j1) {
  constexpr int R = rows_per_step<K>();
  const int64_t j8 = j0 + (j1 - j0) - (j1 - j0) % 8;
  for (int64_t i = 0; i < n; i += R) {
    const int rows = static_cast<int>(std::min<int64_t>(R, n - i));
    const float* x[R];
    float coef[K][R];
    for (int r = 0; r < R; ++r) {
      x[r] = X + (i + std::min(r, rows - 1)) * d;
      for (int c = 0; c < K; ++c) coef[c][r] = r < rows ? Rs[c * n + i + r] : 0.f;
    }
    for (int64_t j = j0; j < j8; j += 8) {
      v8 xv[R];
      for (int r = 0; r < R; ++r) xv[r] = load8(x[r] + j);
      for (int c = 0; c < K; ++c) {
        v8 g = load8(G + c * d + j);
        for (int r = 0; r < R; ++r) g += coef[c][r] * xv[r];
        store8(G + c * d + j, g);
      }
    }
    for (int64_t j = j8; j < j1; ++j)
      for (int c = 0; c < K; ++c) {
        float g = G[c * d + j];
        for (int r = 0; r < R; ++r) g += coef[c][r] * x[r][j];
        G[c * d + j] = g;
      }
  }
}

template <int K>
void forward(const float* X, const float* W, const float* b, float* Z, int64_t n, int64_t d) {
  at::parallel_for(0, (n + 63) / 64, 1, [&](int64_t begin, int64_t end) {
    forward_rows<K>(X, W, b, Z, n, d, begin * 64, std::min(end * 64, n));
  });
}

template <int K>
void backward(const float* Rs, const float* X, float* G, int64_t n, int64_t d) {
  // Slices of 256 features (a multiple of 8): the same sums in the same order at any thread count.
  constexpr int64_t kSlice = 256;
  at::parallel_for(0, (d + kSlice - 1) / kSlice, 1, [&](int64_t begin, int64_t end) {
    backward_columns<K>(Rs, X, G, n, d, begin * kSlice, std::min(end * kSlice, d));
  });
}

template <int... Ks> struct Dispatch;
template <> struct Dispatch<> {
  static void forward(int, const float*, const float*, const float*, float*, int64_t, int64_t) {
    TORCH_CHECK(false, "spin-cache solver kernel: too many outputs");
  }
  static void backward(int, const float*, const float*, float*, int64_t, int64_t) {
    TORCH_CHECK(false, "spin-cache solver kernel: too many outputs");
  }
};
template <int K, int... Ks> struct Dispatch<K, Ks...> {
  static void forward(int k, const float* X, const float* W, const float* b, float* Z, int64_t n, int64_t d) {
    if (k == K) ::forward<K>(X, W, b, Z, n, d); else Dispatch<Ks...>::forward(k, X, W, b, Z, n, d);
  }
  static void backward(int k, const float* Rs, const float* X, float* G, int64_t n, int64_t d) {
    if (k == K) ::backward<K>(Rs, X, G, n, d); else Dispatch<Ks...>::backward(k, Rs, X, G, n, d);
  }
};
using Outputs = Dispatch<1, 2, 3, 4, 5, 6>;

}  // namespace

torch::Tensor logits(torch::Tensor x, torch::Tensor w, torch::Tensor b) {
  pybind11::gil_scoped_release no_gil;  // tasks of the threads scheduler run their products side by side
  const int64_t n = x.size(0), d = x.size(1), k = w.size(0);
  TORCH_CHECK(w.dim() == 2 && w.size(1) == d && b.numel() == k, "spin-cache solver kernel: shapes do not match");
  auto z = torch::empty({k, n}, x.options());
  Outputs::forward(static_cast<int>(k), x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(),
                   z.data_ptr<float>(), n, d);
  return z;
}

torch::Tensor residual_products(torch::Tensor r, torch::Tensor x) {
  pybind11::gil_scoped_release no_gil;
  const int64_t n = x.size(0), d = x.size(1), k = r.size(0);
  TORCH_CHECK(r.dim() == 2 && r.size(1) == n, "spin-cache solver kernel: shapes do not match");
  auto g = torch::zeros({k, d}, x.options());
  Outputs::backward(static_cast<int>(k), r.data_ptr<float>(), x.data_ptr<float>(), g.data_ptr<float>(), n, d);
  return g;
}
"""


def _build_name() -> str:
    return native.build_name("spin_cache_products_", _SOURCE)


@functools.lru_cache(maxsize=1)
def kernel() -> Any | None:
    """The compiled module, built on first use; None where it is switched off or cannot be built."""
    if native.switched_off(ENVIRONMENT_SWITCH):
        return None
    return native.build(
        _build_name(),
        _SOURCE,
        ["logits", "residual_products"],
        what="solver's product kernel",
        instead="the solver uses torch's products instead (multi-class fits slower)",
        switch=ENVIRONMENT_SWITCH,
    )


def _takes(x: torch.Tensor, outputs: torch.Tensor) -> bool:
    """Whether the kernel takes this design and these (outputs, ...) weights or residuals."""
    return (
        x.dim() == 2
        and outputs.dim() == 2
        and x.dtype == torch.float32
        and outputs.dtype == torch.float32
        and x.device.type == "cpu"
        and outputs.device.type == "cpu"
        and 1 <= outputs.shape[0] <= MAX_OUTPUTS
        and x.shape[1] >= MIN_FEATURES
        and x.is_contiguous()
        and outputs.is_contiguous()
        and kernel() is not None
    )


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``w @ x.T + b[:, None]``: the logits (outputs, rows) of the design `x` (rows, features) under the weights
    `w` (outputs, features) and intercepts `b` (outputs,)."""
    if (
        _takes(x, w)
        and w.shape[1] == x.shape[1]
        and b.shape == (w.shape[0],)
        and b.is_contiguous()
        and b.dtype == torch.float32
    ):
        module = kernel()
        assert module is not None
        out: torch.Tensor = module.logits(x, w, b)
        return out
    if w.shape[0] == 1:  # a matrix-vector product (as a one-row matrix product it is slower)
        return (torch.mv(x, w[0]) + b[0]).unsqueeze(0)
    return torch.addmm(b.unsqueeze(1), w, x.T)


def residual_products(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``r @ x``: the residuals `r` (outputs, rows) weighted over the design's rows, (outputs, features)."""
    if _takes(x, r) and r.shape[1] == x.shape[0]:
        module = kernel()
        assert module is not None
        out: torch.Tensor = module.residual_products(r, x)
        return out
    if r.shape[0] == 1:
        return (r[0] @ x).unsqueeze(0)
    return r @ x
