// Attention of one new token per row against a KV cache (the decode step of generation), on CPU, without
// materialising keys per query head or a mask: each (row, kv head) pair reads its cache slot in place.
//
// LibTorch's batched matmul over [B, K, G, 1, D] x [B, K, 1, D, L] copies the keys G times and then runs
// B x K x G tiny products one by one; at batch 64 on the small config that was 80 of the 108 ms of a step's
// backbone (bench/decode_bench --profile). This kernel computes the same softmax(q k^T / sqrt(D)) v in f32.
#pragma once

#include <cstdint>

namespace rlhf::model {

struct DecodeAttentionArgs {
  int64_t rows = 0, kv_heads = 0, groups = 0, head_dim = 0, capacity = 0;
  const float* q = nullptr;        // [rows, kv_heads * groups, head_dim], query head h reads kv head h / groups
  const void* keys = nullptr;      // cache [slots, kv_heads, capacity, head_dim], f32 or bf16
  const void* values = nullptr;    // same layout and type as keys
  bool bf16 = false;               // cache element type: bf16 when true, else f32
  const bool* valid = nullptr;     // [slots, capacity]: the column holds a real token
  const int64_t* slots = nullptr;  // [rows] cache slot of each row
  const int64_t* lengths = nullptr;  // [rows] columns to attend; the last is the row's new token, always seen
  float scale = 1.f;                 // applied to q.k
  float* out = nullptr;              // [rows, kv_heads * groups, head_dim]
};

// Runs on LibTorch's intra-op thread pool, split over (row, kv head) pairs.
void DecodeAttention(const DecodeAttentionArgs& a);

}  // namespace rlhf::model
