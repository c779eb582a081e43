#include "common/model/transformer.h"

#include "common/model/cpu_linear.h"
#include "common/model/decode_attention.h"
#include "common/vec_math.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace rlhf::model {

namespace F = torch::nn::functional;
using torch::indexing::Slice;

// ---------------------------------------------------------------------------------------------------
// Rotary embedding

torch::Tensor RopeInverseFrequencies(const HfConfig& c) {
  const int64_t d = c.head_dim;
  // HF: 1 / base ** (arange(0, d, 2).float() / d), in f32.
  auto exponents = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32) / static_cast<float>(d);
  auto inv = 1.0 / torch::pow(torch::tensor(static_cast<float>(c.rope_theta)), exponents);
  const auto& r = c.rope_scaling;
  if (r.type == "linear") {
    inv = inv / static_cast<float>(r.factor);
  } else if (r.type == "llama3") {
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    auto wavelen = 2 * M_PI / inv;
    auto scaled = torch::where(wavelen > low_wavelen, inv / r.factor, inv);
    auto smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    auto medium = wavelen.ge(high_wavelen).logical_and(wavelen.le(low_wavelen));
    inv = torch::where(medium, smoothed, scaled);
  }
  return inv.to(torch::kFloat32);
}

namespace {

// The elements of a contiguous tensor as T (bf16 as its uint16_t bits); null for an undefined tensor.
template <typename T>
T* Data(const torch::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

// fn(T{}) with T the element type of the CPU kernels for dt: float for f32, uint16_t for bf16.
template <typename Fn>
auto ForElement(torch::ScalarType dt, Fn fn) {
  return dt == torch::kFloat32 ? fn(float{}) : fn(uint16_t{});
}

}  // namespace

// x @ W^T (+ b). A single f32 row (decode at batch 1) goes through a matrix-vector product, which streams
// the weights about twice as fast as a one-row matrix product on CPU BLAS (decode_bench: 37 vs 26 tok/s).
//
// bf16 inference on CPUs with usable AMX tiles goes through AmxLinearBf16 (cpu_linear.h): about 1 TFLOP/s at
// the decode's shapes, against about 160 GFLOP/s for LibTorch's bf16 product on the same machine.
torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const bool cpu_inference = !at::GradMode::is_enabled() && x.device().is_cpu() && w.device().is_cpu() &&
                             w.dim() == 2 && w.size(1) > 0 && x.numel() > 0 && x.scalar_type() == w.scalar_type();
  if (!cpu_inference) return F::linear(x, w, b);
  const int64_t K = w.size(1), N = w.size(0), rows = x.numel() / K;
  // x as [rows, K] into y [rows, N] through product(x, w, bias or null, y) on elements of tag's type, then shaped
  // like x.
  auto through = [&](auto tag, auto product) {
    using T = decltype(tag);
    auto xr = x.reshape({-1, K}).contiguous();
    auto wc = w.contiguous();
    auto bc = b.defined() ? b.to(w.scalar_type()).contiguous() : torch::Tensor();
    auto y = torch::empty({rows, N}, x.options());
    product(Data<const T>(xr), Data<const T>(wc), Data<const T>(bc), Data<T>(y));
    auto shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
  };
  if (x.scalar_type() == torch::kBFloat16 && K % 32 == 0 && AmxUsable()) {
    return through(uint16_t{}, [&](const uint16_t* xp, const uint16_t* wp, const uint16_t* bp, uint16_t* yp) {
      AmxLinearBf16(xp, rows, K, wp, N, bp, yp);
    });
  }
  // f32 on 2 to 128 rows (decode batches): Avx512LinearF32 reads the weights in place where BLAS packs them
  // first, 240 against 175 GFLOP/s at 64 rows with the weights coming from memory.
  if (x.scalar_type() == torch::kFloat32 && K % 16 == 0 && rows >= 2 && rows <= 128 && Avx512Usable()) {
    return through(float{}, [&](const float* xp, const float* wp, const float* bp, float* yp) {
      Avx512LinearF32(xp, rows, K, wp, N, bp, yp);
    });
  }
  // One f32 row: a matrix-vector product. LibTorch's bf16 mv is slower than its bf16 one-row product
  // (measured with bench/decode_bench: 29 vs 43 tokens/s at batch 1).
  if (rows == 1 && x.scalar_type() == torch::kFloat32) {
    auto y = torch::mv(w, x.reshape({-1}));
    if (b.defined()) y = y + b;
    auto shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
  }
  return F::linear(x, w, b);
}

