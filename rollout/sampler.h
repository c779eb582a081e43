// The sampling chain (llama.cpp style: small stages on fixed logits): temperature, then top-k, top-p and
// min-p truncation, then a draw; temperature 0 is greedy. Every sample has its own random stream derived
// from (run seed, prompt id, sample index), and the draw of step t uses counter t of that stream, so a prompt
// generated again gives the same samples whatever batch it is in.
//
// Dimension key: N rows (live sequences), V vocabulary. Logits are float32.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace rlhf::rollout {

struct SamplingParams {
  double temperature = 1.0;   // 0 = greedy
  int64_t top_k = 0;          // keep the k most likely tokens; 0 = off
  double top_p = 1.0;         // keep the smallest set whose probability reaches p; 1 = off
  double min_p = 0.0;         // keep tokens with p >= min_p * p_max; 0 = off
  int64_t max_new_tokens = 64;
  std::vector<std::string> stop;  // stop strings (in addition to the model's eos ids)
  uint64_t seed = 0;              // run seed
};

// Stage by stage on logits [N, V] already divided by the temperature: removed tokens become -inf.
// TopP keeps the most probable tokens whose preceding mass is below p; tokens tied with the least probable
// kept one are kept too.
torch::Tensor TopK(const torch::Tensor& logits, int64_t k);
torch::Tensor TopP(const torch::Tensor& logits, double p);
torch::Tensor MinP(const torch::Tensor& logits, double min_p);
// The whole chain (temperature must be > 0).
torch::Tensor Truncate(const torch::Tensor& scaled_logits, const SamplingParams& params);

// Seed of a sample's stream.
uint64_t StreamSeed(uint64_t run_seed, const std::string& prompt_id, int64_t sample_index);
// Uniform in [0, 1) for draw `step` of a stream (SplitMix64 of seed and step).
double StreamUniform(uint64_t stream_seed, uint64_t step);

struct Draw {
  torch::Tensor tokens;    // [N] int64
  torch::Tensor logprobs;  // [N] f32: log softmax(logits / T)[token], before truncation (T = 1 when greedy)
};
// Draws one token per row: row i uses StreamUniform(stream_seeds[i], steps[i]) and inverse-CDF sampling
// over the truncated distribution.
Draw Sample(const torch::Tensor& logits, const SamplingParams& params, const std::vector<uint64_t>& stream_seeds,
            const std::vector<uint64_t>& steps);

}  // namespace rlhf::rollout
