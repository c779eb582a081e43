#include "services/scoring/forward.h"

#include <algorithm>
#include <numeric>

namespace rlhf::scoring {
namespace {

float Temperature(const TokenRow& r) { return r.temperature > 0 ? r.temperature : 1.f; }

std::vector<std::vector<size_t>> Batches(const std::vector<TokenRow>& rows, int64_t budget, bool by_temperature) {
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), 0);
  auto temp = [&](size_t i) { return by_temperature ? Temperature(rows[i]) : 1.f; };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return temp(a) != temp(b) ? temp(a) < temp(b) : rows[a].size() < rows[b].size();
  });
  std::vector<std::vector<size_t>> out;
  int64_t longest = 0;
  for (size_t i : order) {
    const int64_t l = std::max<int64_t>(1, rows[i].size());
    if (!out.empty() && temp(out.back()[0]) == temp(i) &&
        std::max(longest, l) * static_cast<int64_t>(out.back().size() + 1) <= budget) {
      out.back().push_back(i);
      longest = std::max(longest, l);
    } else {
      out.push_back({i});
      longest = l;
    }
  }
  return out;
}

// Hidden states [B, T, C] of the rows of a batch, right-padded with 0, and the mask (undefined without padding).
std::pair<torch::Tensor, torch::Tensor> Forward(model::Transformer& net, const std::vector<TokenRow>& rows,
                                                const std::vector<size_t>& batch, torch::Tensor* ids_out) {
  int64_t t = 1;
  for (size_t i : batch) t = std::max<int64_t>(t, rows[i].size());
  const int64_t b = static_cast<int64_t>(batch.size());
  auto ids = torch::zeros({b, t}, torch::kInt64);
  auto mask = torch::zeros({b, t}, torch::kInt64);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const TokenRow& row = rows[batch[static_cast<size_t>(r)]];
    int64_t c = 0;
    for (int64_t j = 0; j < row.prompt_len; ++j) ia[r][c] = row.prompt[j], ma[r][c++] = 1;
    for (int64_t j = 0; j < row.completion_len; ++j) ia[r][c] = row.completion[j], ma[r][c++] = 1;
  }
  if (mask.all().item<bool>()) mask = torch::Tensor();
  if (ids_out != nullptr) *ids_out = ids;
  return {net->Hidden(ids, {mask}), mask};
}

}  // namespace

std::vector<std::vector<float>> CompletionLogProbs(model::Transformer& net, const std::vector<TokenRow>& rows,
                                                   int64_t batch_tokens) {
  torch::NoGradGuard ng;
  std::vector<std::vector<float>> out(rows.size());
  for (const auto& batch : Batches(rows, batch_tokens, true)) {
    torch::Tensor ids;
    auto [hidden, mask] = Forward(net, rows, batch, &ids);
    // Log-prob of token t from the prediction at t - 1: [B, T-1].
    auto lp = net->TokenLogProbs(hidden.slice(1, 0, -1), ids.slice(1, 1), Temperature(rows[batch[0]])).logprobs.contiguous();
    auto acc = lp.accessor<float, 2>();
    for (size_t k = 0; k < batch.size(); ++k) {
      const TokenRow& row = rows[batch[k]];
      auto& v = out[batch[k]];
      for (int64_t j = 0; j < row.completion_len; ++j) {
        const int64_t at = row.prompt_len + j;
        v.push_back(at >= 1 ? acc[static_cast<int64_t>(k)][at - 1] : 0.f);
      }
    }
  }
  return out;
}

std::vector<float> LastTokenScores(model::Transformer& net, const std::vector<TokenRow>& rows, int64_t batch_tokens) {
  torch::NoGradGuard ng;
  std::vector<float> out(rows.size());
  for (const auto& batch : Batches(rows, batch_tokens, false)) {
    auto [hidden, mask] = Forward(net, rows, batch, nullptr);
    auto scores = net->SequenceScores(hidden, mask).to(torch::kFloat32).contiguous();  // [B]
    for (size_t k = 0; k < batch.size(); ++k) out[batch[k]] = scores[static_cast<int64_t>(k)].item<float>();
  }
  return out;
}

std::vector<std::vector<float>> CompletionTokenScores(model::Transformer& net, const std::vector<TokenRow>& rows,
                                                      int64_t batch_tokens) {
  torch::NoGradGuard ng;
  std::vector<std::vector<float>> out(rows.size());
  for (const auto& batch : Batches(rows, batch_tokens, false)) {
    auto [hidden, mask] = Forward(net, rows, batch, nullptr);
    auto scores = net->Scores(hidden).select(2, 0).to(torch::kFloat32).contiguous();  // [B, T]
    auto acc = scores.accessor<float, 2>();
    for (size_t k = 0; k < batch.size(); ++k) {
      const TokenRow& row = rows[batch[k]];
      for (int64_t j = 0; j < row.completion_len; ++j) out[batch[k]].push_back(acc[static_cast<int64_t>(k)][row.prompt_len + j]);
    }
  }
  return out;
}

std::vector<TokenRow> RowsOf(const std::vector<const Sample*>& samples) {
  std::vector<TokenRow> rows;
  for (const Sample* s : samples) {
    rows.push_back({s->prompt_ids().data(), s->prompt_ids_size(), s->completion_ids().data(), s->completion_ids_size(),
                    s->temperature()});
  }
  return rows;
}

}  // namespace rlhf::scoring
