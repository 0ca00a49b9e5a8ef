// Fused multiresolution hash-grid encoding for the CPU: forward, and backward to the tables and the positions.
//
// The same function as sahs_nerfstudio.kernels.hash_grid_torch.hash_grid_torch (nerfstudio 1.1.5's
// HashEncoding): per level l, scaled = x * scaling[l]; the 8 corners floor(scaled) + {0,1}^3 are hashed with the
// Instant-NGP primes (XOR of the per-axis products, modulo the power-of-two table size, plus the level's offset);
// their features are blended trilinearly with weights from frac = scaled - floor(scaled). The torch version
// materialises eight [N, L, F] gathers and their index_add_ backwards; this one visits each point once.
//
// Parallelism uses ATen's intra-op pool (at::parallel_for), which is OpenMP in torch's builds: the extension must be
// compiled and linked with -fopenmp (hash_grid.py does), else the pragma inside at::parallel_for is ignored and every
// call runs on one thread. torch.set_num_threads then governs it (threads_in_parallel_for says how many ran). The table gradient
// is split by level (levels own disjoint rows of the table), so threads never write the same row: no atomics, and
// the result does not depend on the thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr uint32_t kPrimeZ = 805459861u;

template <typename scalar_t>
struct Corners {
  int64_t index[8];
  scalar_t frac[3];
};

// Row indices of the 8 corners (bit 0: x + 1, bit 1: y + 1, bit 2: z + 1) and the fractional position.
template <typename scalar_t>
inline void corners(const scalar_t* p, scalar_t scale, uint32_t mask, int64_t offset, Corners<scalar_t>& c) {
  uint32_t h[3][2];
  for (int d = 0; d < 3; ++d) {
    const scalar_t s = p[d] * scale;
    // floor without a libm call (the baseline x86-64 target has no rounding instruction): truncate, then step
    // down for negative non-integers.
    int64_t fi = static_cast<int64_t>(s);
    fi -= static_cast<int64_t>(s < static_cast<scalar_t>(fi));
    c.frac[d] = s - static_cast<scalar_t>(fi);
    // Only the low bits of each product matter: unsigned 32-bit arithmetic wraps to the same low bits.
    const uint32_t cell = static_cast<uint32_t>(fi);
    const uint32_t prime = d == 0 ? 1u : (d == 1 ? kPrimeY : kPrimeZ);
    h[d][0] = cell * prime;
    h[d][1] = (cell + 1u) * prime;
  }
  for (int k = 0; k < 8; ++k) {
    c.index[k] = offset + static_cast<int64_t>((h[0][k & 1] ^ h[1][(k >> 1) & 1] ^ h[2][(k >> 2) & 1]) & mask);
  }
}

template <typename scalar_t>
inline scalar_t weight(const Corners<scalar_t>& c, int k) {
  const scalar_t wx = (k & 1) ? c.frac[0] : 1 - c.frac[0];
  const scalar_t wy = (k & 2) ? c.frac[1] : 1 - c.frac[1];
  const scalar_t wz = (k & 4) ? c.frac[2] : 1 - c.frac[2];
  return wx * wy * wz;
}

void check_inputs(const torch::Tensor& positions, const torch::Tensor& table, const torch::Tensor& scalings,
                  int64_t table_size) {
  TORCH_CHECK(positions.device().is_cpu() && table.device().is_cpu(), "hash_grid: CPU tensors only");
  TORCH_CHECK(positions.dim() == 2 && positions.size(1) == 3, "hash_grid: positions must be [N, 3]");
  TORCH_CHECK(table.dim() == 2, "hash_grid: table must be [L * T, F]");
  TORCH_CHECK(table_size > 0 && (table_size & (table_size - 1)) == 0, "hash_grid: table size must be a power of 2");
  TORCH_CHECK(table.size(0) == scalings.size(0) * table_size, "hash_grid: table rows != levels * table size");
  TORCH_CHECK(positions.scalar_type() == table.scalar_type(), "hash_grid: positions and table dtypes differ");
}

}  // namespace

torch::Tensor hash_grid_forward(torch::Tensor positions, torch::Tensor table, torch::Tensor scalings,
                                int64_t table_size) {
  check_inputs(positions, table, scalings, table_size);
  positions = positions.contiguous();
  table = table.contiguous();
  const int64_t n = positions.size(0), levels = scalings.size(0), feats = table.size(1);
  auto scale64 = scalings.to(torch::kDouble).contiguous();
  auto out = torch::empty({n, levels * feats}, table.options());
  const uint32_t mask = static_cast<uint32_t>(table_size - 1);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hash_grid_forward", [&] {
    const scalar_t* pos = positions.data_ptr<scalar_t>();
    const scalar_t* tab = table.data_ptr<scalar_t>();
    const double* sc = scale64.data_ptr<double>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      Corners<scalar_t> c;
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t l = 0; l < levels; ++l) {
          corners(pos + 3 * i, static_cast<scalar_t>(sc[l]), mask, l * table_size, c);
          scalar_t* dst = o + i * levels * feats + l * feats;
          for (int64_t f = 0; f < feats; ++f) dst[f] = 0;
          for (int k = 0; k < 8; ++k) {
            const scalar_t w = weight(c, k);
            const scalar_t* row = tab + c.index[k] * feats;
            for (int64_t f = 0; f < feats; ++f) dst[f] += w * row[f];
          }
        }
      }
    });
  });
  return out;
}