namespace {

torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// x [B, N, T, D]; cos/sin [B, 1, T, D] in x's dtype. Inference on CPU runs one pass per row (vec::RopeRow,
// with the same roundings) in place of five tensor operations.
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto dt = x.scalar_type();
  if (at::GradMode::is_enabled() || !x.device().is_cpu() || (dt != torch::kFloat32 && dt != torch::kBFloat16) ||
      cos.scalar_type() != dt || sin.scalar_type() != dt || x.dim() != 4 || x.size(-1) % 2 != 0 ||
      cos.sizes() != sin.sizes() || cos.dim() != 4 || cos.size(0) != x.size(0) || cos.size(1) != 1 ||
      cos.size(2) != x.size(2) || cos.size(3) != x.size(3)) {
    return x * cos + RotateHalf(x) * sin;
  }
  auto xc = x.contiguous();
  auto cc = cos.contiguous(), sc = sin.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t B = xc.size(0), N = xc.size(1), T = xc.size(2), D = xc.size(3);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = ((b * N + n) * T + t) * D, table = (b * T + t) * D;
        ForElement(dt, [&](auto tag) {
          using E = decltype(tag);
          vec::RopeRow(Data<const E>(xc) + row, Data<const E>(cc) + table, Data<const E>(sc) + table, D,
                       Data<E>(out) + row);
        });
      }
    }
  }
  return out;
}

torch::Tensor Linear(const torch::nn::Linear& l, const torch::Tensor& x) { return model::Linear(x, l->weight, l->bias); }

torch::nn::Linear MakeLinear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// KV cache

KVCache::KVCache(const HfConfig& c, int64_t slots, int64_t capacity, torch::ScalarType dtype, torch::Device device)
    : capacity_(capacity), length_(slots, 0), next_pos_(slots, 0) {
  TORCH_CHECK(slots > 0 && capacity > 0, "KVCache needs slots > 0 and capacity > 0");
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    k_.push_back(torch::zeros({slots, c.num_key_value_heads, capacity, c.head_dim}, opts));
    v_.push_back(torch::zeros({slots, c.num_key_value_heads, capacity, c.head_dim}, opts));
  }
  valid_ = torch::zeros({slots, capacity}, torch::TensorOptions().dtype(torch::kBool).device(device));
}

void KVCache::Reset(int64_t slot) {
  TORCH_CHECK(slot >= 0 && slot < slots(), "KVCache::Reset: slot ", slot, " out of range");
  length_[slot] = 0;
  next_pos_[slot] = 0;
  valid_[slot].fill_(false);
}

void KVCache::CopySlot(int64_t src, int64_t dst) {
  TORCH_CHECK(src >= 0 && src < slots() && dst >= 0 && dst < slots(), "KVCache::CopySlot: slot out of range");
  if (src == dst) return;
  const int64_t n = length_[src];
  for (size_t l = 0; l < k_.size(); ++l) {
    k_[l][dst].narrow(1, 0, n).copy_(k_[l][src].narrow(1, 0, n));
    v_[l][dst].narrow(1, 0, n).copy_(v_[l][src].narrow(1, 0, n));
  }
  valid_[dst].copy_(valid_[src]);
  length_[dst] = n;
  next_pos_[dst] = next_pos_[src];
}

