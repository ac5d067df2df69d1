"""A fused pooling kernel for extraction on the CPU, compiled once per environment on first use.

torch pools one activation in four operations (a copy for ``first``, a batched matmul for ``mean``, ``amax`` for
``max``, a concatenating cast to the stored dtype), each reading the (B, T, D) tensor again, each starting on
caches the model's matrix products have just swept. This kernel reads each row's real tokens once and writes
``first``, ``last``, ``mean`` and ``max`` straight into the block buffer in the stored dtype (its cost against
torch's: BENCHMARKS.md, Extraction).

It is built for this CPU on first use (spin_cache.native: a C++ compiler and ninja, cached under
``~/.cache/spin-cache/kernels``). Where it cannot be built, pooling falls back to torch with a warning;
``SPIN_CACHE_FUSED_POOLING=0`` turns it off. Results do not depend on the number of threads (each task pools one
row's slice of columns on its own), so a store is the same however the threads were set while it was made.
``first``, ``last`` and ``max`` equal torch's bit for bit; ``mean`` sums in float32 token by token, so it may
differ from torch's matmul in the last bit of the stored value.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from .. import native

ENVIRONMENT_SWITCH = "SPIN_CACHE_FUSED_POOLING"
NO_COLUMN = -1  # a pooling the caller does not want

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

namespace {

constexpr int64_t kColumns = 256;  // columns per task: its sums and maxima stay in L1

// Magnitudes from which float32 values convert to inf in each stored type (round to nearest even).
template <typename Out> constexpr float overflow_from();
template <> constexpr float overflow_from<at::Half>() { return 0x1.ffep+15f; }  // 65520
template <> constexpr float overflow_from<at::BFloat16>() { return 0x1.ffp+127f; }
template <> constexpr float overflow_from<float>() { return std::numeric_limits<float>::infinity(); }

template <typename Out>
int64_t pool_rows(const float* x, int64_t batch, int64_t tokens, int64_t width, const int64_t* starts,
                  const int64_t* stops, Out* out, int64_t out_stride, int64_t first, int64_t last, int64_t mean,
                  int64_t max) {
  const int64_t slices = (width + kColumns - 1) / kColumns;
  const bool reduce = mean >= 0 || max >= 0;
  std::atomic<int64_t> not_finite{0};
  at::parallel_for(0, batch * slices, 1, [&](int64_t begin, int64_t end) {
    float sum[kColumns], best[kColumns];
    int64_t bad = 0;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / slices, h0 = (task % slices) * kColumns;
      const int64_t n = std::min(kColumns, width - h0), a = starts[row], e = stops[row];
      const float* values = x + row * tokens * width + h0;
      Out* target = out + row * out_stride + h0;
      // counted on the float32 values (NaN fails every comparison): a vectorised pass, no conversion back
      auto put = [&](int64_t column, const float* pooled) {
        Out* o = target + column;
        int count = 0;
        for (int64_t h = 0; h < n; ++h) o[h] = static_cast<Out>(pooled[h]);
        for (int64_t h = 0; h < n; ++h) count += !(std::fabs(pooled[h]) < overflow_from<Out>());  // 2 loops: faster
        bad += count;
      };
      if (first >= 0) put(first, values + a * width);
      if (last >= 0) put(last, values + (e - 1) * width);
      if (!reduce) continue;
      const float* r = values + a * width;
      for (int64_t h = 0; h < n; ++h) sum[h] = best[h] = r[h];
      for (int64_t t = a + 1; t < e; ++t) {
        r = values + t * width;
        for (int64_t h = 0; h < n; ++h) {
          sum[h] += r[h];
          best[h] = r[h] > best[h] ? r[h] : best[h];
        }
      }
      // a NaN or inf among the real tokens makes the sum non-finite: such a row is reported, whatever was
      // asked for, so that the caller redoes the batch with torch (whose max propagates NaN)
      int count = 0;
      for (int64_t h = 0; h < n; ++h) count += !(std::fabs(sum[h]) < overflow_from<float>());
      bad += count;
      if (mean >= 0) {
        const float inverse = 1.0f / static_cast<float>(e - a);
        for (int64_t h = 0; h < n; ++h) sum[h] *= inverse;
        put(mean, sum);
      }
      if (max >= 0) put(max, best);
    }
    not_finite += bad;
  });
  return not_finite.load();
}

}  // namespace

// states (B, T, D) float32, contiguous; starts/stops (B) int64: each row's real tokens are [start, stop);
// out (B, >= D) float16, bfloat16 or float32 with unit column stride. Writes each wanted pooling at its column
// offset of out (-1: not wanted). Returns how many written values are not finite, plus one per column whose
// real tokens hold a NaN or inf.
int64_t pool_into(torch::Tensor states, torch::Tensor starts, torch::Tensor stops, torch::Tensor out,
                  int64_t first, int64_t last, int64_t mean, int64_t max) {
  TORCH_CHECK(states.dim() == 3 && states.is_contiguous() && states.scalar_type() == torch::kFloat32,
              "states must be a contiguous float32 (batch, tokens, width) tensor");
  TORCH_CHECK(out.dim() == 2 && out.stride(1) == 1 && out.size(0) == states.size(0), "out must be (batch, columns)");
  TORCH_CHECK(starts.is_contiguous() && stops.is_contiguous() && starts.scalar_type() == torch::kInt64 &&
              stops.scalar_type() == torch::kInt64, "starts and stops must be contiguous int64");
  const int64_t batch = states.size(0), tokens = states.size(1), width = states.size(2);
  for (int64_t column : {first, last, mean, max})
    TORCH_CHECK(column < 0 || column + width <= out.size(1), "a pooling's columns end beyond out");
  TORCH_CHECK(starts.numel() == batch && stops.numel() == batch, "starts and stops need one entry per row");
  const float* x = states.data_ptr<float>();
  const int64_t* a = starts.data_ptr<int64_t>();
  const int64_t* e = stops.data_ptr<int64_t>();
  switch (out.scalar_type()) {
    case torch::kHalf:
      return pool_rows(x, batch, tokens, width, a, e, out.data_ptr<at::Half>(), out.stride(0), first, last, mean, max);
    case torch::kBFloat16:
      return pool_rows(x, batch, tokens, width, a, e, out.data_ptr<at::BFloat16>(), out.stride(0), first, last, mean,
                       max);
    case torch::kFloat32:
      return pool_rows(x, batch, tokens, width, a, e, out.data_ptr<float>(), out.stride(0), first, last, mean, max);
    default:
      TORCH_CHECK(false, "out must be float16, bfloat16 or float32");
  }
}
"""

