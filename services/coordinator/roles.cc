#include "services/coordinator/roles.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "common/text/chat_template.h"
#include "rollout/service.h"
#include "services/scoring/scorer.h"
#include "services/scoring/service.h"
#include "services/coordinator/weight_plane.h"

namespace rlhf::coordinator {

const config::Section<RolesConfig>& RolesConfig::Spec() {
  static const auto* s = [] {
    using R = RolesConfig;
    auto* s = new config::Section<R>("roles");
    s->Add("rollout_addresses", &R::rollout_addresses,
           "host:port of `rlhf serve rollout` workers; empty = one embedded worker (rollout.* keys)");
    s->Add("scorer_address", &R::scorer_address, "host:port of `rlhf serve scorer`; \"\" = embedded (reward.* keys)");
    s->Add("scorer_addresses", &R::scorer_addresses,
           "host:port of more `rlhf serve scorer` replicas: scoring calls are spread over them (and scorer_address), "
           "and a failed call moves to the next one");
    s->Add("learner_address", &R::learner_address,
           "host:port of `rlhf serve learner` (online stages): this process only coordinates; \"\" = it also learns");
    s->Add("max_attempts", &R::max_attempts, "tries of a rollout or scoring call before its prompts fail",
           config::AtLeast(1));
    s->Add("backoff_seconds", &R::backoff_seconds, "wait before the second try, doubled for each further one",
           config::AtLeast(0));
    s->Add("weight_chunk_bytes", &R::weight_chunk_bytes, "bytes per chunk of a weight update to rollout workers",
           config::AtLeast(1024));
    s->Add("lease_prompts", &R::lease_prompts,
           "prompts per rollout lease (a worker that finishes its lease takes the next one, so fast workers do "
           "more); 0 = each call's prompts in two leases per worker", config::AtLeast(0));
    s->Add("lease_seconds", &R::lease_seconds,
           "deadline of a rollout lease: a worker that misses it (dead, hung, stopped) loses the lease to another "
           "worker and its late result is refused and counted; 0 = 8x the measured time per prompt times the "
           "lease's prompts, at least 10 s (rpc.deadline_seconds until the first lease is done)", config::AtLeast(0));
    return s;
  }();
  return *s;
}

std::vector<std::string> RolesConfig::scorers() const {
  std::vector<std::string> out;
  if (!scorer_address.empty()) out.push_back(scorer_address);
  out.insert(out.end(), scorer_addresses.begin(), scorer_addresses.end());
  return out;
}

void RegisterRoleKeys(config::Schema& schema) {
  RolesConfig::Spec().Register(schema);
  rollout::RolloutServerConfig::Spec().Register(schema);
  scoring::RewardConfig::Spec().Register(schema);
  scoring::ScorerServiceConfig::Spec().Register(schema);
  RpcConfig::Spec().Register(schema);
  WeightsConfig::Spec().Register(schema);
}

Roles::~Roles() {
  // Servers stop before the services they run.
  if (rollout_server_) rollout_server_->Shutdown();
  if (scorer_server_) scorer_server_->Shutdown();
}

absl::StatusOr<std::unique_ptr<Roles>> Roles::Start(const RolesConfig& roles, const config::Config& config,
                                                    const std::string& policy_dir, int64_t initial_version,
                                                    const scoring::RewardConfig* reward) {
  std::unique_ptr<Roles> r(new Roles());
  r->rpc_ = RpcConfig::Spec().Read(config);
  if (roles.rollout_addresses.empty()) {
    const auto rc = rollout::RolloutServerConfig::Spec().Read(config);
    ASSIGN_OR_RETURN(r->embedded_rollout_, rollout::LoadRolloutService(rc, policy_dir, initial_version));
    auto* svc = r->embedded_rollout_->service.get();
    ASSIGN_OR_RETURN(r->rollout_server_,
                     RpcServer::Start(r->rpc_, {"", "rollout", [svc] { return svc->next_version(); }}, {svc}));
    r->rollout_.push_back(r->rollout_server_->InProcessChannel());
    spdlog::info("embedded rollout worker: {} slots, capacity {}", rc.slots, rc.capacity);
  } else {
    for (const auto& a : roles.rollout_addresses) {
      ASSIGN_OR_RETURN(auto channel, MakeChannel(r->rpc_, a));
      r->rollout_.push_back(std::move(channel));
    }
  }
  if (roles.scorers().empty()) {
    ASSIGN_OR_RETURN(auto scorer, scoring::Scorer::Create(reward ? *reward : scoring::RewardConfig::Spec().Read(config)));
    std::string sources;
    for (const auto& s : scorer->SourceNames()) sources += (sources.empty() ? "" : ", ") + s;
    r->embedded_scorer_ = std::make_unique<scoring::ScorerService>(std::move(scorer),
                                                                   scoring::ScorerServiceConfig::Spec().Read(config));
    ASSIGN_OR_RETURN(r->scorer_server_, RpcServer::Start(r->rpc_, {"", "scorer", {}}, {r->embedded_scorer_.get()}));
    r->scorer_.push_back(r->scorer_server_->InProcessChannel());
    spdlog::info("embedded scorer: {}", sources);
  } else {
    for (const auto& a : roles.scorers()) {
      ASSIGN_OR_RETURN(auto channel, MakeChannel(r->rpc_, a));
      r->scorer_.push_back(std::move(channel));
    }
  }
  return r;
}

std::vector<size_t> SplitIndices(const data::Dataset& data, const std::string& split) {
  if (split == "train") return data.Indices(data::Split::kTrain);
  if (split == "heldout") return data.Indices(data::Split::kHeldout);
  std::vector<size_t> all(data.examples().size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  return all;
}

absl::StatusOr<std::vector<Prompt>> PromptsOf(const data::Dataset& data, const std::vector<size_t>& indices,
                                              const text::ModelText& text, const std::string& answer_field) {
  std::vector<Prompt> out;
  out.reserve(indices.size());
  for (size_t i : indices) {
    const auto& e = data.examples()[i];
    Prompt p;
    p.set_prompt_id(e.prompt_id);
    p.set_prompt_index(static_cast<int64_t>(out.size()));
    ASSIGN_OR_RETURN(auto encoded, text.TokenizePrompt(e.prompt));
    p.set_text(encoded.text);
    for (int32_t id : encoded.ids) p.add_ids(id);
    if (!e.answer.is_null()) (*p.mutable_extra())[answer_field] = e.answer.dump();
    for (const auto& [k, v] : e.extra.items()) (*p.mutable_extra())[k] = v.dump();
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<std::vector<Prompt>> LoadEvalPrompts(const data::DataConfig& dc, const std::string& split,
                                                    const std::string& model_dir, const std::string& answer_field) {
  data::LoadStats stats;
  ASSIGN_OR_RETURN(auto ds, data::Dataset::Load(dc, &stats));
  ASSIGN_OR_RETURN(auto text, text::ModelText::Load(model_dir));
  ASSIGN_OR_RETURN(auto prompts, PromptsOf(ds, SplitIndices(ds, split), text, answer_field));
  spdlog::info("eval: {} prompts of split '{}' of {} ({} train, {} held out)", prompts.size(), split, dc.path,
               stats.train, stats.heldout);
  return prompts;
}

}  // namespace rlhf::coordinator
