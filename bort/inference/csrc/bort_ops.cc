// Bort's CPU inference operators, an MXNet custom-operator library (lib_api.h, MXNet >= 1.8).
//
//   bort_add_layer_norm(data, residual, gamma, beta, eps) == LayerNorm(data + residual, gamma, beta) over the last axis
//   bort_masked_softmax(scores, valid_length, heads)       == softmax over keys < valid_length, 0 on the others
//   bort_pad_last(data, pad)                                == data with `pad` zeros appended to its last axis
//
// `residual` has the shape of `data`, or (data.shape[0], 1, ..., 1, width): one row per leading index,
// broadcast over the middle axes (the position embeddings of a (length, batch, units) sequence).
// MXNet 1.9.1's LayerNorm has no oneDNN kernel and runs a generic reduction (about 0.45 G values/s); this one
// reads each row once into L1 and does the add, mean, variance and affine map in three vector passes.
// The masked softmax replaces the encoder's additive padding bias (a broadcast_add of a (batch * heads, 1, length)
// -1e9 mask onto every score matrix) and the softmax after it with one pass over each score row.
// The padding exists for oneDNN's float32 GEMM: with 128 rows (batch 1, length 128) and an input width of 1024 (a
// 4 KiB row stride) MXNet 1.9.1's fully-connected layer ran at 50 GFLOP/s, at 80-90 with 1040 (zero columns in the
// input and the weight change nothing in the result).
// Float32 only, forward only (inference): the backward reports an error if it is ever run.
//
// Built by bort/inference/native_ops.py (g++ -O3 -fopenmp). The row kernels are compiled for AVX-512, AVX2 and plain x86-64
// (GCC target_clones, picked at load time by the CPU), so one build runs on any x86-64 machine.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

using Attrs = std::unordered_map<std::string, std::string>;

// Below this many values one thread is faster than waking the OpenMP team (a 1024-wide row takes ~0.1 us).
constexpr int64_t kParallelValues = 32768;

float read_eps(const Attrs& attrs) {
  auto it = attrs.find("eps");
  return it == attrs.end() ? 1e-5f : std::strtof(it->second.c_str(), nullptr);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BORT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BORT_CLONES
#endif

// One row: y = (v - mean) / sqrt(var + eps) * gamma + beta with v = x + r. Two-pass variance (as MXNet's).
BORT_CLONES
void add_layer_norm_row(const float* x, const float* r, const float* gamma, const float* beta, float* y, int64_t n,
                        float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] + r[i];
    y[i] = v;
    sum += v;
  }
  const float mean = sum / static_cast<float>(n);
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) {
    const float d = y[i] - mean;
    squares += d * d;
  }
  const float rstd = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (y[i] - mean) * rstd * gamma[i] + beta[i];
}

