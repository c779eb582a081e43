#include "trainer/batching.h"

#include <algorithm>

namespace rlhf::trainer {

MicroBatch PadRows(const std::vector<const TokenSeq*>& seqs, int32_t pad_id) {
  int64_t t = 1;
  for (const auto* s : seqs) t = std::max<int64_t>(t, static_cast<int64_t>(s->ids.size()));
  const int64_t b = static_cast<int64_t>(seqs.size());
  auto ids = torch::full({b, t}, pad_id, torch::kInt64);
  auto att = torch::zeros({b, t}, torch::kInt64);
  auto tgt = torch::zeros({b, t}, torch::kFloat32);
  auto ia = ids.accessor<int64_t, 2>();
  auto aa = att.accessor<int64_t, 2>();
  auto ta = tgt.accessor<float, 2>();
  for (int64_t r = 0; r < b; ++r) {
    const auto& s = *seqs[static_cast<size_t>(r)];
    for (size_t i = 0; i < s.ids.size(); ++i) {
      ia[r][static_cast<int64_t>(i)] = s.ids[i];
      aa[r][static_cast<int64_t>(i)] = 1;
      ta[r][static_cast<int64_t>(i)] = (i < s.target.size() && s.target[i] && i > 0) ? 1.f : 0.f;
    }
  }
  MicroBatch mb;
  mb.ids = ids;
  mb.attention_mask = att;
  mb.target_mask = tgt;
  return mb;
}

std::vector<MicroBatch> PackRows(const std::vector<const TokenSeq*>& seqs, int64_t max_len, int64_t rows_per_micro,
                                 int32_t pad_id) {
  // First fit: each row holds sequences whose lengths sum to at most max_len.
  std::vector<std::vector<size_t>> rows;
  std::vector<int64_t> used;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t len = std::min<int64_t>(max_len, static_cast<int64_t>(seqs[i]->ids.size()));
    size_t r = 0;
    while (r < rows.size() && used[r] + len > max_len) ++r;
    if (r == rows.size()) rows.emplace_back(), used.push_back(0);
    rows[r].push_back(i);
    used[r] += len;
  }
  std::vector<MicroBatch> out;
  for (size_t r0 = 0; r0 < rows.size(); r0 += static_cast<size_t>(rows_per_micro)) {
    const size_t r1 = std::min(rows.size(), r0 + static_cast<size_t>(rows_per_micro));
    const int64_t b = static_cast<int64_t>(r1 - r0);
    int64_t t = 1;
    for (size_t r = r0; r < r1; ++r) t = std::max(t, used[r]);
    auto ids = torch::full({b, t}, pad_id, torch::kInt64);
    auto att = torch::zeros({b, t}, torch::kInt64);
    auto pos = torch::zeros({b, t}, torch::kInt64);
    auto seg = torch::full({b, t}, -1, torch::kInt64);
    auto tgt = torch::zeros({b, t}, torch::kFloat32);
    auto ia = ids.accessor<int64_t, 2>();
    auto aa = att.accessor<int64_t, 2>();
    auto pa = pos.accessor<int64_t, 2>();
    auto sa = seg.accessor<int64_t, 2>();
    auto ta = tgt.accessor<float, 2>();
    for (size_t r = r0; r < r1; ++r) {
      const int64_t row = static_cast<int64_t>(r - r0);
      int64_t col = 0, segment = 0;
      for (size_t si : rows[r]) {
        const auto& s = *seqs[si];
        const int64_t len = std::min<int64_t>(max_len, static_cast<int64_t>(s.ids.size()));
        for (int64_t i = 0; i < len; ++i, ++col) {
          ia[row][col] = s.ids[static_cast<size_t>(i)];
          aa[row][col] = 1;
          pa[row][col] = i;
          sa[row][col] = segment;
          // The first token of a segment is never a target: nothing in its segment predicts it.
          ta[row][col] = (i > 0 && static_cast<size_t>(i) < s.target.size() && s.target[static_cast<size_t>(i)]) ? 1.f : 0.f;
        }
        ++segment;
      }
    }
    MicroBatch mb;
    mb.ids = ids;
    mb.attention_mask = att;
    mb.position_ids = pos;
    mb.segment_ids = seg;
    mb.target_mask = tgt;
    out.push_back(std::move(mb));
  }
  return out;
}

std::vector<std::vector<size_t>> Chunks(const std::vector<size_t>& items, int64_t micro) {
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < items.size(); i += static_cast<size_t>(micro)) {
    out.emplace_back(items.begin() + static_cast<std::ptrdiff_t>(i),
                     items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), i + static_cast<size_t>(micro))));
  }
  return out;
}

std::pair<size_t, size_t> ShardRange(size_t n, int rank, int size) {
  return {n * static_cast<size_t>(rank) / static_cast<size_t>(size),
          n * static_cast<size_t>(rank + 1) / static_cast<size_t>(size)};
}

MicroBatch SelectRows(const MicroBatch& full, const std::vector<int64_t>& rows) {
  auto idx = torch::tensor(rows, torch::kInt64);
  MicroBatch mb;
  mb.attention_mask = full.attention_mask.index_select(0, idx);
  const int64_t t = std::max<int64_t>(1, mb.attention_mask.sum(1).max().item<int64_t>());
  auto cut = [&](const torch::Tensor& x) {
    if (!x.defined()) return x;
    auto y = x.index_select(0, idx);
    return (y.dim() >= 2 && y.size(1) == full.ids.size(1)) ? y.slice(1, 0, t).contiguous() : y;
  };
  mb.attention_mask = mb.attention_mask.slice(1, 0, t).contiguous();
  mb.ids = cut(full.ids);
  mb.position_ids = cut(full.position_ids);
  mb.segment_ids = cut(full.segment_ids);
  mb.target_mask = cut(full.target_mask);
  for (const auto& [k, v] : full.fields) mb.fields[k] = cut(v);
  return mb;
}

std::vector<size_t> MismatchPartners(size_t n, size_t rows_per_example) {
  std::vector<size_t> out(n);
  for (size_t k = 0; k < n; ++k) out[k] = (k + rows_per_example) % n;
  return out;
}

TokenSeq PromptWithCompletion(const TokenSeq& a, const TokenSeq& b) {
  auto first_target = [](const TokenSeq& s) {
    return static_cast<size_t>(std::find(s.target.begin(), s.target.end(), 1) - s.target.begin());
  };
  const size_t pa = first_target(a), pb = first_target(b);
  TokenSeq out;
  out.ids.assign(a.ids.begin(), a.ids.begin() + static_cast<std::ptrdiff_t>(pa));
  out.target.assign(pa, 0);
  out.ids.insert(out.ids.end(), b.ids.begin() + static_cast<std::ptrdiff_t>(pb), b.ids.end());
  out.target.insert(out.target.end(), b.target.begin() + static_cast<std::ptrdiff_t>(pb), b.target.end());
  return out;
}

}  // namespace rlhf::trainer
