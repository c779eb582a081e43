#include "services/scoring/judge.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/model/checkpoint.h"
#include "services/scoring/forward.h"
#include "services/scoring/scorer.h"

namespace rlhf::scoring {

std::string FillTemplate(const std::string& tmpl, const std::map<std::string, std::string>& values) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    if (tmpl[i] == '{') {
      const size_t close = tmpl.find('}', i + 1);
      if (close != std::string::npos) {
        auto it = values.find(tmpl.substr(i + 1, close - i - 1));
        if (it != values.end()) {
          out += it->second;
          i = close + 1;
          continue;
        }
      }
    }
    out += tmpl[i++];
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Judge>> Judge::Create(const RewardConfig& c) {
  if (c.judge_model.empty()) return absl::InvalidArgumentError("reward.judge_weight needs reward.judge_model");
  std::unique_ptr<Judge> j(new Judge());
  j->batch_tokens_ = c.batch_tokens;
  ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(c.dtype));
  load.head = model::Head::kCausalLM;
  ASSIGN_OR_RETURN(j->model_, model::LoadModel(c.judge_model, load));
  const std::string tok_dir = c.judge_tokenizer.empty() ? c.judge_model : c.judge_tokenizer;
  ASSIGN_OR_RETURN(auto text, text::ModelText::Load(tok_dir));
  j->text_.emplace(std::move(text));
  j->chat_template_ = c.judge_chat_template;
  if (c.judge_chat_template) RETURN_IF_ERROR(Annotate(j->text_->chat_status, "reward.judge_chat_template"));
  if (!c.judge_constitution.empty()) {
    std::ifstream in(c.judge_constitution, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("reward.judge_constitution: cannot read ", c.judge_constitution));
    std::stringstream ss;
    ss << in.rdbuf();
    j->constitution_ = ss.str();
    while (!j->constitution_.empty() && (j->constitution_.back() == '\n' || j->constitution_.back() == '\r')) {
      j->constitution_.pop_back();
    }
  }
  j->template_ = c.judge_template;
  j->pair_template_ = c.judge_pair_template;
  auto verdict = [&](const std::string& key, const std::string& text, std::vector<int32_t>* ids) -> absl::Status {
    *ids = j->text_->tokenizer.Encode(text, /*add_special_tokens=*/false);
    if (ids->empty()) return absl::InvalidArgumentError(absl::StrCat("reward.", key, " encodes to no tokens"));
    for (int32_t id : *ids) {
      if (id >= j->model_->config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("reward.", key, ": token ", id, " is outside the judge's vocabulary"));
      }
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(verdict("judge_yes", c.judge_yes, &j->yes_));
  RETURN_IF_ERROR(verdict("judge_no", c.judge_no, &j->no_));
  RETURN_IF_ERROR(verdict("judge_first", c.judge_first, &j->first_));
  RETURN_IF_ERROR(verdict("judge_second", c.judge_second, &j->second_));
  if (j->yes_ == j->no_) return absl::InvalidArgumentError("reward.judge_yes and judge_no encode to the same tokens");
  if (j->first_ == j->second_) {
    return absl::InvalidArgumentError("reward.judge_first and judge_second encode to the same tokens");
  }
  return j;
}

absl::StatusOr<std::vector<int32_t>> Judge::Encode(const std::string& text) const {
  // As every role encodes a prompt (text::ModelText): plain text with the tokenizer's special tokens, the
  // user turn of the chat template as rendered (it carries its own special tokens).
  if (!chat_template_) return text_->EncodePrompt(nlohmann::ordered_json(text));
  return text_->EncodePrompt(nlohmann::ordered_json::array({{{"role", "user"}, {"content", text}}}));
}

absl::StatusOr<std::vector<int32_t>> Judge::PointwisePrompt(const std::string& prompt, const std::string& completion) const {
  return Encode(FillTemplate(template_, {{"constitution", constitution_}, {"prompt", prompt}, {"completion", completion}}));
}

absl::StatusOr<std::vector<int32_t>> Judge::PairPrompt(const std::string& prompt, const std::string& first,
                                                       const std::string& second) const {
  return Encode(FillTemplate(pair_template_,
                             {{"constitution", constitution_}, {"prompt", prompt}, {"first", first}, {"second", second}}));
}

std::vector<absl::StatusOr<double>> Judge::Verdict(const std::vector<absl::StatusOr<std::vector<int32_t>>>& prompts,
                                                   const std::vector<int32_t>& v0, const std::vector<int32_t>& v1) {
  const int64_t context = model_->config().max_position_embeddings;
  std::vector<absl::StatusOr<double>> out(prompts.size(), 0.0);
  std::vector<TokenRow> rows;
  std::vector<size_t> owner;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!prompts[i].ok()) {
      out[i] = prompts[i].status();
      continue;
    }
    const auto& p = *prompts[i];
    const int64_t longest = static_cast<int64_t>(p.size() + std::max(v0.size(), v1.size()));
    if (longest > context) {
      out[i] = absl::InvalidArgumentError(
          absl::StrCat("the judge prompt has ", longest, " tokens; the judge's context is ", context));
      continue;
    }
    for (const auto* v : {&v0, &v1}) {
      rows.push_back({p.data(), static_cast<int64_t>(p.size()), v->data(), static_cast<int64_t>(v->size()), 1.f});
      owner.push_back(i);
    }
  }
  auto lp = CompletionLogProbs(model_, rows, batch_tokens_);
  for (size_t r = 0; r + 1 < rows.size(); r += 2) {
    double l0 = 0, l1 = 0;
    for (float x : lp[r]) l0 += x;
    for (float x : lp[r + 1]) l1 += x;
    // P0 / (P0 + P1) = sigmoid(l0 - l1), stable for very small probabilities.
    out[owner[r]] = 1.0 / (1.0 + std::exp(l1 - l0));
  }
  return out;
}

std::vector<absl::StatusOr<double>> Judge::Pointwise(const std::vector<std::pair<std::string, std::string>>& items) {
  std::vector<absl::StatusOr<std::vector<int32_t>>> prompts;
  for (const auto& [p, c] : items) prompts.push_back(PointwisePrompt(p, c));
  return Verdict(prompts, yes_, no_);
}

std::vector<absl::StatusOr<double>> Judge::Pairwise(const std::vector<Pair>& items) {
  std::vector<absl::StatusOr<std::vector<int32_t>>> prompts;
  for (const auto& it : items) {
    prompts.push_back(PairPrompt(it.prompt, it.a, it.b));
    prompts.push_back(PairPrompt(it.prompt, it.b, it.a));
  }
  auto first = Verdict(prompts, first_, second_);
  std::vector<absl::StatusOr<double>> out;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& ab = first[2 * i];
    const auto& ba = first[2 * i + 1];
    if (!ab.ok()) {
      out.push_back(ab.status());
    } else if (!ba.ok()) {
      out.push_back(ba.status());
    } else {
      out.push_back(0.5 * (*ab + (1.0 - *ba)));
    }
  }
  return out;
}

}  // namespace rlhf::scoring