// ---------------------------------------------------------------------------------------------------
// Modules

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // Inference on CPU: one pass per row (vec::RmsNormRow) in place of six tensor operations.
  const auto dt = x.scalar_type();
  if (!at::GradMode::is_enabled() && x.device().is_cpu() && weight.device().is_cpu() && dt == weight.scalar_type() &&
      (dt == torch::kFloat32 || dt == torch::kBFloat16) && x.dim() >= 1 && x.size(-1) == weight.numel() &&
      x.numel() > 0) {
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    auto out = torch::empty_like(xc);
    const int64_t n = xc.size(-1), rows = xc.numel() / n;
    const float eps = static_cast<float>(eps_);
    ForElement(dt, [&](auto tag) {
      using T = decltype(tag);
      for (int64_t r = 0; r < rows; ++r) {
        vec::RmsNormRow(Data<const T>(xc) + r * n, Data<const T>(wc), n, eps, Data<T>(out) + r * n);
      }
    });
    return out;
  }
  auto h = x.to(torch::kFloat32);
  auto var = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * torch::rsqrt(var + eps_);
  return weight * h.to(x.scalar_type());
}

AttentionImpl::AttentionImpl(const HfConfig& c) {
  q_proj = register_module("q_proj", MakeLinear(c.hidden_size, c.q_dim(), c.qkv_bias));
  k_proj = register_module("k_proj", MakeLinear(c.hidden_size, c.kv_dim(), c.qkv_bias));
  v_proj = register_module("v_proj", MakeLinear(c.hidden_size, c.kv_dim(), c.qkv_bias));
  o_proj = register_module("o_proj", MakeLinear(c.q_dim(), c.hidden_size, c.o_bias));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(c.head_dim, c.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(c.head_dim, c.rms_norm_eps));
  }
}

MlpImpl::MlpImpl(const HfConfig& c) {
  gate_proj = register_module("gate_proj", MakeLinear(c.hidden_size, c.intermediate_size, c.mlp_bias));
  up_proj = register_module("up_proj", MakeLinear(c.hidden_size, c.intermediate_size, c.mlp_bias));
  down_proj = register_module("down_proj", MakeLinear(c.intermediate_size, c.hidden_size, c.mlp_bias));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  auto g = Linear(gate_proj, x);
  auto u = Linear(up_proj, x);
  // Inference on CPU: one pass writing silu(g) * u over g (LibTorch's bf16 silu alone took 2 ms of a 40 ms
  // batch-64 decode step).
  const auto dt = g.scalar_type();
  if (!at::GradMode::is_enabled() && g.device().is_cpu() && u.device().is_cpu() && dt == u.scalar_type() &&
      (dt == torch::kFloat32 || dt == torch::kBFloat16) && g.is_contiguous() && u.is_contiguous() &&
      g.sizes() == u.sizes()) {
    ForElement(dt, [&](auto tag) {
      using T = decltype(tag);
      vec::SiluMul(Data<const T>(g), Data<const T>(u), Data<T>(g), g.numel());
    });
    return Linear(down_proj, g);
  }
  return Linear(down_proj, torch::silu(g) * u);
}

