#include "rollout/generator.h"

#include <algorithm>
#include <deque>

#include "common/text/tokenizer.h"

namespace rlhf::rollout {

namespace {
struct Live {
  bool active = false;
  Generated out;
  int32_t last_token = 0;
  int64_t steps = 0;  // tokens drawn so far (the stream counter)
};
}  // namespace

Generator::Generator(model::TransformerImpl* model, const text::Tokenizer* tokenizer, std::vector<int32_t> eos_ids,
                     GeneratorOptions options)
    : model_(model), tokenizer_(tokenizer), eos_(std::move(eos_ids)), options_(options) {
  cache_ = std::make_unique<model::KVCache>(model->config(), options.slots, options.capacity, model->dtype());
}

Generator::~Generator() = default;

absl::StatusOr<std::vector<Generated>> Generator::Generate(const std::vector<PromptInput>& prompts, int64_t n,
                                                           const SamplingParams& params,
                                                           const std::function<void(const Generated&)>& on_sample) {
  const auto& cfg = model_->config();
  if (n < 1) return absl::InvalidArgumentError("n (samples per prompt) must be >= 1");
  for (const auto& p : prompts) {
    if (p.ids.empty()) return absl::InvalidArgumentError(absl::StrCat("prompt ", p.prompt_index, " is empty"));
    for (int32_t id : p.ids) {
      if (id < 0 || id >= cfg.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt ", p.prompt_index, ": token id ", id,
                                                       " is outside the vocabulary [0, ", cfg.vocab_size, ")"));
      }
    }
    if (static_cast<int64_t>(p.ids.size()) >= options_.capacity) {
      return absl::InvalidArgumentError(absl::StrCat("prompt ", p.prompt_index, " has ", p.ids.size(),
                                                     " tokens; the cache holds ", options_.capacity, " per sequence"));
    }
  }
  torch::NoGradGuard ng;
  // Work queue: (prompt, first sample index, count).
  struct Work {
    size_t prompt;
    int64_t first, count;
  };
  std::deque<Work> queue;
  for (size_t i = 0; i < prompts.size(); ++i) queue.push_back({i, 0, n});
  std::vector<Live> live(options_.slots);
  std::vector<Generated> done;

  auto finish = [&](int64_t slot, bool stopped) {
    Live& l = live[slot];
    l.out.stopped = stopped;
    if (tokenizer_ != nullptr && l.out.completion.empty()) {
      auto text = tokenizer_->Decode(l.out.completion_ids, /*skip_special_tokens=*/true);
      if (text.ok()) l.out.completion = *text;
    }
    if (on_sample) on_sample(l.out);
    done.push_back(std::move(l.out));
    l = Live();
  };
  int64_t weights_version = 0;  // of the weights the model holds (with a weights-version source)
  // Records a drawn token for a slot; returns true when the sequence is over.
  auto push = [&](int64_t slot, int32_t token, float logprob) {
    Live& l = live[slot];
    l.out.completion_ids.push_back(token);
    l.out.logprobs.push_back(logprob);
    if (between_steps_) l.out.token_versions.push_back(weights_version);
    l.last_token = token;
    ++l.steps;
    if (std::find(eos_.begin(), eos_.end(), token) != eos_.end()) {
      finish(slot, true);
      return true;
    }
    if (!params.stop.empty() && tokenizer_ != nullptr) {
      auto text = tokenizer_->Decode(l.out.completion_ids, true);
      if (text.ok()) {
        for (const auto& s : params.stop) {
          auto pos = s.empty() ? std::string::npos : text->find(s);
          if (pos != std::string::npos) {
            l.out.completion = text->substr(0, pos);
            finish(slot, true);
            return true;
          }
        }
      }
    }
    const int64_t used = cache_->length(slot) + 1;  // the token just drawn still needs a column
    if (static_cast<int64_t>(l.out.completion_ids.size()) >= params.max_new_tokens || used > options_.capacity) {
      finish(slot, false);
      return true;
    }
    return false;
  };
  // Prefills queued prompts into free slots.
  auto admit = [&]() {
    for (;;) {
      if (queue.empty()) return;
      std::vector<int64_t> free;
      for (int64_t s = 0; s < options_.slots; ++s) {
        if (!live[s].active) free.push_back(s);
      }
      if (free.empty()) return;
      Work w = queue.front();
      queue.pop_front();
      const int64_t take = std::min<int64_t>(w.count, static_cast<int64_t>(free.size()));
      if (take < w.count) queue.push_front({w.prompt, w.first + take, w.count - take});
      const auto& p = prompts[w.prompt];
      const int64_t first_slot = free[0];
      cache_->Reset(first_slot);
      std::vector<int64_t> ids(p.ids.begin(), p.ids.end());
      auto input = torch::tensor(ids, torch::kInt64).unsqueeze(0);
      auto hidden = model_->Hidden(input, {}, cache_.get(), torch::tensor({first_slot}, torch::kInt64));
      auto logits = model_->Logits(hidden.select(1, hidden.size(1) - 1)).to(torch::kFloat32);  // [1, V]
      std::vector<uint64_t> seeds, steps;
      for (int64_t k = 0; k < take; ++k) {
        const int64_t slot = free[k];
        if (k > 0) cache_->CopySlot(first_slot, slot);
        Live& l = live[slot];
        l = Live();
        l.active = true;
        l.out.prompt_index = p.prompt_index;
        l.out.sample_index = w.first + k;
        l.out.seed = StreamSeed(params.seed, p.prompt_id, l.out.sample_index);
        seeds.push_back(l.out.seed);
        steps.push_back(0);
      }
      auto draw = Sample(logits.expand({take, logits.size(1)}), params, seeds, steps);
      for (int64_t k = 0; k < take; ++k) {
        push(free[k], static_cast<int32_t>(draw.tokens[k].item<int64_t>()), draw.logprobs[k].item<float>());
      }
    }
  };

  bool any_active = true;
  while (!queue.empty() || any_active) {
    if (between_steps_) weights_version = between_steps_();
    bool all_free = std::none_of(live.begin(), live.end(), [](const Live& l) { return l.active; });
    if (options_.continuous || all_free) admit();  // static batching: new prompts only into an empty batch
    std::vector<int64_t> slots;
    std::vector<int64_t> tokens;
    std::vector<uint64_t> seeds, steps;
    for (int64_t s = 0; s < options_.slots; ++s) {
      if (!live[s].active) continue;
      slots.push_back(s);
      tokens.push_back(live[s].last_token);
      seeds.push_back(live[s].out.seed);
      steps.push_back(static_cast<uint64_t>(live[s].steps));
    }
    any_active = !slots.empty();
    if (!any_active) continue;
    auto input = torch::tensor(tokens, torch::kInt64).unsqueeze(1);  // [S, 1]
    auto hidden = model_->Hidden(input, {}, cache_.get(), torch::tensor(slots, torch::kInt64));
    auto logits = model_->Logits(hidden.select(1, 0)).to(torch::kFloat32);  // [S, V]
    auto draw = Sample(logits, params, seeds, steps);
    auto tok = draw.tokens.to(torch::kCPU);
    auto lp = draw.logprobs.to(torch::kCPU);
    if (observer_) {
      int64_t cached = 0;
      for (int64_t s : slots) cached += cache_->length(s);
      observer_(static_cast<int64_t>(slots.size()), cached);
    }
    for (size_t k = 0; k < slots.size(); ++k) {
      push(slots[k], static_cast<int32_t>(tok[k].item<int64_t>()), lp[k].item<float>());
    }
    any_active = std::any_of(live.begin(), live.end(), [](const Live& l) { return l.active; });
  }
  if (observer_) observer_(0, 0);
  std::sort(done.begin(), done.end(), [](const Generated& a, const Generated& b) {
    return a.prompt_index != b.prompt_index ? a.prompt_index < b.prompt_index : a.sample_index < b.sample_index;
  });
  return done;
}

}  // namespace rlhf::rollout