MXReturnValue parse_attrs(const Attrs&, int* num_inputs, int* num_outputs) {
  *num_inputs = 4;
  *num_outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] == -1) (*in_types)[i] = kFloat32;  // not known yet (graph passes infer partially)
    if ((*in_types)[i] != kFloat32) {
      MX_ERROR_MSG << "bort native op: input " << i << " must be float32, got dtype " << (*in_types)[i];
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

bool residual_fits(const std::vector<unsigned>& data, const std::vector<unsigned>& res) {
  if (res == data) return true;
  if (res.size() != data.size() || data.size() < 2) return false;
  if (res.front() != data.front() || res.back() != data.back()) return false;
  for (size_t i = 1; i + 1 < res.size(); ++i)
    if (res[i] != 1) return false;
  return true;
}

MXReturnValue infer_shape(const Attrs&, std::vector<std::vector<unsigned>>* in_shapes,
                          std::vector<std::vector<unsigned>>* out_shapes) {
  const auto& data = (*in_shapes)[0];
  if (data.empty()) {
    MX_ERROR_MSG << "bort_add_layer_norm: data must have at least one axis";
    return MX_FAIL;
  }
  if (!residual_fits(data, (*in_shapes)[1])) {
    MX_ERROR_MSG << "bort_add_layer_norm: residual must have the data's shape or (data.shape[0], 1, ..., width)";
    return MX_FAIL;
  }
  for (size_t i = 2; i < in_shapes->size(); ++i) {
    const auto& s = (*in_shapes)[i];
    if (s.size() != 1 || s[0] != data.back()) {
      MX_ERROR_MSG << "bort_add_layer_norm: gamma and beta must have shape (" << data.back() << ",)";
      return MX_FAIL;
    }
  }
  (*out_shapes)[0] = data;
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource&) {
  MXTensor& data = (*inputs)[0];
  const float* x = data.data<float>();
  const float* r = (*inputs)[1].data<float>();
  const float* gamma = (*inputs)[2].data<float>();
  const float* beta = (*inputs)[3].data<float>();
  float* y = (*outputs)[0].data<float>();
  const int64_t n = data.shape.back();
  if (n == 0) return MX_SUCCESS;
  const int64_t rows = data.size() / n;
  // rows of data per row of residual: 1 for the same shape, the middle axes' product for a broadcast one
  const int64_t res_rows = (*inputs)[1].size() / n;
  const int64_t per_res_row = res_rows ? rows / res_rows : 1;
  const float eps = read_eps(attrs);
  const int threads = rows * n >= kParallelValues ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < rows; ++i)
    add_layer_norm_row(x + i * n, r + (i / per_res_row) * n, gamma, beta, y + i * n, n, eps);
  return MX_SUCCESS;
}

// exp(x) for x <= 0 (scores minus their row maximum): Cephes' expf (range reduction by ln 2, degree-6
// polynomial, relative error ~1e-7) in plain arithmetic, so the row loop vectorizes without libmvec.
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  // n = round(x / ln 2) in [-126, 0]; below -87 (e^x < 2^-126) the result is 0. Clamping n and masking the scale
  // keep the loop branch-free (a clamp of x, or a select of 0, let GCC branch to a constant and not vectorize).
  const int32_t minus_n = std::min(static_cast<int32_t>(0.5f - x * 1.44269504088896341f), 126);
  const float n = static_cast<float>(-minus_n);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t keep = -static_cast<int32_t>(x >= -87.f);  // all ones, or 0 below -87: 2^n as +0.0
  return p * __builtin_bit_cast(float, ((127 - minus_n) << 23) & keep);  // times 2^n
}

// One score row: y[k] = exp(s[k] - max) / sum over the first `valid` keys, 0 after them.
BORT_CLONES
void masked_softmax_row(const float* s, float* y, int64_t n, int64_t valid) {
  float top = s[0];
#pragma omp simd reduction(max : top)
  for (int64_t k = 0; k < valid; ++k) top = s[k] > top ? s[k] : top;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < valid; ++k) {
    const float e = exp_nonpositive(s[k] - top);
    y[k] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t k = 0; k < valid; ++k) y[k] *= inv;
  for (int64_t k = valid; k < n; ++k) y[k] = 0.f;
}

int read_heads(const Attrs& attrs) {
  auto it = attrs.find("heads");
  return it == attrs.end() ? 0 : std::atoi(it->second.c_str());
}