DecoderLayerImpl::DecoderLayerImpl(const HfConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", Mlp(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

BackboneImpl::BackboneImpl(const HfConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

TransformerImpl::TransformerImpl(const HfConfig& config) : config_(config) {
  model = register_module("model", Backbone(config));
  switch (config.head) {
    case Head::kCausalLM:
      if (!config.tie_word_embeddings) {
        lm_head = register_module("lm_head", MakeLinear(config.hidden_size, config.vocab_size, false));
      }
      break;
    case Head::kSequenceClassification:
      score = register_module("score", MakeLinear(config.hidden_size, config.num_labels, false));
      break;
    case Head::kTokenClassification:
      score = register_module("score", MakeLinear(config.hidden_size, config.num_labels, true));
      break;
  }
  inv_freq_ = RopeInverseFrequencies(config);
}

torch::ScalarType TransformerImpl::dtype() const { return model->embed_tokens->weight.scalar_type(); }

void TransformerImpl::InitWeights(uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    torch::Tensor& t = p.value();
    auto is = [&](const char* suffix) {
      return name.size() >= std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0;
    };
    if (is("norm.weight") || is("layernorm.weight")) {
      t.fill_(1.0);
    } else if (is(".bias")) {
      t.zero_();
    } else {
      auto v = at::normal(0.0, std, t.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
      t.copy_(v);
    }
  }
}

torch::Tensor TransformerImpl::LmHeadWeight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

torch::Tensor TransformerImpl::Logits(const torch::Tensor& hidden) {
  TORCH_CHECK(config_.head == Head::kCausalLM, "Logits() needs a causal LM head; this model has a classification head");
  return Linear(hidden, LmHeadWeight());
}

torch::Tensor TransformerImpl::Scores(const torch::Tensor& hidden) {
  TORCH_CHECK(score, "Scores() needs a classification head (score); this model is a causal LM");
  return score(hidden);
}

torch::Tensor TransformerImpl::SequenceScores(const torch::Tensor& hidden, const torch::Tensor& mask) {
  auto s = Scores(hidden).select(-1, 0);  // [B, T]
  const int64_t T = s.size(1);
  torch::Tensor last;
  if (mask.defined()) {
    // HF: index of the rightmost real token (argmax of index * mask).
    auto idx = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(s.device()));
    last = (idx.unsqueeze(0) * mask.to(torch::kInt64)).argmax(-1);
  } else {
    last = torch::full({s.size(0)}, T - 1, torch::TensorOptions().dtype(torch::kInt64).device(s.device()));
  }
  return s.gather(1, last.unsqueeze(1)).squeeze(1);
}

TokenStats TransformerImpl::TokenLogProbs(const torch::Tensor& hidden, const torch::Tensor& targets,
                                          double temperature, bool want_entropy) {
  TORCH_CHECK(temperature > 0, "temperature must be > 0 for log-probs");
  TORCH_CHECK(hidden.dim() == 3 && targets.dim() == 2 && hidden.size(0) == targets.size(0) &&
                  hidden.size(1) == targets.size(1),
              "TokenLogProbs: hidden [B, T, C] and targets [B, T] must agree");
  const int64_t B = hidden.size(0), T = hidden.size(1), C = hidden.size(2);
  const int64_t V = config_.vocab_size;
  auto h = hidden.reshape({B * T, C});
  auto tgt = targets.reshape({B * T}).to(torch::kInt64);
  TORCH_CHECK(tgt.numel() == 0 || (tgt.min().item<int64_t>() >= 0 && tgt.max().item<int64_t>() < V),
              "TokenLogProbs: target ids must be in [0, vocab_size)");
  // Chunks of about 16M f32 logits (64 MiB).
  const int64_t rows = std::max<int64_t>(1, (int64_t{16} << 20) / V);
  std::vector<torch::Tensor> lps, ents;
  auto W = LmHeadWeight();
  for (int64_t r = 0; r < B * T; r += rows) {
    const int64_t n = std::min(rows, B * T - r);
    auto logits = Linear(h.narrow(0, r, n), W).to(torch::kFloat32);  // [n, V]
    if (temperature != 1.0) logits = logits / temperature;
    auto lse = torch::logsumexp(logits, -1);  // [n]
    lps.push_back(logits.gather(1, tgt.narrow(0, r, n).unsqueeze(1)).squeeze(1) - lse);
    if (want_entropy) {
      auto p = torch::softmax(logits, -1);
      ents.push_back(lse - (p * logits).sum(-1));
    }
  }
  TokenStats out;
  out.logprobs = (lps.empty() ? torch::zeros({0}, torch::kFloat32) : torch::cat(lps)).reshape({B, T});
  if (want_entropy) out.entropy = (ents.empty() ? torch::zeros({0}, torch::kFloat32) : torch::cat(ents)).reshape({B, T});
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Forward

struct TransformerImpl::CacheStep {
  torch::Tensor slots;       // [B] int64 cache slot of each row
  torch::Tensor write_cols;  // [B, T] int64 cache column of each new token
  int64_t key_len = 0;       // columns attended: the longest row's
  int64_t first_slot = -1;   // >= 0 when the rows use the consecutive slots first_slot .. first_slot + B - 1
  // One token per row on CPU without autograd: slot ids and columns attended per row, for DecodeAttention.
  std::vector<int64_t> slot_ids, decode_lengths;
};

torch::Tensor TransformerImpl::AttentionForward(AttentionImpl& attn, int64_t layer, const torch::Tensor& x,
                                                const torch::Tensor& cos, const torch::Tensor& sin,
                                                const torch::Tensor& allowed, KVCache* cache,
                                                const CacheStep& step) {
  const auto& c = config_;
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = c.num_attention_heads, K = c.num_key_value_heads, D = c.head_dim, G = H / K;
  auto q = Linear(attn.q_proj, x).view({B, T, H, D});
  auto k = Linear(attn.k_proj, x).view({B, T, K, D});
  auto v = Linear(attn.v_proj, x).view({B, T, K, D});
  if (c.qk_norm) {
    q = attn.q_norm(q);
    k = attn.k_norm(k);
  }
  q = ApplyRope(q.transpose(1, 2), cos, sin);  // [B, H, T, D]
  k = ApplyRope(k.transpose(1, 2), cos, sin);  // [B, K, T, D]
  v = v.transpose(1, 2);                       // [B, K, T, D]
  torch::Tensor keys = k, values = v;          // [B, K, L, D]
  if (cache != nullptr) {
    auto slot_idx = step.slots.unsqueeze(1).expand({B, T});
    auto& ck = cache->k_[layer];
    auto& cv = cache->v_[layer];
    if (!step.decode_lengths.empty() && k.scalar_type() == ck.scalar_type() && v.scalar_type() == cv.scalar_type()) {
      // One token per row: each (row, kv head) vector is copied to its cache column (index_put_ took 1 ms of
      // a 40 ms batch-64 step).
      auto kc = k.contiguous(), vc = v.contiguous();  // [B, K, 1, D]
      const int64_t S = cache->capacity_, es = kc.element_size();
      const size_t bytes = static_cast<size_t>(D * es);
      auto* kd = static_cast<char*>(ck.data_ptr());
      auto* vd = static_cast<char*>(cv.data_ptr());
      const auto* ks = static_cast<const char*>(kc.data_ptr());
      const auto* vs = static_cast<const char*>(vc.data_ptr());
      for (int64_t b = 0; b < B; ++b) {
        const int64_t slot = step.slot_ids[b], col = step.decode_lengths[b] - 1;
        for (int64_t h = 0; h < K; ++h) {
          const int64_t dst = ((slot * K + h) * S + col) * D * es, src = (b * K + h) * D * es;
          std::memcpy(kd + dst, ks + src, bytes);
          std::memcpy(vd + dst, vs + src, bytes);
        }
      }
    } else {
      ck.index_put_({slot_idx, Slice(), step.write_cols}, k.permute({0, 2, 1, 3}));
      cv.index_put_({slot_idx, Slice(), step.write_cols}, v.permute({0, 2, 1, 3}));
    }
    if (!step.decode_lengths.empty()) {
      auto qf = q.to(torch::kFloat32).contiguous();  // [B, H, 1, D]
      auto out = torch::empty({B, H, D}, torch::kFloat32);
      DecodeAttentionArgs a;
      a.rows = B;
      a.kv_heads = K;
      a.groups = G;
      a.head_dim = D;
      a.capacity = cache->capacity_;
      a.q = qf.data_ptr<float>();
      a.keys = ck.data_ptr();
      a.values = cv.data_ptr();
      a.bf16 = ck.scalar_type() == torch::kBFloat16;
      a.valid = cache->valid_.data_ptr<bool>();
      a.slots = step.slot_ids.data();
      a.lengths = step.decode_lengths.data();
      a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
      a.out = out.data_ptr<float>();
      DecodeAttention(a);
      return Linear(attn.o_proj, out.to(x.scalar_type()).view({B, 1, H * D}));
    }
    if (step.first_slot >= 0) {  // consecutive slots: views, no copies
      keys = ck.narrow(0, step.first_slot, B).narrow(2, 0, step.key_len);
      values = cv.narrow(0, step.first_slot, B).narrow(2, 0, step.key_len);
    } else {
      keys = ck.index_select(0, step.slots).narrow(2, 0, step.key_len);
      values = cv.index_select(0, step.slots).narrow(2, 0, step.key_len);
    }
  }
  const int64_t L = keys.size(2);
  auto qg = q.reshape({B, K, G, T, D});
  auto scores = torch::matmul(qg, keys.unsqueeze(2).transpose(-1, -2));  // [B, K, G, T, L]
  scores = scores.to(torch::kFloat32) * (1.0 / std::sqrt(static_cast<double>(D)));
  scores = scores.masked_fill(allowed.logical_not().view({B, 1, 1, T, L}), -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1).to(x.scalar_type());
  auto out = torch::matmul(probs, values.unsqueeze(2));  // [B, K, G, T, D]
  out = out.reshape({B, H, T, D}).transpose(1, 2).reshape({B, T, H * D});
  return Linear(attn.o_proj, out);
}

torch::Tensor TransformerImpl::Hidden(const torch::Tensor& ids, const ForwardOptions& options, KVCache* cache,
                                      const torch::Tensor& slots_in) {
  TORCH_CHECK(ids.dim() == 2, "ids must be [B, T]");
  const int64_t B = ids.size(0), T = ids.size(1);
  const auto dev = ids.device();
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  TORCH_CHECK(T > 0, "ids must hold at least one token per row");
  TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < config_.vocab_size,
              "token ids must be in [0, vocab_size = ", config_.vocab_size, ")");
  auto mask = options.attention_mask.defined() ? options.attention_mask.to(torch::kBool)
                                               : torch::ones({B, T}, torch::TensorOptions().dtype(torch::kBool).device(dev));
  TORCH_CHECK(mask.sizes() == ids.sizes(), "attention_mask must be [B, T] like ids");
  TORCH_CHECK(!(cache && options.segment_ids.defined()), "segment_ids (packing) cannot be used with a KV cache");

  CacheStep step;
  torch::Tensor& slots = step.slots;
  torch::Tensor& write_cols = step.write_cols;
  int64_t& first_slot = step.first_slot;
  int64_t& key_len = step.key_len;
  key_len = T;
  torch::Tensor start, positions;
  // Column of each new token in its row's key sequence, and which key columns are real tokens.
  torch::Tensor qcol, key_valid;
  if (cache != nullptr) {
    slots = slots_in.defined() ? slots_in.to(i64) : torch::arange(B, i64);
    TORCH_CHECK(slots.dim() == 1 && slots.size(0) == B, "slots must be [B]");
    std::vector<int64_t> starts(B), bases(B), slot_ids(B);
    auto slots_cpu = slots.to(torch::kCPU).contiguous();
    const int64_t* sp = slots_cpu.data_ptr<int64_t>();
    first_slot = sp[0];
    for (int64_t b = 0; b < B; ++b) {
      int64_t s = slot_ids[b] = sp[b];
      if (s != sp[0] + b) first_slot = -1;
      TORCH_CHECK(s >= 0 && s < cache->slots(), "slot ", s, " out of range");
      starts[b] = cache->length_[s];
      bases[b] = cache->next_pos_[s];
      TORCH_CHECK(starts[b] + T <= cache->capacity_, "KV cache slot ", s, " is full (", starts[b], " + ", T,
                  " > capacity ", cache->capacity_, ")");
      key_len = std::max(key_len, starts[b] + T);
    }
    const auto cache_dtype = cache->k_.empty() ? torch::kFloat32 : cache->k_[0].scalar_type();
    if (T == 1 && dev.is_cpu() && !at::GradMode::is_enabled() &&
        (cache_dtype == torch::kFloat32 || cache_dtype == torch::kBFloat16)) {
      step.slot_ids = slot_ids;
      step.decode_lengths.resize(B);
      for (int64_t b = 0; b < B; ++b) step.decode_lengths[b] = starts[b] + 1;
    }
    start = torch::tensor(starts, i64);
    write_cols = start.unsqueeze(1) + torch::arange(T, i64).unsqueeze(0);  // [B, T]
    cache->valid_.index_put_({slots.unsqueeze(1).expand({B, T}), write_cols}, mask);
    key_valid = (first_slot >= 0 ? cache->valid_.narrow(0, first_slot, B) : cache->valid_.index_select(0, slots))
                    .narrow(1, 0, key_len);  // [B, L]
    qcol = write_cols;
    auto counts = mask.to(torch::kInt64).sum(1).to(torch::kCPU).contiguous();
    const int64_t* cp = counts.data_ptr<int64_t>();
    if (options.position_ids.defined()) {
      positions = options.position_ids.to(i64);
    } else {
      positions = (torch::tensor(bases, i64).unsqueeze(1) + mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
    }
    for (int64_t b = 0; b < B; ++b) {
      int64_t s = slot_ids[b];
      cache->length_[s] += T;
      cache->next_pos_[s] = options.position_ids.defined()
                                ? positions[b][T - 1].item<int64_t>() + 1
                                : bases[b] + cp[b];
    }
  } else {
    qcol = torch::arange(T, i64).unsqueeze(0).expand({B, T});
    key_valid = mask;
    positions = options.position_ids.defined() ? options.position_ids.to(i64)
                                               : (mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);
  }
  TORCH_CHECK(positions.sizes() == ids.sizes(), "position_ids must be [B, T] like ids");

  // allowed[b, t, j]: causal, real key, same segment; a row always sees itself (padding rows stay finite).
  // DecodeAttention reads the same from the cache's valid columns.
  torch::Tensor allowed;
  if (step.decode_lengths.empty()) {
    auto cols = torch::arange(key_len, i64).view({1, 1, key_len});
    auto self = cols.eq(qcol.unsqueeze(2));
    allowed = cols.le(qcol.unsqueeze(2)).logical_and(key_valid.unsqueeze(1));
    if (options.segment_ids.defined()) {
      auto seg = options.segment_ids.to(i64);
      allowed = allowed.logical_and(seg.unsqueeze(2).eq(seg.unsqueeze(1)));
    }
    allowed = allowed.logical_or(self);  // [B, T, L]
  }

  // Rotary tables [B, 1, T, D], computed in f32 as HF does, then cast to the model dtype.
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq_.to(dev).view({1, 1, -1});
  auto emb = torch::cat({freqs, freqs}, -1);
  const auto dt = dtype();
  auto cos = emb.cos().to(dt).unsqueeze(1);
  auto sin = emb.sin().to(dt).unsqueeze(1);

  auto x = model->embed_tokens(ids.to(i64));
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    auto& layer = *model->layers->ptr<DecoderLayerImpl>(l);
    auto h = x + AttentionForward(*layer.self_attn, l, layer.input_layernorm(x), cos, sin, allowed, cache, step);
    x = h + layer.mlp(layer.post_attention_layernorm(h));
  }
  return model->norm(x);
}

}  // namespace rlhf::model