// Gradients of the loss with respect to the table (always) and the positions (when need_positions).
std::vector<torch::Tensor> hash_grid_backward(torch::Tensor grad_out, torch::Tensor positions, torch::Tensor table,
                                              torch::Tensor scalings, int64_t table_size, bool need_positions) {
  check_inputs(positions, table, scalings, table_size);
  positions = positions.contiguous();
  table = table.contiguous();
  grad_out = grad_out.contiguous().to(table.scalar_type());
  const int64_t n = positions.size(0), levels = scalings.size(0), feats = table.size(1);
  TORCH_CHECK(grad_out.size(0) == n && grad_out.size(1) == levels * feats, "hash_grid: grad_out must be [N, L * F]");
  auto scale64 = scalings.to(torch::kDouble).contiguous();
  auto grad_table = torch::zeros_like(table);
  auto grad_pos_levels = need_positions ? torch::empty({levels, n, 3}, table.options()) : torch::Tensor();
  const uint32_t mask = static_cast<uint32_t>(table_size - 1);
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hash_grid_backward", [&] {
    const scalar_t* pos = positions.data_ptr<scalar_t>();
    const scalar_t* tab = table.data_ptr<scalar_t>();
    const scalar_t* g = grad_out.data_ptr<scalar_t>();
    const double* sc = scale64.data_ptr<double>();
    scalar_t* gt = grad_table.data_ptr<scalar_t>();
    // One level per task, points in order within it: each level owns its table rows and its slice of the
    // per-level position gradients, so no two threads write the same memory and the sums do not depend on the
    // thread count. The position gradient is d(weight)/d(frac) * scaling, summed over corners (here) and levels
    // (after the loop).
    scalar_t* gpl = need_positions ? grad_pos_levels.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, levels, 1, [&](int64_t lbegin, int64_t lend) {
      Corners<scalar_t> c;
      for (int64_t l = lbegin; l < lend; ++l) {
        const scalar_t scale = static_cast<scalar_t>(sc[l]);
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* gi = g + i * levels * feats + l * feats;
          corners(pos + 3 * i, scale, mask, l * table_size, c);
          scalar_t acc[3] = {0, 0, 0};
          for (int k = 0; k < 8; ++k) {
            const scalar_t wx = (k & 1) ? c.frac[0] : 1 - c.frac[0];
            const scalar_t wy = (k & 2) ? c.frac[1] : 1 - c.frac[1];
            const scalar_t wz = (k & 4) ? c.frac[2] : 1 - c.frac[2];
            const scalar_t w = wx * wy * wz;
            scalar_t* row = gt + c.index[k] * feats;
            for (int64_t f = 0; f < feats; ++f) row[f] += w * gi[f];
            if (gpl == nullptr) continue;
            scalar_t dot = 0;  // <grad_out, corner features>
            const scalar_t* trow = tab + c.index[k] * feats;
            for (int64_t f = 0; f < feats; ++f) dot += gi[f] * trow[f];
            const scalar_t sx = (k & 1) ? 1 : -1, sy = (k & 2) ? 1 : -1, sz = (k & 4) ? 1 : -1;
            acc[0] += dot * sx * wy * wz;
            acc[1] += dot * wx * sy * wz;
            acc[2] += dot * wx * wy * sz;
          }
          if (gpl != nullptr) {
            scalar_t* dst = gpl + (l * n + i) * 3;
            for (int d = 0; d < 3; ++d) dst[d] = acc[d] * scale;
          }
        }
      }
    });
  });
  return {grad_table, need_positions ? grad_pos_levels.sum(0) : torch::Tensor()};
}

// How many distinct threads at::parallel_for ran over n items in grains of 1: the build's parallelism, measured.
int64_t threads_in_parallel_for(int64_t n) {
  std::vector<uint8_t> seen(static_cast<size_t>(std::max(at::get_num_threads(), 1)), 0);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < static_cast<int>(seen.size())) seen[static_cast<size_t>(t)] = 1;
    volatile double sink = 0.0;  // enough work per item that one thread cannot take every chunk first
    for (int64_t i = begin; i < end; ++i)
      for (int k = 0; k < 20000; ++k) sink = sink + static_cast<double>(k) * 1e-9;
  });
  int64_t count = 0;
  for (uint8_t s : seen) count += s;
  return count;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &hash_grid_forward, "hash-grid encoding forward (CPU)");
  m.def("backward", &hash_grid_backward, "hash-grid encoding backward to the table and the positions (CPU)");
  m.def("threads_in_parallel_for", &threads_in_parallel_for, "distinct threads that ran a parallel_for over n items");
}