MXReturnValue parse_softmax(const Attrs& attrs, int* num_inputs, int* num_outputs) {
  if (read_heads(attrs) < 1) {
    MX_ERROR_MSG << "bort_masked_softmax: attribute heads must be a positive integer";
    return MX_FAIL;
  }
  *num_inputs = 2;
  *num_outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_shape_softmax(const Attrs& attrs, std::vector<std::vector<unsigned>>* in_shapes,
                                  std::vector<std::vector<unsigned>>* out_shapes) {
  const auto& scores = (*in_shapes)[0];
  const auto& valid = (*in_shapes)[1];
  const unsigned heads = read_heads(attrs);
  if (scores.size() != 3 || valid.size() != 1 || scores[0] != valid[0] * heads) {
    MX_ERROR_MSG << "bort_masked_softmax: scores must be (batch * heads, queries, keys) and valid_length (batch,)";
    return MX_FAIL;
  }
  (*out_shapes)[0] = scores;
  return MX_SUCCESS;
}

MXReturnValue forward_softmax(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                              const OpResource&) {
  MXTensor& scores = (*inputs)[0];
  const float* s = scores.data<float>();
  const float* valid_length = (*inputs)[1].data<float>();
  float* y = (*outputs)[0].data<float>();
  const int64_t heads = read_heads(attrs), queries = scores.shape[1], n = scores.shape[2];
  const int64_t rows = scores.shape[0] * queries;
  const int threads = rows * n >= kParallelValues ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t length = static_cast<int64_t>(valid_length[i / queries / heads]);
    if (length <= 0) {  // every key masked: the biased scores are all equal, so the softmax is uniform
      for (int64_t k = 0; k < n; ++k) y[i * n + k] = 1.f / static_cast<float>(n);
      continue;
    }
    masked_softmax_row(s + i * n, y + i * n, n, length < n ? length : n);
  }
  return MX_SUCCESS;
}

int read_pad(const Attrs& attrs) {
  auto it = attrs.find("pad");
  return it == attrs.end() ? -1 : std::atoi(it->second.c_str());
}

MXReturnValue parse_pad(const Attrs& attrs, int* num_inputs, int* num_outputs) {
  if (read_pad(attrs) < 0) {
    MX_ERROR_MSG << "bort_pad_last: attribute pad must be a non-negative integer";
    return MX_FAIL;
  }
  *num_inputs = 1;
  *num_outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_shape_pad(const Attrs& attrs, std::vector<std::vector<unsigned>>* in_shapes,
                              std::vector<std::vector<unsigned>>* out_shapes) {
  if ((*in_shapes)[0].empty()) {
    MX_ERROR_MSG << "bort_pad_last: data must have at least one axis";
    return MX_FAIL;
  }
  (*out_shapes)[0] = (*in_shapes)[0];
  (*out_shapes)[0].back() += read_pad(attrs);
  return MX_SUCCESS;
}

MXReturnValue forward_pad(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                          const OpResource&) {
  MXTensor& data = (*inputs)[0];
  const float* x = data.data<float>();
  float* y = (*outputs)[0].data<float>();
  const int64_t n = data.shape.back(), pad = read_pad(attrs), width = n + pad;
  const int64_t rows = n ? data.size() / n : 0;
  const int threads = rows * width >= kParallelValues ? omp_get_max_threads() : 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(y + i * width, x + i * n, n * sizeof(float));
    std::memset(y + i * width + n, 0, pad * sizeof(float));
  }
  return MX_SUCCESS;
}

MXReturnValue no_backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*, const OpResource&) {
  MX_ERROR_MSG << "bort's native operators are inference only (no backward)";
  return MX_FAIL;
}

}  // namespace

// MXNet builds a gradient graph for every hybridized block, so the operators declare a backward (that refuses).
REGISTER_OP(bort_add_layer_norm)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(no_backward, "cpu");

REGISTER_OP(bort_masked_softmax)
    .setParseAttrs(parse_softmax)
    .setInferType(infer_type)
    .setInferShape(infer_shape_softmax)
    .setForward(forward_softmax, "cpu")
    .setBackward(no_backward, "cpu");

REGISTER_OP(bort_pad_last)
    .setParseAttrs(parse_pad)
    .setInferType(infer_type)
    .setInferShape(infer_shape_pad)
    .setForward(forward_pad, "cpu")
    .setBackward(no_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10800) return MX_SUCCESS;
  MX_ERROR_MSG << "bort_ops needs MXNet >= 1.8, got version " << version;
  return MX_FAIL;
}