_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _build_name() -> str:
    return native.build_name("spin_cache_pool_", _SOURCE)


@functools.lru_cache(maxsize=1)
def fused_pooling() -> Any | None:
    """The compiled kernel module, built on first use; None where it is switched off or cannot be built."""
    if native.switched_off(ENVIRONMENT_SWITCH):
        return None
    return native.build(
        _build_name(),
        _SOURCE,
        ["pool_into"],
        what="fused pooling kernel",
        instead="pooling with torch instead (slower on the CPU)",
        switch=ENVIRONMENT_SWITCH,
    )


def token_spans(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's real tokens as one unbroken span [start, stop) (right or left padding), as two int64 tensors;
    None for a mask the kernel cannot take: not on the CPU, a row without a real token, or a row with gaps."""
    if mask.device.type != "cpu" or mask.dim() != 2 or mask.shape[1] == 0:
        return None
    real = mask.numpy() != 0
    counts = real.sum(axis=1)
    starts = real.argmax(axis=1)
    stops = starts + counts
    last = real.shape[1] - 1 - real[:, ::-1].argmax(axis=1)
    if not counts.all() or not (last + 1 == stops).all():
        return None
    return torch.from_numpy(starts.astype(np.int64)), torch.from_numpy(stops.astype(np.int64))


def can_pool_into(states: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether the kernel takes these tensors (else the caller pools with torch)."""
    return (
        states.device.type == "cpu"
        and out.device.type == "cpu"
        and states.dtype == torch.float32
        and states.dim() == 3
        and states.is_contiguous()
        and out.dtype in _OUT_DTYPES
        and out.dim() == 2
        and out.stride(1) == 1
        and fused_pooling() is not None
    )


def pool_into(
    states: torch.Tensor,
    starts: torch.Tensor,
    stops: torch.Tensor,
    out: torch.Tensor,
    columns: dict[str, int],
) -> int:
    """Pool `states` (B, T, D) over each row's real tokens [starts, stops) into `out`, each pooling at its column
    offset in `columns` ({pooling: column}). Returns the count of values that are not finite (see the source);
    zero means every written value is finite. Check :func:`can_pool_into` first."""
    kernel = fused_pooling()
    assert kernel is not None
    where = [columns.get(p, NO_COLUMN) for p in ("first", "last", "mean", "max")]
    return int(kernel.pool_into(states, starts, stops, out, *where))
