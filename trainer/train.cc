#include "trainer/train.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/comm/group.h"
#include "common/data/dataset.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"
#include "common/sample_json.h"
#include "common/text/chat_template.h"
#include "common/text/tokenizer.h"
#include "rollout/weight_client.h"
#include "services/coordinator/coordinator.h"
#include "services/coordinator/eval.h"
#include "services/coordinator/roles.h"
#include "services/scoring/scorer.h"
#include "trainer/batching.h"
#include "trainer/learner.h"
#include "trainer/objectives.h"
#include "trainer/online_learner.h"
#include "trainer/rl_update.h"
#include "trainer/train_checkpoint.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---- configuration ------------------------------------------------------------------------------------
struct TrainConfig {
  std::vector<std::string> stages = {"sft"};  // the pipeline, in order: sft | reward_model | dpo | ppo | grpo
  std::string model;                          // starting policy (HF folder with tokenizer files)
  int64_t save_every = 0;                     // checkpoint every N steps of a stage; 0 = at the end of each stage
  int64_t keep_checkpoints = 2;               // newest checkpoints kept; 0 = all
  bool resume = false;                        // continue the run directory from its newest good checkpoint
  int64_t log_every = 1;                      // print a progress line every N steps
  static const config::Section<TrainConfig>& Spec() {
    static const auto* s = [] {
      using T = TrainConfig;
      auto* s = new config::Section<T>("train");
      s->Add("stages", &T::stages, "pipeline of stages, in order: sft | reward_model | dpo | kto | orpo | simpo | cpo | rrhf | "
             "ppo | grpo | online_dpo | rft");
      s->Add("model", &T::model, "starting policy: HF model folder with its tokenizer files");
      s->Add("save_every", &T::save_every, "checkpoint every N steps of a stage; 0 = at the end of each stage",
             config::AtLeast(0));
      s->Add("keep_checkpoints", &T::keep_checkpoints, "newest checkpoints kept; 0 = all", config::AtLeast(0));
      s->Add("resume", &T::resume, "continue the run directory from its newest checkpoint that verifies");
      s->Add("log_every", &T::log_every, "print a progress line every N steps", config::AtLeast(1));
      return s;
    }();
    return *s;
  }
};

// Keys shared by the offline stages (sft, reward_model, dpo), each under its own prefix.
struct OfflineConfig {
  std::string model;             // starting model; "" = the policy of the previous stage (or train.model)
  int64_t epochs = 1;            // passes over the training split
  int64_t max_steps = 0;         // stop after this many optimizer steps; 0 = epochs decide
  int64_t batch_size = 8;        // examples (pairs) per optimizer step over all ranks
  int64_t micro_batch_size = 4;  // rows (pairs) per forward/backward on one rank
  int64_t max_length = 512;      // tokens per example; longer ones are cut
  int64_t eval_every = 0;        // evaluate on the held-out split every N steps; 0 = at the end only
  // sft
  bool packing = false;          // pack several examples per row (attention kept inside each)
  // reward_model
  double centering = 0;          // coefficient of mean((r_c + r_r)^2)
  std::string margin_field;      // per-pair margin field of the data; "" = no margin
  bool freeze_backbone = false;  // train the score head only
  // preference stages (dpo, kto, orpo, simpo, cpo, rrhf)
  std::string loss_type = "sigmoid";  // dpo
  double beta = 0.1;
  double label_smoothing = 0;
  bool ipo_length_normalize = true;   // dpo ipo
  double gamma = 0.5;                 // simpo
  double alpha = 1.0;                 // cpo
  double desirable_weight = 1.0;      // kto
  double undesirable_weight = 1.0;    // kto
  double sft_weight = 1.0;            // rrhf
  std::string reference;         // reference policy; "" = the starting model (dpo, kto)
  bool reference_cache = true;   // keep reference log-probs in the stage directory (dpo, kto)
};

config::Section<OfflineConfig> OfflineSection(const std::string& prefix) {
  using O = OfflineConfig;
  config::Section<O> s(prefix);
  s.Add("model", &O::model, "starting model; \"\" = the policy of the previous stage (or train.model)");
  s.Add("epochs", &O::epochs, "passes over the training split", config::AtLeast(1));
  s.Add("max_steps", &O::max_steps, "stop after this many optimizer steps; 0 = epochs decide", config::AtLeast(0));
  s.Add("batch_size", &O::batch_size, "examples per optimizer step over all ranks (pairs for preference data)",
        config::AtLeast(1));
  s.Add("micro_batch_size", &O::micro_batch_size, "rows per forward/backward on one rank (pairs for preference data)",
        config::AtLeast(1));
  s.Add("max_length", &O::max_length, "tokens per example; longer ones are cut", config::AtLeast(2));
  s.Add("eval_every", &O::eval_every, "evaluate on the held-out split every N steps; 0 = at the end only",
        config::AtLeast(0));
  if (prefix == "sft") s.Add("packing", &O::packing, "pack several examples per row (attention kept inside each)");
  if (prefix == "reward_model") {
    s.Add("centering", &O::centering, "reward centring coefficient c of c * mean((r_c + r_r)^2)", config::AtLeast(0));
    s.Add("margin_field", &O::margin_field, "data field holding a per-pair margin; \"\" = no margin");
    s.Add("freeze_backbone", &O::freeze_backbone, "train the score head only");
  }
  if (prefix == "dpo") {
    s.Add("loss_type", &O::loss_type, "sigmoid | ipo | hinge | robust", config::OneOf({"sigmoid", "ipo", "hinge", "robust"}));
    s.Add("ipo_length_normalize", &O::ipo_length_normalize, "IPO on per-token means (TRL) instead of sums (OpenRLHF)");
  }
  if (prefix == "dpo" || prefix == "kto") {
    s.Add("beta", &O::beta, "strength of the implicit KL to the reference", config::AtLeast(0));
    s.Add("reference", &O::reference, "reference policy; \"\" = the starting model");
    s.Add("reference_cache", &O::reference_cache,
          "keep the reference log-probs of the data in the stage directory and reuse them (resume, reruns)");
  }
  if (prefix == "dpo") s.Add("label_smoothing", &O::label_smoothing, "probability of a flipped label (cDPO, robust)", config::InRange(0, 0.5));
  if (prefix == "kto") {
    s.Add("desirable_weight", &O::desirable_weight, "lambda_D: weight of desirable completions", config::AtLeast(0));
    s.Add("undesirable_weight", &O::undesirable_weight, "lambda_U: weight of undesirable completions", config::AtLeast(0));
  }
  if (prefix == "orpo") s.Add("beta", &O::beta, "weight of the odds-ratio term beside the NLL of chosen", config::AtLeast(0));
  if (prefix == "simpo") {
    s.Add("beta", &O::beta, "scale of the length-normalised log-prob margin", config::AtLeast(0)).Default(2.0);
    s.Add("gamma", &O::gamma, "target reward margin", config::AtLeast(0));
  }
  if (prefix == "cpo") {
    s.Add("beta", &O::beta, "scale of the log-prob margin", config::AtLeast(0));
    s.Add("alpha", &O::alpha, "weight of the NLL of chosen", config::AtLeast(0));
  }
  if (prefix == "simpo" || prefix == "cpo") {
    s.Add("label_smoothing", &O::label_smoothing, "probability of a flipped label", config::InRange(0, 0.5));
  }
  if (prefix == "rrhf") s.Add("sft_weight", &O::sft_weight, "weight of the NLL of the best (chosen) response", config::AtLeast(0));
  return s;
}

struct RlStageConfig {
  std::string policy;            // starting policy; "" = the policy of the previous stage (or train.model)
  std::string critic;            // critic init (ppo); "" = the previous reward_model stage's output, else the policy
  std::string reference;         // reference policy for KL when samples carry no ref_logprobs; "" = the starting policy
  std::string samples;           // JSONL of scored samples (rewards filled in), groups of one prompt consecutive
  int64_t rollout_batch_size = 8;  // prompts per policy step (times group_size samples)
  int64_t steps = 0;             // policy steps; 0 = every full rollout batch of the file (epochs when online)
  // online (rl.data.path set): the coordinator generates and scores the samples of each step
  int64_t epochs = 1;            // passes over the training prompts
  double temperature = 1.0;      // sampling of the rollouts
  double top_p = 1.0;
  int64_t top_k = 0;
  double min_p = 0.0;
  int64_t max_new_tokens = 64;
  std::vector<std::string> stop;
  bool dynamic_sampling = false;  // filter groups whose rewards are all equal (DAPO), recorded in the ledger
  bool scorer_reference = false;  // take reference log-probs from the scorer (reward.reference_model) instead of rl.reference
};

const config::Section<RlStageConfig>& RlStageSection() {
  static const auto* s = [] {
    using R = RlStageConfig;
    auto* s = new config::Section<R>("rl");
    s->Add("policy", &R::policy, "starting policy; \"\" = the policy of the previous stage (or train.model)");
    s->Add("critic", &R::critic, "critic init for ppo; \"\" = the previous reward_model stage's output, else the policy");
    s->Add("reference", &R::reference, "reference policy for KL when samples lack ref_logprobs; \"\" = the starting policy");
    s->Add("samples", &R::samples, "JSONL of scored samples (groups of one prompt consecutive)");
    s->Add("rollout_batch_size", &R::rollout_batch_size, "prompts per policy step (each with group_size samples)",
           config::AtLeast(1));
    s->Add("steps", &R::steps, "policy steps; 0 = every full rollout batch of the file (online: rl.epochs decide)",
           config::AtLeast(0));
    s->Add("epochs", &R::epochs, "online: passes over the training prompts of rl.data", config::AtLeast(1));
    s->Add("temperature", &R::temperature, "online: sampling temperature of the rollouts", config::AtLeast(1e-6));
    s->Add("top_p", &R::top_p, "online: nucleus mass of the rollouts; 1 = off", config::InRange(0, 1));
    s->Add("top_k", &R::top_k, "online: keep the k most likely tokens; 0 = off", config::AtLeast(0));
    s->Add("min_p", &R::min_p, "online: keep tokens with p >= min_p * p_max; 0 = off", config::InRange(0, 1));
    s->Add("max_new_tokens", &R::max_new_tokens, "online: longest completion of a rollout", config::AtLeast(1));
    s->Add("stop", &R::stop, "online: stop strings of the rollouts (besides the model's eos ids)");
    s->Add("dynamic_sampling", &R::dynamic_sampling,
           "online: filter prompt groups whose rewards are all equal (DAPO); they are recorded as filtered");
    s->Add("scorer_reference", &R::scorer_reference,
           "online: reference log-probs from the scorer (reward.reference_model) instead of rl.reference");
    return s;
  }();
  return *s;
}

// Online DPO and rejection-sampling fine-tuning: the online loop of the rl.* keys with another update.
struct OnlinePrefConfig {
  double beta = 0.1;                  // online_dpo: strength of the implicit KL to the reference
  std::string loss_type = "sigmoid";  // online_dpo: sigmoid | ipo | hinge | robust
  double min_margin = 0.0;            // online_dpo: a pair is trained only when best - worst >= this (and > 0)
  double threshold = 1.0;             // rft: a prompt's best sample is kept when its reward is >= this
  static const config::Section<OnlinePrefConfig>& Dpo() {
    static const auto* s = [] {
      using O = OnlinePrefConfig;
      auto* s = new config::Section<O>("online_dpo");
      s->Add("beta", &O::beta, "strength of the implicit KL to the reference (rl.reference)", config::AtLeast(0));
      s->Add("loss_type", &O::loss_type, "sigmoid | ipo | hinge | robust", config::OneOf({"sigmoid", "ipo", "hinge", "robust"}));
      s->Add("min_margin", &O::min_margin,
             "train a prompt's pair only when the best reward exceeds the worst by at least this (a noisy judge's "
             "near-ties are skipped; they count against kept_fraction); 0 = any difference",
             config::AtLeast(0));
      return s;
    }();
    return *s;
  }
  static const config::Section<OnlinePrefConfig>& Rft() {
    static const auto* s = [] {
      using O = OnlinePrefConfig;
      auto* s = new config::Section<O>("rft");
      s->Add("threshold", &O::threshold, "keep a prompt's best sample when its reward is >= this; SFT on the kept ones");
      return s;
    }();
    return *s;
  }
};

const config::Section<RlConfig>& RlSection() {
  static const auto* s = [] {
    auto* s = new config::Section<RlConfig>("rl");
    RlConfig::AddTo(*s);
    return s;
  }();
  return *s;
}

config::Section<data::DataConfig> DataSection(const std::string& prefix) {
  config::Section<data::DataConfig> s(prefix + ".data");
  data::DataConfig::AddTo(s);
  return s;
}

config::Section<OptimConfig> OptimSection(const std::string& prefix) {
  config::Section<OptimConfig> s(prefix);
  OptimConfig::AddTo(s);
  return s;
}

const std::vector<std::string> kStages = {"sft", "reward_model", "dpo", "kto", "orpo", "simpo", "cpo", "rrhf", "ppo", "grpo",
                                          "online_dpo", "rft"};
const std::vector<std::string> kOfflineStages = {"sft", "reward_model", "dpo", "kto", "orpo", "simpo", "cpo", "rrhf"};

// ---- metrics log ----------------------------------------------------------------------------------------
class MetricsLog {
 public:
  // Opens <run>/metrics.jsonl for appending; lines after (stage_index, step) are dropped first (resume).
  absl::Status Open(const std::string& run_dir, bool writer, int64_t keep_stage, int64_t keep_step) {
    writer_ = writer;
    if (!writer_) return absl::OkStatus();
    path_ = (fs::path(run_dir) / "metrics.jsonl").string();
    if (keep_stage >= 0) {
      Keep(keep_stage, keep_step);
    } else {
      std::ofstream out(path_, std::ios::trunc);
    }
    out_.open(path_, std::ios::app);
    if (!out_) return absl::UnavailableError(absl::StrCat("cannot open ", path_));
    return absl::OkStatus();
  }
  // Drops the lines after (stage_index, step) of an open log (a coordinator learns its step from the learner).
  absl::Status DropAfter(int64_t stage_index, int64_t step) {
    if (!writer_) return absl::OkStatus();
    out_.close();
    Keep(stage_index, step);
    out_.open(path_, std::ios::app);
    if (!out_) return absl::UnavailableError(absl::StrCat("cannot open ", path_));
    return absl::OkStatus();
  }
  void Write(int64_t stage_index, const std::string& stage, int64_t step, const std::map<std::string, double>& m) {
    if (!writer_) return;
    json j = {{"stage_index", stage_index}, {"stage", stage}, {"step", step}};
    for (const auto& [k, v] : m) j[k] = std::isfinite(v) ? json(v) : json(nullptr);
    out_ << j.dump() << "\n";
    out_.flush();
    // The same figures as gauges (rlhf_train_<name>{stage=...}).
    auto& reg = Metrics::Process();
    for (const auto& [k, v] : m) {
      std::string name = "rlhf_train_";
      for (char ch : k) name += (std::isalnum(static_cast<unsigned char>(ch)) ? static_cast<char>(std::tolower(ch)) : '_');
      if (name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0) name += "_value";
      reg.Gauge(name, "training metric " + k + " of the latest step", {{"stage", stage}}).Set(v);
    }
    reg.Gauge("rlhf_train_step", "steps done in the current stage", {{"stage", stage}}).Set(static_cast<double>(step));
  }

 private:
  void Keep(int64_t keep_stage, int64_t keep_step) {
    if (!fs::exists(path_)) return;
    std::ifstream in(path_);
    std::string line, kept;
    while (std::getline(in, line)) {
      auto j = json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;
      int64_t si = j.value("stage_index", int64_t{0}), st = j.value("step", int64_t{0});
      if (si < keep_stage || (si == keep_stage && st <= keep_step)) kept += line + "\n";
    }
    std::ofstream out(path_, std::ios::trunc);
    out << kept;
  }
  bool writer_ = false;
  std::string path_;
  std::ofstream out_;
};

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A metric of a step, NaN when the step has none (e.g. no KL without a reference).
double Get(const std::map<std::string, double>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? std::nan("") : it->second;
}

// ---- pipeline state -------------------------------------------------------------------------------------
struct Pipeline {
  const config::Config* config = nullptr;
  std::string run_dir;
  uint64_t seed = 0;
  TrainConfig train;
  std::shared_ptr<comm::Group> group;
  int64_t bucket_bytes = 25 << 20;
  MetricsLog log;
  std::string policy;        // newest policy folder
  std::string reward_model;  // newest reward model folder
  std::string tokenizer_dir; // folder with tokenizer files
  std::optional<TrainState> resume;  // the checkpoint state when this stage resumes
  std::string resume_dir;
  std::string serve_learner_address;  // `rlhf serve learner`: online stages serve rlhf.Learner here
  bool rank0() const { return group->rank() == 0; }
};

std::string StageDir(const Pipeline& p, int64_t index, const std::string& stage) {
  return (fs::path(p.run_dir) / absl::StrCat(index, "-", stage)).string();
}

// Fault-injection seam for the resume tests: RLHF_FAULT_KILL_AFTER_CHECKPOINT=<step> kills this process
// (SIGKILL, no cleanup) right after the checkpoint of that step is committed.
void MaybeKillAfterCheckpoint(int64_t step) {
  const char* v = std::getenv("RLHF_FAULT_KILL_AFTER_CHECKPOINT");
  if (v && std::atoll(v) == step) {
    spdlog::warn("fault injection: killing the process after the checkpoint of step {}", step);
    spdlog::default_logger()->flush();
    std::raise(SIGKILL);
  }
}

absl::Status Checkpoint(Pipeline& p, Learner& learner, TrainState state) {
  state.learner_steps = learner.steps();
  state.skipped_steps = learner.skipped_steps();
  ASSIGN_OR_RETURN(auto dir, SaveTrainCheckpoint(p.run_dir, learner, state, p.tokenizer_dir, p.train.keep_checkpoints));
  RETURN_IF_ERROR(p.group->Barrier());  // nobody runs ahead of a checkpoint that may be needed to resume
  if (p.rank0()) spdlog::info("checkpoint {}", dir);
  MaybeKillAfterCheckpoint(state.step);
  return absl::OkStatus();
}

absl::StatusOr<model::Transformer> LoadForTraining(const std::string& dir, std::optional<model::Head> head,
                                                   uint64_t seed) {
  model::LoadOptions lo;
  lo.dtype = torch::kFloat32;  // f32 master weights
  lo.head = head;
  lo.init_seed = seed;
  ASSIGN_OR_RETURN(auto net, model::LoadModel(dir, lo));
  net->train();
  return net;
}

absl::StatusOr<model::Transformer> LoadFrozen(const std::string& dir) {
  model::LoadOptions lo;
  lo.dtype = torch::kFloat32;
  ASSIGN_OR_RETURN(auto net, model::LoadModel(dir, lo));
  for (auto& prm : net->parameters()) prm.set_requires_grad(false);
  net->eval();
  return net;
}

struct TextTools {
  text::Tokenizer tokenizer;
  std::optional<text::ChatTemplate::FromFolderResult> chat;
  data::ojson vars = data::ojson::object();
  int32_t eos = -1, pad = 0;
};

absl::StatusOr<TextTools> LoadTextTools(const std::string& dir, const model::HfConfig& cfg) {
  ASSIGN_OR_RETURN(auto tok, text::Tokenizer::FromFile(dir));
  TextTools t{std::move(tok), std::nullopt, data::ojson::object(), -1, 0};
  auto chat = text::ChatTemplate::FromFolder(dir);
  if (chat.ok()) {
    t.vars["bos_token"] = chat->bos_token;
    t.vars["eos_token"] = chat->eos_token;
    if (!chat->eos_token.empty()) {
      if (auto id = t.tokenizer.TokenToId(chat->eos_token)) t.eos = *id;
    }
    t.chat.emplace(std::move(*chat));
  }
  if (t.eos < 0 && !cfg.eos_token_ids.empty()) t.eos = static_cast<int32_t>(cfg.eos_token_ids[0]);
  t.pad = cfg.pad_token_id ? static_cast<int32_t>(*cfg.pad_token_id) : (t.eos >= 0 ? t.eos : 0);
  return t;
}

// ---- the offline loop (sft, reward_model, dpo) ---------------------------------------------------------------
struct OfflineTask {
  std::string stage;
  int64_t stage_index = 0;
  OfflineConfig cfg;
  int64_t n_train = 0;  // examples in the training split
  // Micro-batches of this rank for the examples at these positions of the epoch's order.
  std::function<absl::StatusOr<std::vector<MicroBatch>>(const std::vector<size_t>&)> micro;
  std::function<std::vector<size_t>(int64_t epoch)> order;
  std::function<absl::StatusOr<std::map<std::string, double>>()> evaluate;  // held-out metrics
  Objective* objective = nullptr;
};

absl::Status RunOffline(Pipeline& p, Learner& learner, OfflineTask& task) {
  const auto& c = task.cfg;
  const int64_t per_epoch = task.n_train / c.batch_size;
  if (per_epoch == 0) {
    return absl::InvalidArgumentError(absl::StrCat(task.stage, ": the training split has ", task.n_train,
                                                   " examples, fewer than batch_size ", c.batch_size));
  }
  if (c.batch_size < p.group->size()) {
    return absl::InvalidArgumentError(absl::StrCat(task.stage, ".batch_size must be at least the number of ranks"));
  }
  int64_t total = per_epoch * c.epochs;
  if (c.max_steps > 0) total = std::min(total, c.max_steps);
  learner.SetTotalSteps(total);
  int64_t step = 0;
  if (p.resume) {
    step = p.resume->step;
    RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, learner, *p.resume));
    if (p.rank0()) spdlog::info("{}: resumed at step {} from {}", task.stage, step, p.resume_dir);
    p.resume.reset();
  }
  if (p.rank0()) spdlog::info("{}: {} steps ({} per epoch, batch {} over {} ranks)", task.stage, total, per_epoch,
                              c.batch_size, p.group->size());
  int64_t cached_epoch = -1;
  std::vector<size_t> order;
  for (; step < total; ++step) {
    const int64_t epoch = step / per_epoch;
    if (epoch != cached_epoch) order = task.order(epoch), cached_epoch = epoch;
    const size_t begin = static_cast<size_t>((step % per_epoch) * c.batch_size);
    auto [lo, hi] = ShardRange(static_cast<size_t>(c.batch_size), p.group->rank(), p.group->size());
    std::vector<size_t> mine(order.begin() + static_cast<std::ptrdiff_t>(begin + lo),
                             order.begin() + static_cast<std::ptrdiff_t>(begin + hi));
    ASSIGN_OR_RETURN(auto micro, task.micro(mine));
    ASSIGN_OR_RETURN(auto r, learner.Step(micro, *task.objective));
    auto m = r.metrics;
    m["epoch"] = static_cast<double>(step) / static_cast<double>(per_epoch);
    const bool last = step + 1 == total;
    if ((c.eval_every > 0 && (step + 1) % c.eval_every == 0) || last) {
      ASSIGN_OR_RETURN(auto ev, task.evaluate());
      for (const auto& [k, v] : ev) m["eval/" + k] = v;
    }
    p.log.Write(task.stage_index, task.stage, step + 1, m);
    if (p.rank0() && ((step + 1) % p.train.log_every == 0 || last)) {
      std::string evs;
      for (const auto& [k, v] : m) {
        if (k.rfind("eval/", 0) == 0) evs += absl::StrFormat(" %s %.4f", k, v);
      }
      spdlog::info("{} step {}/{}: loss {:.4f} grad_norm {:.3f} lr {:.3g} {:.0f} tok/s{}{}", task.stage, step + 1, total,
                   m["loss"], m["grad_norm/policy"] + m["grad_norm/reward_model"], m["lr/policy"] + m["lr/reward_model"],
                   m["tokens_per_second"], r.skipped ? " (skipped: non-finite gradients)" : "", evs);
    }
    if ((p.train.save_every > 0 && (step + 1) % p.train.save_every == 0) || last) {
      TrainState st;
      st.stage = task.stage;
      st.stage_index = task.stage_index;
      st.step = step + 1;
      RETURN_IF_ERROR(Checkpoint(p, learner, st));
    }
  }
  return absl::OkStatus();
}

absl::Status SaveStageModel(Pipeline& p, model::TransformerImpl& net, const std::string& dir) {
  if (p.rank0()) {
    model::SaveOptions so;
    so.copy_tokenizer_from = p.tokenizer_dir;
    so.overwrite = true;
    RETURN_IF_ERROR(model::SaveModel(net, dir, so));
    spdlog::info("saved {}", dir);
  }
  return p.group->Barrier();
}

// Loads a dataset of one of `kinds`.
absl::StatusOr<data::Dataset> LoadData(const data::DataConfig& dc, const std::string& stage,
                                       std::initializer_list<data::Kind> kinds) {
  if (dc.path.empty()) return absl::InvalidArgumentError(absl::StrCat("set ", stage, ".data.path"));
  data::LoadStats stats;
  ASSIGN_OR_RETURN(auto ds, data::Dataset::Load(dc, &stats));
  bool ok = false;
  for (auto k : kinds) ok = ok || ds.kind() == k;
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(stage, ": ", dc.path, " holds ", data::KindName(ds.kind()),
                                                   " data, which this stage does not train on"));
  }
  spdlog::info("{}: {} examples ({} train, {} held out, {} skipped)", stage, stats.loaded, stats.train, stats.heldout,
               stats.skipped);
  return ds;
}

std::vector<TokenSeq> Tokenize(const data::Dataset& ds, const std::vector<size_t>& idx, const TextTools& t,
                               int64_t max_length, data::ojson data::Example::*field, absl::Status* status) {
  std::vector<TokenSeq> out;
  for (size_t i : idx) {
    const auto& ex = ds.examples()[i];
    auto sft = data::BuildSft(ex.prompt, ex.*field, t.tokenizer, t.chat ? &t.chat->chat_template : nullptr, t.vars, t.eos);
    if (!sft.ok()) {
      *status = absl::InvalidArgumentError(absl::StrCat("line ", ex.line, ": ", sft.status().message()));
      return {};
    }
    TokenSeq s{std::move(sft->ids), std::move(sft->labels)};
    if (static_cast<int64_t>(s.ids.size()) > max_length) s.ids.resize(static_cast<size_t>(max_length)), s.target.resize(static_cast<size_t>(max_length));
    out.push_back(std::move(s));
  }
  return out;
}

// ---- sft ----------------------------------------------------------------------------------------------------
absl::Status RunSft(Pipeline& p, int64_t index) {
  const auto cfg = OfflineSection("sft").Read(*p.config);
  const auto dc = DataSection("sft").Read(*p.config);
  const auto oc = OptimSection("sft.optim").Read(*p.config);
  const std::string start = cfg.model.empty() ? p.policy : cfg.model;
  ASSIGN_OR_RETURN(auto policy, LoadForTraining(start, std::nullopt, p.seed));
  ASSIGN_OR_RETURN(auto tools, LoadTextTools(p.tokenizer_dir, policy->config()));
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, "sft", {data::Kind::kPromptCompletion, data::Kind::kMessages}));
  absl::Status st;
  auto train_idx = ds.Indices(data::Split::kTrain), held_idx = ds.Indices(data::Split::kHeldout);
  auto all = Tokenize(ds, [&] { std::vector<size_t> v(ds.examples().size()); std::iota(v.begin(), v.end(), 0); return v; }(),
                      tools, cfg.max_length, &data::Example::completion, &st);
  RETURN_IF_ERROR(st);
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", policy, oc, 1);
  SftObjective objective(policy);
  OfflineTask task;
  task.stage = "sft";
  task.stage_index = index;
  task.cfg = cfg;
  task.n_train = static_cast<int64_t>(train_idx.size());
  task.objective = &objective;
  task.order = [&](int64_t epoch) { return ds.Shuffled(data::Split::kTrain, p.seed, static_cast<uint64_t>(epoch)); };
  auto build = [&](const std::vector<size_t>& ex) -> std::vector<MicroBatch> {
    std::vector<const TokenSeq*> seqs;
    for (size_t i : ex) seqs.push_back(&all[i]);
    if (cfg.packing) return PackRows(seqs, cfg.max_length, cfg.micro_batch_size, tools.pad);
    std::vector<MicroBatch> out;
    for (size_t i = 0; i < seqs.size(); i += static_cast<size_t>(cfg.micro_batch_size)) {
      std::vector<const TokenSeq*> part(seqs.begin() + static_cast<std::ptrdiff_t>(i),
                                        seqs.begin() + static_cast<std::ptrdiff_t>(std::min(seqs.size(), i + static_cast<size_t>(cfg.micro_batch_size))));
      out.push_back(PadRows(part, tools.pad));
    }
    return out;
  };
  task.micro = [&](const std::vector<size_t>& ex) -> absl::StatusOr<std::vector<MicroBatch>> { return build(ex); };
  task.evaluate = [&]() -> absl::StatusOr<std::map<std::string, double>> {
    auto [lo, hi] = ShardRange(held_idx.size(), p.group->rank(), p.group->size());
    double nll = 0, tokens = 0;
    RETURN_IF_ERROR(GuardExceptions("sft eval", [&]() -> absl::Status {
      torch::NoGradGuard ng;
      std::vector<size_t> mine(held_idx.begin() + static_cast<std::ptrdiff_t>(lo), held_idx.begin() + static_cast<std::ptrdiff_t>(hi));
      for (const auto& mb : build(mine)) {
        auto m = mb.target_mask.slice(1, 1);
        auto lp = RowTokenStats(*policy, mb, 1.0, false).logprobs;
        nll -= (lp * m).sum().item<double>();
        tokens += m.sum().item<double>();
      }
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(auto s, p.group->SumDoubles({nll, tokens}));
    if (s[1] == 0) return std::map<std::string, double>{};
    return std::map<std::string, double>{{"loss", s[0] / s[1]}, {"perplexity", std::exp(s[0] / s[1])}};
  };
  RETURN_IF_ERROR(RunOffline(p, learner, task));
  const std::string out = (fs::path(StageDir(p, index, "sft")) / "model").string();
  RETURN_IF_ERROR(SaveStageModel(p, *policy, out));
  p.policy = out;
  return absl::OkStatus();
}

// Pairs (prompt + chosen, prompt + rejected) as rows: chosen rows first, then rejected rows.
MicroBatch PairRows(const std::vector<const TokenSeq*>& chosen, const std::vector<const TokenSeq*>& rejected, int32_t pad) {
  std::vector<const TokenSeq*> rows = chosen;
  rows.insert(rows.end(), rejected.begin(), rejected.end());
  return PadRows(rows, pad);
}

// ---- reference log-probs, computed once per dataset -------------------------------------------------------
// Summed completion log-probs of `seqs` under `net`, without gradient, `micro` rows per forward.
std::vector<float> SequenceLogProbs(model::TransformerImpl& net, const std::vector<const TokenSeq*>& seqs, int64_t micro,
                                    int32_t pad) {
  torch::NoGradGuard ng;
  std::vector<float> out;
  for (size_t i = 0; i < seqs.size(); i += static_cast<size_t>(micro)) {
    std::vector<const TokenSeq*> part(seqs.begin() + static_cast<std::ptrdiff_t>(i),
                                      seqs.begin() + static_cast<std::ptrdiff_t>(std::min(seqs.size(), i + static_cast<size_t>(micro))));
    auto mb = PadRows(part, pad);
    auto seq = (RowTokenStats(net, mb, 1.0, false).logprobs * mb.target_mask.slice(1, 1)).sum(1).contiguous();
    for (int64_t k = 0; k < seq.size(0); ++k) out.push_back(seq[k].item<float>());
  }
  return out;
}

// Identity of what reference log-probs depend on: the reference's weight files (path, size, mtime) and the
// token ids (and completion masks) of the rows.
std::string ReferenceFingerprint(const std::string& ref_dir, const std::vector<const TokenSeq*>& seqs) {
  std::string key = fs::weakly_canonical(ref_dir).string();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ref_dir, ec)) {
    if (e.path().extension() != ".safetensors") continue;
    key += absl::StrCat("|", e.path().filename().string(), ":", fs::file_size(e.path(), ec), ":",
                        static_cast<int64_t>(fs::last_write_time(e.path(), ec).time_since_epoch().count()));
  }
  std::string ids;
  for (const TokenSeq* s : seqs) {
    ids.append(reinterpret_cast<const char*>(s->ids.data()), s->ids.size() * sizeof(int32_t));
    ids.append(reinterpret_cast<const char*>(s->target.data()), s->target.size());
    ids.push_back('\n');
  }
  return key + "|rows:" + std::to_string(seqs.size()) + "|ids:" + data::HashText(ids);
}

// Reference log-probs of `seqs`: from <stage dir>/reference_logprobs.safetensors when it was made for the
// same reference and rows, else computed with `reference` (loaded from ref_dir when empty; rank 0 writes
// the cache when `cache`).
absl::StatusOr<std::vector<float>> ReferenceLogProbs(Pipeline& p, int64_t index, const std::string& stage,
                                                     const std::string& ref_dir, model::Transformer reference, bool cache,
                                                     const std::vector<const TokenSeq*>& seqs, int64_t micro, int32_t pad) {
  const std::string path = (fs::path(StageDir(p, index, stage)) / "reference_logprobs.safetensors").string();
  const std::string key = ReferenceFingerprint(ref_dir, seqs);
  auto load = [&]() -> std::optional<std::vector<float>> {
    if (!cache || !fs::exists(path)) return std::nullopt;
    auto f = model::SafetensorsFile::Open(path);
    if (!f.ok()) return std::nullopt;
    auto it = (*f)->metadata().find("fingerprint");
    const auto* t = (*f)->Find("logprobs");
    if (it == (*f)->metadata().end() || it->second != key || t == nullptr || t->dtype != model::StDType::kF32 ||
        t->numel() != static_cast<int64_t>(seqs.size())) {
      return std::nullopt;
    }
    std::vector<float> v(seqs.size());
    std::memcpy(v.data(), (*f)->Data(*t), v.size() * sizeof(float));
    return v;
  };
  auto compute = [&]() -> absl::StatusOr<std::vector<float>> {
    if (reference.is_empty()) {
      ASSIGN_OR_RETURN(reference, LoadFrozen(ref_dir));
    }
    std::vector<float> v;
    RETURN_IF_ERROR(GuardExceptions("reference log-probs", [&]() -> absl::Status {
      v = SequenceLogProbs(*reference, seqs, micro, pad);
      return absl::OkStatus();
    }));
    return v;
  };
  std::vector<float> out;
  if (p.rank0()) {
    if (auto v = load()) {
      spdlog::info("{}: reference log-probs of {} rows from {}", stage, seqs.size(), path);
      out = std::move(*v);
    } else {
      ASSIGN_OR_RETURN(out, compute());
      if (cache) {
        fs::create_directories(fs::path(path).parent_path());
        model::TensorToWrite t{"logprobs", model::StDType::kF32, {static_cast<int64_t>(out.size())}, out.data()};
        RETURN_IF_ERROR(model::WriteSafetensors(path, {t}, {{"fingerprint", key}}));
        spdlog::info("{}: reference log-probs of {} rows computed and cached in {}", stage, seqs.size(), path);
      }
    }
  }
  RETURN_IF_ERROR(p.group->Barrier());
  if (!p.rank0()) {
    if (auto v = load()) return *v;
    return compute();
  }
  return out;
}

// ---- reward model and the preference stages ---------------------------------------------------------------
// reward_model (Bradley-Terry), dpo, orpo, simpo, cpo, rrhf on preference pairs; kto on unpaired completions
// (kto data, or preference pairs split into a desirable and an undesirable completion).
absl::Status RunPreference(Pipeline& p, int64_t index, const std::string& stage) {
  const bool rm = stage == "reward_model", kto = stage == "kto";
  const bool with_ref = stage == "dpo" || kto;
  const auto cfg = OfflineSection(stage).Read(*p.config);
  const auto dc = DataSection(stage).Read(*p.config);
  const auto oc = OptimSection(stage + ".optim").Read(*p.config);
  const std::string start = cfg.model.empty() ? p.policy : cfg.model;
  ASSIGN_OR_RETURN(auto net, LoadForTraining(start, rm ? std::optional<model::Head>(model::Head::kSequenceClassification)
                                                       : std::nullopt,
                                             p.seed));
  if (rm && cfg.freeze_backbone) {
    for (auto& prm : net->named_parameters(true)) {
      if (prm.key().rfind("score.", 0) != 0) prm.value().set_requires_grad(false);
    }
  }
  ASSIGN_OR_RETURN(auto tools, LoadTextTools(p.tokenizer_dir, net->config()));
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, stage, kto ? std::initializer_list<data::Kind>{data::Kind::kKto, data::Kind::kPreference}
                                                    : std::initializer_list<data::Kind>{data::Kind::kPreference}));
  std::vector<size_t> every(ds.examples().size());
  std::iota(every.begin(), every.end(), 0);
  absl::Status st;
  // Rows: pairs (chosen i, rejected i) for the paired losses; for kto the completions of each example with
  // their labels, rows_of[i] naming example i's rows.
  std::vector<TokenSeq> chosen, rejected, rows;
  std::vector<float> desirable;
  std::vector<std::vector<size_t>> rows_of(every.size());
  if (!kto || ds.kind() == data::Kind::kPreference) {
    chosen = Tokenize(ds, every, tools, cfg.max_length, &data::Example::chosen, &st);
    RETURN_IF_ERROR(st);
    rejected = Tokenize(ds, every, tools, cfg.max_length, &data::Example::rejected, &st);
    RETURN_IF_ERROR(st);
  }
  if (kto) {
    if (ds.kind() == data::Kind::kPreference) {
      for (size_t i = 0; i < every.size(); ++i) {
        rows_of[i] = {rows.size(), rows.size() + 1};
        rows.push_back(std::move(chosen[i])), desirable.push_back(1.f);
        rows.push_back(std::move(rejected[i])), desirable.push_back(0.f);
      }
      chosen.clear(), rejected.clear();
    } else {
      rows = Tokenize(ds, every, tools, cfg.max_length, &data::Example::completion, &st);
      RETURN_IF_ERROR(st);
      for (size_t i = 0; i < every.size(); ++i) {
        rows_of[i] = {i};
        desirable.push_back(ds.examples()[i].label.value_or(false) ? 1.f : 0.f);
      }
    }
  }
  std::vector<float> margins(every.size(), 0.f);
  if (rm && !cfg.margin_field.empty()) {
    for (size_t i = 0; i < every.size(); ++i) {
      const auto& ex = ds.examples()[i];
      if (!ex.extra.contains(cfg.margin_field) || !ex.extra[cfg.margin_field].is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(dc.path, ":", ex.line, ": no numeric '", cfg.margin_field, "' field"));
      }
      margins[i] = ex.extra[cfg.margin_field].get<float>();
    }
  }
  // Reference sequence log-probs of every row, computed once (and cached) with the frozen reference.
  const std::string ref_dir = cfg.reference.empty() ? start : cfg.reference;
  // KTO's reference point needs the reference on the mismatched pairs of every batch: kept loaded.
  model::Transformer reference{nullptr};
  if (kto) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(ref_dir));
  }
  std::vector<float> ref_c, ref_r, ref_rows;
  if (with_ref) {
    std::vector<const TokenSeq*> seqs;
    for (const auto* v : {&chosen, &rejected, &rows}) {
      for (const auto& x : *v) seqs.push_back(&x);
    }
    ASSIGN_OR_RETURN(auto all, ReferenceLogProbs(p, index, stage, ref_dir, reference, cfg.reference_cache, seqs,
                                                 cfg.micro_batch_size * 2, tools.pad));
    auto at = all.begin();
    ref_c.assign(at, at + static_cast<std::ptrdiff_t>(chosen.size())), at += static_cast<std::ptrdiff_t>(chosen.size());
    ref_r.assign(at, at + static_cast<std::ptrdiff_t>(rejected.size())), at += static_cast<std::ptrdiff_t>(rejected.size());
    ref_rows.assign(at, all.end());
  }

  auto train_idx = ds.Indices(data::Split::kTrain), held_idx = ds.Indices(data::Split::kHeldout);
  Learner learner(p.group, p.bucket_bytes);
  const std::string model_name = rm ? "reward_model" : "policy";
  learner.AddModel(model_name, net, oc, 1);
  std::unique_ptr<Objective> objective;
  if (rm) {
    objective = std::make_unique<RewardObjective>(net, cfg.centering);
  } else if (kto) {
    algo::KtoOptions o;
    o.beta = cfg.beta;
    o.desirable_weight = cfg.desirable_weight;
    o.undesirable_weight = cfg.undesirable_weight;
    objective = std::make_unique<KtoObjective>(net, o);
  } else {
    PairLossConfig c;
    c.loss = stage == "dpo" ? PairLoss::kDpo : stage == "orpo" ? PairLoss::kOrpo : stage == "simpo" ? PairLoss::kSimpo
           : stage == "cpo" ? PairLoss::kCpo : PairLoss::kRrhf;
    ASSIGN_OR_RETURN(c.dpo.type, algo::ParseDpoLoss(cfg.loss_type));
    c.dpo.beta = cfg.beta;
    c.dpo.label_smoothing = cfg.label_smoothing;
    c.dpo.ipo_length_normalize = cfg.ipo_length_normalize;
    c.beta = cfg.beta;
    c.gamma = cfg.gamma;
    c.alpha = cfg.alpha;
    c.label_smoothing = cfg.label_smoothing;
    c.sft_weight = cfg.sft_weight;
    objective = std::make_unique<PairObjective>(net, c);
  }
  // KTO: z0 = max(0, mean over the batch (all ranks) of policy - reference log-probs of mismatched pairs),
  // each row's prompt with the completion of the same row of the next example, under the current policy
  // and without gradient. (Pairs give two rows per example: the next row has the same prompt.)
  const size_t rows_per_example = ds.kind() == data::Kind::kPreference ? 2 : 1;
  auto kto_z0 = [&](const std::vector<size_t>& row_idx) -> absl::StatusOr<double> {
    std::vector<TokenSeq> mm;
    const auto partner = MismatchPartners(row_idx.size(), rows_per_example);
    for (size_t k = 0; k < row_idx.size(); ++k) mm.push_back(PromptWithCompletion(rows[row_idx[k]], rows[row_idx[partner[k]]]));
    std::vector<const TokenSeq*> ptr;
    for (const auto& x : mm) ptr.push_back(&x);
    double sum = 0;
    RETURN_IF_ERROR(GuardExceptions("kto reference point", [&]() -> absl::Status {
      auto lp = SequenceLogProbs(*net, ptr, cfg.micro_batch_size, tools.pad);
      auto ref = SequenceLogProbs(*reference, ptr, cfg.micro_batch_size, tools.pad);
      for (size_t k = 0; k < lp.size(); ++k) sum += static_cast<double>(lp[k]) - ref[k];
      return absl::OkStatus();
    }));
    ASSIGN_OR_RETURN(auto tot, p.group->SumDoubles({sum, static_cast<double>(ptr.size())}));
    return tot[1] > 0 ? std::max(0.0, tot[0] / tot[1]) : 0.0;
  };
  auto build = [&](const std::vector<size_t>& ex) -> absl::StatusOr<std::vector<MicroBatch>> {
    std::vector<MicroBatch> out;
    double z0 = 0;
    if (kto) {
      std::vector<size_t> all_rows;
      for (size_t e : ex) all_rows.insert(all_rows.end(), rows_of[e].begin(), rows_of[e].end());
      ASSIGN_OR_RETURN(z0, kto_z0(all_rows));
    }
    for (size_t i = 0; i < ex.size(); i += static_cast<size_t>(cfg.micro_batch_size)) {
      const size_t end = std::min(ex.size(), i + static_cast<size_t>(cfg.micro_batch_size));
      if (kto) {
        std::vector<const TokenSeq*> r;
        std::vector<float> ref, des;
        for (size_t j = i; j < end; ++j) {
          for (size_t k : rows_of[ex[j]]) r.push_back(&rows[k]), ref.push_back(ref_rows[k]), des.push_back(desirable[k]);
        }
        auto mb = PadRows(r, tools.pad);
        mb.fields["ref"] = torch::tensor(ref), mb.fields["desirable"] = torch::tensor(des);
        mb.fields["z0"] = torch::tensor({static_cast<float>(z0)});
        out.push_back(std::move(mb));
        continue;
      }
      std::vector<const TokenSeq*> c, r;
      std::vector<float> mg, rc, rr;
      for (size_t j = i; j < end; ++j) {
        c.push_back(&chosen[ex[j]]), r.push_back(&rejected[ex[j]]);
        mg.push_back(margins[ex[j]]);
        if (with_ref) rc.push_back(ref_c[ex[j]]), rr.push_back(ref_r[ex[j]]);
      }
      auto mb = PairRows(c, r, tools.pad);
      if (rm && !cfg.margin_field.empty()) mb.fields["margin"] = torch::tensor(mg);
      if (with_ref) mb.fields["ref_chosen"] = torch::tensor(rc), mb.fields["ref_rejected"] = torch::tensor(rr);
      out.push_back(std::move(mb));
    }
    return out;
  };
  OfflineTask task;
  task.stage = stage;
  task.stage_index = index;
  task.cfg = cfg;
  task.n_train = static_cast<int64_t>(train_idx.size());
  task.objective = objective.get();
  task.order = [&](int64_t epoch) { return ds.Shuffled(data::Split::kTrain, p.seed, static_cast<uint64_t>(epoch)); };
  task.micro = build;
  task.evaluate = [&]() -> absl::StatusOr<std::map<std::string, double>> {
    auto [lo, hi] = ShardRange(held_idx.size(), p.group->rank(), p.group->size());
    std::vector<size_t> mine(held_idx.begin() + static_cast<std::ptrdiff_t>(lo), held_idx.begin() + static_cast<std::ptrdiff_t>(hi));
    StepMetrics m;
    // Every rank reports the same names, also one without held-out examples.
    m.AddSum("loss", 0);
    for (const char* k : {"reward_chosen", "reward_rejected"}) m.AddMean(k, 0, 0);
    for (const char* k : {"accuracy", "margin"}) {
      if (!kto) m.AddMean(k, 0, 0);
    }
    if (kto) m.AddMean("kl", 0, 0);
    double units = 0;  // the objective's normaliser over the held-out split: pairs, or kto rows
    for (size_t e : held_idx) units += kto ? static_cast<double>(rows_of[e].size()) : 1.0;
    const std::vector<double> totals = {units};
    ASSIGN_OR_RETURN(auto batches, build(mine));
    RETURN_IF_ERROR(GuardExceptions(stage + " eval", [&]() -> absl::Status {
      torch::NoGradGuard ng;
      for (const auto& mb : batches) objective->Loss(mb, totals, m);
      return absl::OkStatus();
    }));
    return m.Reduce(*p.group);
  };
  RETURN_IF_ERROR(RunOffline(p, learner, task));
  const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
  RETURN_IF_ERROR(SaveStageModel(p, *net, out));
  (rm ? p.reward_model : p.policy) = out;
  return absl::OkStatus();
}

// ---- ppo / grpo -----------------------------------------------------------------------------------------------
// Offline (rl.samples): policy steps over a file of scored samples. Online (rl.data.path): the coordinator
// (services/coordinator) leases the prompts to rollout workers, has the samples scored, and hands the
// learner one batch per step; the new weights go to the workers before the next step (strictly on-policy).

struct RlSetup {
  RlStageConfig sc;
  std::string start;  // starting policy folder
  model::Transformer policy{nullptr}, critic{nullptr};
  std::optional<TextTools> tools;
};

// The reward.* keys for an embedded scorer of the pipeline: the reward model of an earlier reward_model
// stage, and step ends placed on the policy's tokens, unless the config names others.
scoring::RewardConfig PipelineReward(const Pipeline& p) {
  auto r = scoring::RewardConfig::Spec().Read(*p.config);
  if (r.reward_model_weight != 0 && r.reward_model.empty()) r.reward_model = p.reward_model;
  if (r.process_weight != 0 && r.tokenizer.empty()) r.tokenizer = p.tokenizer_dir;
  return r;
}

// The training prompts of an online stage (rl.data) and about how many policy steps they make (fewer when
// groups are filtered), bounded by rl.steps.
struct OnlinePrompts {
  data::Dataset data;
  int64_t total_steps = 0;
};
absl::StatusOr<OnlinePrompts> LoadOnlinePrompts(const RlStageConfig& sc, const data::DataConfig& dc) {
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, "rl", {data::Kind::kPromptAnswer, data::Kind::kPromptCompletion,
                                                data::Kind::kMessages, data::Kind::kPreference, data::Kind::kKto}));
  const int64_t n = static_cast<int64_t>(ds.Indices(data::Split::kTrain).size());
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(dc.path, " has no training prompts"));
  int64_t total = (n * sc.epochs + sc.rollout_batch_size - 1) / sc.rollout_batch_size;
  if (sc.steps > 0) total = std::min(total, sc.steps);
  return OnlinePrompts{std::move(ds), total};
}

// Evaluation on the held-out prompts, written to <stage>/<name>.jsonl; rank 0 only.
absl::StatusOr<json> RunEval(coordinator::RolloutPool& pool, coordinator::ScorerClient& scorer,
                             const std::vector<Prompt>& prompts, const coordinator::EvalConfig& ec, int64_t version,
                             uint64_t seed, const std::string& path) {
  ASSIGN_OR_RETURN(auto r, coordinator::Evaluate(pool, scorer, prompts, ec, version, seed));
  std::ofstream out(path, std::ios::trunc);
  for (const auto& s : r.generations) out << SampleToJson(s) << "\n";
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  spdlog::info("eval at policy version {}: accuracy {}/{} = {:.1f}% (95% CI {:.1f}-{:.1f}), mean reward {:.4f}{}", version,
               r.correct, r.prompts, 100 * r.accuracy, 100 * r.accuracy_low, 100 * r.accuracy_high, r.mean_reward,
               r.k > 0 ? absl::StrFormat(", pass@%d %.1f%%", r.k, 100 * r.pass_at_k) : std::string());
  return r.ToJson();
}

// What an online stage does with each batch: the learner step on this rank's groups, and the stage's own
// state that a checkpoint keeps (the KL coefficient of PPO / GRPO).
struct OnlineTrainer {
  int64_t group_size = 1;
  bool filter_equal = false;  // the stage needs groups with different rewards (online DPO)
  std::function<absl::StatusOr<std::map<std::string, double>>(const std::vector<Sample>&, uint64_t)> step;
  std::function<void(json&)> save = [](json&) {};
  std::function<void(const json&)> restore = [](const json&) {};
  std::function<absl::StatusOr<std::string>()> finish;  // saves the stage's models; the policy folder
};

// `rlhf serve learner`: the stage's learner answers a coordinator process (trainer/online_learner.h).
absl::Status ServeOnline(Pipeline& p, int64_t index, const std::string& stage, RlSetup& rs, Learner& learner,
                         OnlineTrainer& trainer) {
  LearnerHooks h;
  h.stage = stage;
  h.group_size = trainer.group_size;
  if (p.resume) {
    h.version = p.resume->step;
    RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, learner, *p.resume));
    trainer.restore(p.resume->extra);
    h.extra_json = p.resume->extra.dump();
    if (p.rank0()) spdlog::info("{}: resumed at policy step {} from {}", stage, h.version, p.resume_dir);
    p.resume.reset();
  }
  int64_t logged = h.version;
  h.step = [&](const std::vector<Sample>& mine, uint64_t seed) -> absl::StatusOr<std::map<std::string, double>> {
    ASSIGN_OR_RETURN(auto m, trainer.step(mine, seed));
    p.log.Write(index, stage, ++logged, m);
    return m;
  };
  h.checkpoint = [&](int64_t step, const std::string& extra_json) -> absl::Status {
    TrainState st;
    st.stage = stage;
    st.stage_index = index;
    st.step = step;
    st.extra = extra_json.empty() ? json::object() : json::parse(extra_json, nullptr, false);
    if (!st.extra.is_object()) return absl::InvalidArgumentError("learner checkpoint: the coordinator state is not a JSON object");
    trainer.save(st.extra);
    return Checkpoint(p, learner, st);
  };
  h.finish = [&]() -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(p.policy, trainer.finish());
    return p.policy;
  };
  h.weights = [&](int64_t version, int64_t chunk_bytes, const rollout::ChunkWriter& w) {
    return rollout::ModelChunks(*rs.policy, version, chunk_bytes, w);
  };
  const auto rpc = RpcConfig::Spec().Read(*p.config);
  return ServeLearner(*p.group, rpc, p.serve_learner_address, std::move(h));
}

// The online loop. `learner` is null when the learner is another process (roles.learner_address): then
// each batch goes to it over rlhf.Learner, its weights go on to the rollout workers, and its checkpoints
// hold this coordinator's state.
absl::Status RunOnline(Pipeline& p, int64_t index, const std::string& stage, RlSetup& rs, Learner* learner,
                       OnlineTrainer& trainer, const data::Dataset& ds, int64_t total) {
  if (!p.serve_learner_address.empty()) return ServeOnline(p, index, stage, rs, *learner, trainer);
  const auto& sc = rs.sc;
  const int64_t g = trainer.group_size;
  const std::string dir = StageDir(p, index, stage);
  const auto ec = coordinator::EvalConfig::Spec().Read(*p.config);
  const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
  const auto reward_cfg = PipelineReward(p);
  const double t_start = Seconds();
  int64_t step = 0;
  json extra = json::object();
  int64_t learner_ranks = p.group->size();
  std::unique_ptr<RemoteLearner> remote;
  if (learner == nullptr) {
    const auto rpc = RpcConfig::Spec().Read(*p.config);
    remote = std::make_unique<RemoteLearner>(MakeChannel(rpc, roles_cfg.learner_address), rpc, roles_cfg.retry());
    ASSIGN_OR_RETURN(auto st, remote->State());
    if (st.stage() != stage || st.group_size() != g) {
      return absl::FailedPreconditionError(absl::StrCat("the learner at ", roles_cfg.learner_address, " serves stage ",
                                                        st.stage(), " with groups of ", st.group_size(), "; this is ",
                                                        stage, " with groups of ", g));
    }
    if (st.version() != st.checkpoint_step()) {
      // This coordinator's state of the steps after the checkpoint is gone: continuing would train them twice.
      return absl::FailedPreconditionError(absl::StrCat(
          "the learner at ", roles_cfg.learner_address, " is at policy version ", st.version(),
          " but its newest checkpoint is of step ", st.checkpoint_step(),
          ": restart it with --resume, so that learner and coordinator continue from that checkpoint"));
    }
    step = st.version();
    learner_ranks = std::max(1, st.ranks());
    RETURN_IF_ERROR(p.log.DropAfter(index, step));
    if (!st.extra_json().empty()) extra = json::parse(st.extra_json());
    spdlog::info("{}: learner at {} ({} rank{}), policy version {}", stage, roles_cfg.learner_address, learner_ranks,
                 learner_ranks == 1 ? "" : "s", step);
  } else if (p.resume) {
    step = p.resume->step;
    extra = p.resume->extra;
    RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, *learner, *p.resume));
    trainer.restore(extra);
    if (p.rank0()) spdlog::info("{}: resumed at policy step {} from {}", stage, step, p.resume_dir);
    p.resume.reset();
  }
  // Rank 0 runs the coordinator and talks to the roles; the other ranks get each batch by broadcast.
  std::unique_ptr<coordinator::Roles> roles;
  std::unique_ptr<coordinator::RolloutPool> pool;
  std::unique_ptr<coordinator::ScorerClient> scorer;
  std::unique_ptr<coordinator::Coordinator> coord;
  std::vector<Prompt> eval_prompts;
  if (p.rank0()) {
    fs::create_directories(dir);
    const auto* chat = rs.tools->chat ? &rs.tools->chat->chat_template : nullptr;
    ASSIGN_OR_RETURN(auto train_prompts, coordinator::PromptsOf(ds, ds.Indices(data::Split::kTrain), chat,
                                                                rs.tools->vars, reward_cfg.answer_field));
    ASSIGN_OR_RETURN(eval_prompts, coordinator::PromptsOf(ds, coordinator::SplitIndices(ds, ec.split), chat,
                                                          rs.tools->vars, reward_cfg.answer_field));
    ASSIGN_OR_RETURN(roles, coordinator::Roles::Start(roles_cfg, *p.config, rs.start, 0, &reward_cfg));
    const RpcConfig rpc = roles->rpc();
    // A remote learner's weights are fetched once per version, then go to every worker that needs them.
    auto fetched = std::make_shared<std::pair<int64_t, std::vector<WeightChunk>>>(-1, std::vector<WeightChunk>());
    auto publish = [&, rpc, fetched](Rollout::Stub* stub, int64_t version) -> absl::Status {
      const double t0 = Seconds();
      absl::StatusOr<UpdateWeightsReply> r;
      if (remote) {
        if (fetched->first != version) {
          ASSIGN_OR_RETURN(fetched->second, remote->Weights(roles_cfg.weight_chunk_bytes));
          fetched->first = version;
        }
        r = rollout::PushChunks(stub, version, [&](const rollout::ChunkWriter& w) {
          for (auto c : fetched->second) {
            c.set_version(version);
            if (!w(c)) return false;
          }
          return true;
        }, rpc);
      } else {
        r = rollout::PushWeights(stub, *rs.policy, version, roles_cfg.weight_chunk_bytes, rpc);
      }
      if (!r.ok()) return r.status();
      Metrics::Process()
          .Histogram("rlhf_weight_sync_duration_seconds", "time of one weight update to one rollout worker",
                     {0.01, 0.1, 1, 10, 100})
          .Observe(Seconds() - t0);
      return absl::OkStatus();
    };
    pool = std::make_unique<coordinator::RolloutPool>(roles->rollout_channels(), rpc, roles_cfg.retry(), publish);
    scorer = std::make_unique<coordinator::ScorerClient>(roles->scorer_channel(), rpc, roles_cfg.retry());
    coordinator::CoordinatorOptions co;
    co.rollout_batch_size = sc.rollout_batch_size;
    co.group_size = static_cast<int32_t>(g);
    co.params.set_temperature(static_cast<float>(sc.temperature));
    co.params.set_top_p(static_cast<float>(sc.top_p));
    co.params.set_top_k(static_cast<int32_t>(sc.top_k));
    co.params.set_min_p(static_cast<float>(sc.min_p));
    co.params.set_max_new_tokens(static_cast<int32_t>(sc.max_new_tokens));
    for (const auto& st : sc.stop) co.params.add_stop(st);
    co.params.set_seed(p.seed);
    co.epochs = sc.epochs;
    co.dynamic_sampling = sc.dynamic_sampling || trainer.filter_equal;
    co.want_ref_logprobs = sc.scorer_reference;
    coord = std::make_unique<coordinator::Coordinator>(co, std::move(train_prompts), p.seed, pool.get(), scorer.get());
    if (extra.contains("ledger")) RETURN_IF_ERROR(coord->Restore(extra["ledger"]));
    // Every worker holds the policy of this step (a fresh or restarted worker may hold anything).
    RETURN_IF_ERROR(pool->Sync(step, /*force=*/true));
    spdlog::info("{}: online, {} training prompts x {} epochs, {} held-out prompts for eval; rollout workers: {} ({}), "
                 "scorer: {}", stage, coord->ledger().num_prompts(), sc.epochs, eval_prompts.size(), pool->size(),
                 roles->embedded_rollout() ? "embedded" : "remote", roles->embedded_scorer() ? "embedded" : roles_cfg.scorer_address);
    if (!extra.contains("eval_before")) {
      ASSIGN_OR_RETURN(extra["eval_before"], RunEval(*pool, *scorer, eval_prompts, ec, step, p.seed,
                                                     (fs::path(dir) / "eval_before.jsonl").string()));
    }
  }
  auto& reg = Metrics::Process();
  auto& version_gauge = reg.Gauge("rlhf_policy_version", "weights version held by this process", {{"role", "learner"}});
  auto& tokens_total = reg.Counter("rlhf_rollout_tokens_total", "completion tokens generated by the rollout workers");
  auto& reassigned_total = reg.Counter("rlhf_samples_reassigned_total", "prompt leases handed out again after a failure");
  auto& reward_gauge = reg.Gauge("rlhf_reward_mean", "mean reward of the latest rollout batch");
  auto& kl_gauge = reg.Gauge("rlhf_kl_mean", "mean KL to the reference of the latest batch");
  // Role throughput, accumulated over the run (and across resumes).
  auto acc = [&](const char* k) -> double& {
    if (!extra.contains("acc")) extra["acc"] = json::object();
    if (!extra["acc"].contains(k)) extra["acc"][k] = 0.0;
    return extra["acc"][k].get_ref<double&>();
  };
  const double wall_before = acc("wall_seconds");  // of the run before this process resumed it
  int64_t released_seen = p.rank0() ? coord->ledger().Totals().released : 0;
  for (; sc.steps == 0 || step < sc.steps; ++step) {
    coordinator::StepBatch batch;
    std::string bytes;
    if (p.rank0()) {
      while (true) {
        ASSIGN_OR_RETURN(batch, coord->NextBatch(step));
        if (batch.empty() || static_cast<int64_t>(batch.prompts.size()) >= learner_ranks) break;
        // An epoch's remainder too small to give every rank a group: recorded as filtered, not trained.
        RETURN_IF_ERROR(coord->Discard(batch, "epoch remainder smaller than the number of learner ranks"));
      }
      ScoreRequest box;  // the samples travel to the other ranks as one message
      for (const auto& smp : batch.samples) *box.add_samples() = smp;
      bytes = box.SerializeAsString();
    }
    ASSIGN_OR_RETURN(bytes, comm::BroadcastBytes(*p.group, std::move(bytes)));
    ScoreRequest box;
    if (!box.ParseFromString(bytes)) return absl::InternalError("online rl: a batch did not arrive whole");
    if (box.samples_size() == 0) break;  // every epoch done
    const int64_t groups = box.samples_size() / g;
    auto [lo, hi] = ShardRange(static_cast<size_t>(groups), p.group->rank(), p.group->size());
    std::vector<Sample> mine(box.samples().begin() + static_cast<std::ptrdiff_t>(lo * g),
                             box.samples().begin() + static_cast<std::ptrdiff_t>(hi * g));
    const double t_learn = Seconds();
    std::map<std::string, double> m;
    if (remote) {
      ASSIGN_OR_RETURN(auto reply, remote->Train(step, mine, p.seed + static_cast<uint64_t>(step)));
      m.insert(reply.metrics().begin(), reply.metrics().end());
    } else {
      ASSIGN_OR_RETURN(m, trainer.step(mine, p.seed + static_cast<uint64_t>(step)));
    }
    const double learn_seconds = Seconds() - t_learn;
    const int64_t version = step + 1;
    version_gauge.Set(static_cast<double>(version));
    if (p.rank0()) {
      RETURN_IF_ERROR(coord->MarkTrained(batch));
      const double t_sync = Seconds();
      RETURN_IF_ERROR(pool->Sync(version));
      m["weight_sync_seconds"] = Seconds() - t_sync;
      acc("generate_seconds") += batch.generate_seconds;
      acc("generated_tokens") += static_cast<double>(batch.generated_tokens);
      acc("score_seconds") += batch.score_seconds;
      acc("scored_samples") += static_cast<double>(batch.generated_samples);
      acc("learn_seconds") += learn_seconds;
      acc("learned_samples") += static_cast<double>(box.samples_size());
      const auto t = coord->ledger().Totals();
      m["rollout/reward_mean"] = batch.rewarded > 0 ? batch.reward_sum / static_cast<double>(batch.rewarded) : 0.0;
      m["rollout/tokens_per_second"] = static_cast<double>(batch.generated_tokens) / std::max(batch.generate_seconds, 1e-9);
      m["rollout/filtered"] = static_cast<double>(batch.filtered);
      m["rollout/dropped"] = static_cast<double>(batch.dropped);
      m["scorer/samples_per_second"] = static_cast<double>(batch.generated_samples) / std::max(batch.score_seconds, 1e-9);
      m["ledger/trained"] = static_cast<double>(t.trained);
      m["ledger/filtered"] = static_cast<double>(t.filtered);
      m["ledger/dropped"] = static_cast<double>(t.dropped);
      m["ledger/released"] = static_cast<double>(t.released);
      m["epoch"] = static_cast<double>(batch.epoch);
      m["policy_version"] = static_cast<double>(version);
      tokens_total.Increment(static_cast<double>(batch.generated_tokens));
      reassigned_total.Increment(static_cast<double>(t.released - released_seen));
      released_seen = t.released;
      reward_gauge.Set(m["rollout/reward_mean"]);
      if (m.count("kl_ref")) kl_gauge.Set(m.at("kl_ref"));
      const bool last = coord->Done() || (sc.steps > 0 && version >= sc.steps);  // evaluated after the loop
      if (ec.every > 0 && version % ec.every == 0 && !last) {
        ASSIGN_OR_RETURN(auto ev, RunEval(*pool, *scorer, eval_prompts, ec, version, p.seed,
                                          (fs::path(dir) / absl::StrCat("eval_step_", version, ".jsonl")).string()));
        m["eval/accuracy"] = ev["accuracy"].get<double>();
        m["eval/mean_reward"] = ev["mean_reward"].get<double>();
        if (!ev["pass_at_k"].is_null()) m["eval/pass_at_k"] = ev["pass_at_k"].get<double>();
      }
    }
    p.log.Write(index, stage, step + 1, m);
    if (p.rank0() && ((step + 1) % p.train.log_every == 0 || coord->Done())) {
      std::string parts;  // the update's own figures, those this stage reports
      for (const char* k : {"pg_loss", "kl_ref", "clip_fraction", "entropy", "accuracy", "margin", "kept_fraction"}) {
        if (m.count(k)) parts += absl::StrFormat(" %s %.4f", k, m.at(k));
      }
      spdlog::info("{} step {}/~{}: reward {:.4f} loss {:.4f}{} | rollout {:.0f} tok/s, filtered {}, dropped {} | "
                   "trained {}/{} prompts of epoch {}",
                   stage, step + 1, total, m["reward_mean"], m["loss"], parts, m["rollout/tokens_per_second"],
                   batch.filtered, batch.dropped, coord->ledger().Current().trained, coord->ledger().num_prompts(),
                   coord->ledger().epoch());
    }
    // Rank 0 knows when the run is over; every rank must take the last checkpoint (it holds a barrier).
    bool done = sc.steps > 0 && step + 1 >= sc.steps;
    ASSIGN_OR_RETURN(auto over, p.group->SumDoubles({p.rank0() && coord->Done() ? 1.0 : 0.0}));
    done = done || over[0] > 0;
    if ((p.train.save_every > 0 && (step + 1) % p.train.save_every == 0) || done) {
      TrainState st;
      st.stage = stage;
      st.stage_index = index;
      st.step = step + 1;
      if (p.rank0()) {
        extra["ledger"] = coord->State();
        acc("wall_seconds") = wall_before + Seconds() - t_start;
      }
      if (remote) {
        RETURN_IF_ERROR(remote->Checkpoint(st.step, extra.dump()));
        spdlog::info("checkpoint of step {} on the learner", st.step);
        MaybeKillAfterCheckpoint(st.step);
      } else {
        trainer.save(extra);
        st.extra = extra;
        RETURN_IF_ERROR(Checkpoint(p, *learner, st));
      }
    }
  }
  if (remote) {
    ASSIGN_OR_RETURN(auto model, remote->Finish());
    spdlog::info("{}: the learner saved {}", stage, model);
  } else {
    ASSIGN_OR_RETURN(auto model, trainer.finish());
    p.policy = model;
  }
  if (!p.rank0()) return absl::OkStatus();
  // The end: evaluation of the final policy and summary.json.
  ASSIGN_OR_RETURN(auto eval_after, RunEval(*pool, *scorer, eval_prompts, ec, step, p.seed,
                                            (fs::path(dir) / "eval_after.jsonl").string()));
  RETURN_IF_ERROR(coord->ledger().Check());
  const auto t = coord->ledger().Totals();
  const bool finished = coord->Done();
  const double wall = wall_before + Seconds() - t_start;
  auto rate = [&](const char* num, const char* den) { return acc(den) > 0 ? acc(num) / acc(den) : 0.0; };
  json summary = {
      {"stage", stage},
      {"steps", step},
      {"policy_version", step},
      {"epochs", sc.epochs},
      {"prompts_per_epoch", coord->ledger().num_prompts()},
      {"prompts_trained", t.trained},
      {"prompts_filtered", t.filtered},
      {"prompts_dropped", t.dropped},
      {"prompts_released", t.released},
      {"prompts_not_reached", finished ? 0 : t.pending},  // rl.steps stopped the run inside an epoch
      {"duplicates", t.duplicates},
      {"missing", t.leased + (finished ? t.pending : 0)},
      {"reasons", t.reasons},
      {"eval_before", extra["eval_before"]},
      {"eval_after", eval_after},
      {"wall_seconds", wall},
      {"throughput",
       {{"rollout_tokens_per_second", rate("generated_tokens", "generate_seconds")},
        {"scorer_samples_per_second", rate("scored_samples", "score_seconds")},
        {"learner_samples_per_second", rate("learned_samples", "learn_seconds")}}},
      {"roles",
       {{"rollout_workers", pool->size()},
        {"rollout", roles->embedded_rollout() ? "embedded" : "remote"},
        {"scorer", roles->embedded_scorer() ? "embedded" : "remote"},
        {"learner", remote ? roles_cfg.learner_address : "embedded"},
        {"learner_ranks", learner_ranks}}}};
  const std::string path = (fs::path(p.run_dir) / "summary.json").string();
  {
    std::ofstream out(path + ".tmp", std::ios::trunc);
    out << summary.dump(2) << "\n";
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  }
  fs::rename(path + ".tmp", path);
  spdlog::info("{}: held-out accuracy {:.1f}% -> {:.1f}%; prompts trained {}, filtered {}, dropped {}, released {}; "
               "summary {}", stage, 100 * extra["eval_before"]["accuracy"].get<double>(),
               100 * eval_after["accuracy"].get<double>(), t.trained, t.filtered, t.dropped, t.released, path);
  return absl::OkStatus();
}

// With roles.learner_address, this process coordinates an online stage and another one learns.
bool LearnsElsewhere(const Pipeline& p) {
  return p.serve_learner_address.empty() && !coordinator::RolesConfig::Spec().Read(*p.config).learner_address.empty();
}

// The coordinator of an online stage whose learner is `rlhf serve learner`: no model is loaded here (the
// tokenizer and chat template come from the starting policy's folder, an embedded rollout worker starts from
// it and takes the learner's weights before the first step).
absl::Status CoordinateOnly(Pipeline& p, int64_t index, const std::string& stage, RlSetup& rs, int64_t group_size,
                            bool filter_equal, const data::Dataset& ds, int64_t total) {
  if (p.group->size() != 1) {
    return absl::InvalidArgumentError("roles.learner_address: the coordinator is one process (the learner has the ranks)");
  }
  rs.start = rs.sc.policy.empty() ? p.policy : rs.sc.policy;
  ASSIGN_OR_RETURN(auto cfg, model::LoadHfConfig(rs.start));
  ASSIGN_OR_RETURN(rs.tools, LoadTextTools(p.tokenizer_dir, cfg));
  OnlineTrainer trainer;
  trainer.group_size = group_size;
  trainer.filter_equal = filter_equal;
  return RunOnline(p, index, stage, rs, nullptr, trainer, ds, total);
}

absl::Status RunRl(Pipeline& p, int64_t index, const std::string& stage) {
  RlSetup rs;
  rs.sc = RlStageSection().Read(*p.config);
  const auto& sc = rs.sc;
  auto rc = RlSection().Read(*p.config);
  const auto po = OptimSection("rl.optim").Read(*p.config);
  const auto co = OptimSection("rl.critic_optim").Read(*p.config);
  const auto data_cfg = DataSection("rl").Read(*p.config);
  const bool with_critic = stage == "ppo";
  const bool online = !data_cfg.path.empty();
  if (rc.advantage == "auto") rc.advantage = with_critic ? "gae" : "grpo";
  if (rc.advantage == "gae" && !with_critic) return absl::InvalidArgumentError("rl.advantage=gae needs the ppo stage (a critic)");
  if (online == !sc.samples.empty()) {
    return absl::InvalidArgumentError(
        "set one of rl.data.path (online: prompts to generate from) or rl.samples (offline: scored samples)");
  }
  if (sc.rollout_batch_size % p.group->size() != 0) {
    return absl::InvalidArgumentError("rl.rollout_batch_size must be a multiple of the number of ranks");
  }
  const int64_t g = rc.group_size;

  std::vector<Sample> samples;  // offline
  std::optional<data::Dataset> ds;  // online
  int64_t total = 0;
  if (online) {
    ASSIGN_OR_RETURN(auto op, LoadOnlinePrompts(sc, data_cfg));
    ds.emplace(std::move(op.data));
    total = op.total_steps;
    if (LearnsElsewhere(p)) return CoordinateOnly(p, index, stage, rs, g, false, *ds, total);
  } else {
    ASSIGN_OR_RETURN(samples, ReadSamplesJsonl(sc.samples));
    if (samples.size() % static_cast<size_t>(g) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(sc.samples, " holds ", samples.size(), " samples, not whole groups of ", g));
    }
    const int64_t groups = static_cast<int64_t>(samples.size()) / g;
    total = groups / sc.rollout_batch_size;
    if (sc.steps > 0) total = std::min(total, sc.steps);
    if (total == 0) {
      return absl::InvalidArgumentError(absl::StrCat(sc.samples, " holds ", groups, " prompts, fewer than rl.rollout_batch_size"));
    }
  }

  rs.start = sc.policy.empty() ? p.policy : sc.policy;
  ASSIGN_OR_RETURN(rs.policy, LoadForTraining(rs.start, std::nullopt, p.seed));
  model::Transformer reference{nullptr};
  if (with_critic) {
    const std::string from = !sc.critic.empty() ? sc.critic : !p.reward_model.empty() ? p.reward_model : rs.start;
    ASSIGN_OR_RETURN(rs.critic, LoadForTraining(from, model::Head::kTokenClassification, p.seed + 1));
    if (p.rank0()) spdlog::info("{}: critic starts from {} (value head)", stage, from);
  }
  bool all_ref = online ? sc.scorer_reference : true;
  for (const auto& s : samples) all_ref = all_ref && s.ref_logprobs_size() == s.completion_ids_size();
  if (!all_ref && rc.kl_placement != "none" && rc.kl_coef > 0) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(sc.reference.empty() ? rs.start : sc.reference));
  }
  ASSIGN_OR_RETURN(rs.tools, LoadTextTools(p.tokenizer_dir, rs.policy->config()));
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", rs.policy, po, 1);
  if (with_critic) learner.AddModel("critic", rs.critic, co, 1);
  RlUpdate update(&learner, rs.policy, rs.critic, reference, rc, rs.tools->pad);
  // Optimizer steps per policy step, for the schedules.
  const int64_t batch_samples = sc.rollout_batch_size * g;
  const int64_t per_step = rc.ppo_epochs * (rc.minibatch_size > 0 ? batch_samples / rc.minibatch_size : 1);
  learner.SetTotalSteps(total * per_step);
  if (p.rank0()) {
    spdlog::info("{}: {}{} policy steps of {} prompts x {} samples, advantage {}, {} optimizer steps each", stage,
                 online ? "about " : "", total, sc.rollout_batch_size, g, update.advantage(), per_step);
  }

  // The stage's outputs: the policy (and critic) folders; returns the policy's.
  auto save_models = [&]() -> absl::StatusOr<std::string> {
    const std::string dir = StageDir(p, index, stage);
    RETURN_IF_ERROR(SaveStageModel(p, *rs.policy, (fs::path(dir) / "model").string()));
    if (with_critic) RETURN_IF_ERROR(SaveStageModel(p, *rs.critic, (fs::path(dir) / "critic").string()));
    return (fs::path(dir) / "model").string();
  };
  if (online) {
    OnlineTrainer trainer;
    trainer.group_size = g;
    trainer.step = [&](const std::vector<Sample>& mine, uint64_t seed) { return update.Update(mine, seed); };
    trainer.save = [&](json& extra) { extra["kl_coef"] = update.kl_controller().value(); };
    trainer.restore = [&](const json& extra) { update.kl_controller().Restore(extra.value("kl_coef", rc.kl_coef)); };
    trainer.finish = save_models;
    return RunOnline(p, index, stage, rs, &learner, trainer, *ds, total);
  } else {
    int64_t step = 0;
    if (p.resume) {
      step = p.resume->step;
      RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, learner, *p.resume));
      update.kl_controller().Restore(p.resume->extra.value("kl_coef", rc.kl_coef));
      if (p.rank0()) spdlog::info("{}: resumed at policy step {} from {}", stage, step, p.resume_dir);
      p.resume.reset();
    }
    for (; step < total; ++step) {
      // This rank's groups of the batch.
      auto [lo, hi] = ShardRange(static_cast<size_t>(sc.rollout_batch_size), p.group->rank(), p.group->size());
      const size_t first = static_cast<size_t>(step * sc.rollout_batch_size);
      std::vector<Sample> mine(samples.begin() + static_cast<std::ptrdiff_t>((first + lo) * g),
                               samples.begin() + static_cast<std::ptrdiff_t>((first + hi) * g));
      ASSIGN_OR_RETURN(auto m, update.Update(mine, p.seed + static_cast<uint64_t>(step)));
      const bool last = step + 1 == total;
      p.log.Write(index, stage, step + 1, m);
      if (p.rank0() && ((step + 1) % p.train.log_every == 0 || last)) {
        spdlog::info("{} step {}/{}: reward {:.4f} loss {:.4f} pg {:.4f} vf {:.4f} kl_ref {:.4f} clip {:.3f} entropy {:.3f} "
                     "{:.0f} tok/s",
                     stage, step + 1, total, m["reward_mean"], m["loss"], m["pg_loss"], m["vf_loss"], Get(m, "kl_ref"),
                     m["clip_fraction"], m["entropy"], m["tokens_per_second"]);
      }
      if ((p.train.save_every > 0 && (step + 1) % p.train.save_every == 0) || last) {
        TrainState st;
        st.stage = stage;
        st.stage_index = index;
        st.step = step + 1;
        st.extra["kl_coef"] = update.kl_controller().value();
        RETURN_IF_ERROR(Checkpoint(p, learner, st));
      }
    }
  }
  ASSIGN_OR_RETURN(p.policy, save_models());
  return absl::OkStatus();
}

// online_dpo: G samples per prompt from the current policy, scored; chosen = the best, rejected = the worst
// (groups with equal rewards are filtered), DPO loss against the frozen reference (rl.reference, default the
// starting policy). rft: N samples per prompt; the best one is kept when its reward reaches rft.threshold,
// and the policy takes one SFT step on the kept samples. Both on the online loop of the rl.* keys.
absl::Status RunOnlinePreference(Pipeline& p, int64_t index, const std::string& stage) {
  RlSetup rs;
  rs.sc = RlStageSection().Read(*p.config);
  const auto rc = RlSection().Read(*p.config);
  const auto po = OptimSection("rl.optim").Read(*p.config);
  const auto data_cfg = DataSection("rl").Read(*p.config);
  const bool dpo = stage == "online_dpo";
  const auto oc = dpo ? OnlinePrefConfig::Dpo().Read(*p.config) : OnlinePrefConfig::Rft().Read(*p.config);
  if (data_cfg.path.empty()) return absl::InvalidArgumentError(absl::StrCat(stage, " is online: set rl.data.path"));
  if (dpo && rc.group_size < 2) return absl::InvalidArgumentError("online_dpo needs rl.group_size >= 2 (a pair per prompt)");
  if (rs.sc.rollout_batch_size % p.group->size() != 0) {
    return absl::InvalidArgumentError("rl.rollout_batch_size must be a multiple of the number of ranks");
  }
  ASSIGN_OR_RETURN(auto op, LoadOnlinePrompts(rs.sc, data_cfg));
  const data::Dataset& ds = op.data;
  const int64_t total = op.total_steps;
  if (LearnsElsewhere(p)) return CoordinateOnly(p, index, stage, rs, rc.group_size, dpo, ds, total);
  rs.start = rs.sc.policy.empty() ? p.policy : rs.sc.policy;
  ASSIGN_OR_RETURN(rs.policy, LoadForTraining(rs.start, std::nullopt, p.seed));
  model::Transformer reference{nullptr};
  if (dpo) {
    ASSIGN_OR_RETURN(reference, LoadFrozen(rs.sc.reference.empty() ? rs.start : rs.sc.reference));
  }
  ASSIGN_OR_RETURN(rs.tools, LoadTextTools(p.tokenizer_dir, rs.policy->config()));
  const int32_t pad = rs.tools->pad;
  Learner learner(p.group, p.bucket_bytes);
  learner.AddModel("policy", rs.policy, po, 1);
  learner.SetTotalSteps(total);
  std::unique_ptr<Objective> objective;
  if (dpo) {
    PairLossConfig c;
    c.loss = PairLoss::kDpo;
    ASSIGN_OR_RETURN(c.dpo.type, algo::ParseDpoLoss(oc.loss_type));
    c.dpo.beta = oc.beta;
    objective = std::make_unique<PairObjective>(rs.policy, c);
  } else {
    objective = std::make_unique<SftObjective>(rs.policy);
  }
  auto row = [](const Sample& s, bool trained) {
    TokenSeq q;
    for (int32_t id : s.prompt_ids()) q.ids.push_back(id), q.target.push_back(0);
    for (int32_t id : s.completion_ids()) q.ids.push_back(id), q.target.push_back(trained ? 1 : 0);
    return q;
  };
  const int64_t g = rc.group_size, micro = rc.micro_batch_size;
  OnlineTrainer trainer;
  trainer.group_size = g;
  trainer.filter_equal = dpo;
  trainer.step = [&](const std::vector<Sample>& mine, uint64_t) -> absl::StatusOr<std::map<std::string, double>> {
    std::vector<MicroBatch> mbs;
    double kept = 0, groups = static_cast<double>(mine.size()) / static_cast<double>(g), reward_sum = 0;
    for (const auto& s : mine) reward_sum += s.reward();
    std::vector<TokenSeq> chosen, rejected, rows;
    for (size_t k = 0; k + static_cast<size_t>(g) <= mine.size(); k += static_cast<size_t>(g)) {
      size_t best = k, worst = k;
      for (size_t i = k; i < k + static_cast<size_t>(g); ++i) {
        if (mine[i].reward() > mine[best].reward()) best = i;
        if (mine[i].reward() < mine[worst].reward()) worst = i;
      }
      if (dpo) {
        const double gap = mine[best].reward() - mine[worst].reward();
        if (!(gap > 0) || gap < oc.min_margin) continue;
        chosen.push_back(row(mine[best], true)), rejected.push_back(row(mine[worst], true));
        kept += 1;
      } else if (mine[best].reward() >= oc.threshold) {
        rows.push_back(row(mine[best], true));
        kept += 1;
      }
    }
    ASSIGN_OR_RETURN(auto tot, p.group->SumDoubles({kept, groups, reward_sum, static_cast<double>(mine.size())}));
    std::map<std::string, double> m;
    m["kept_fraction"] = tot[1] > 0 ? tot[0] / tot[1] : 0.0;
    m["reward_mean"] = tot[3] > 0 ? tot[2] / tot[3] : 0.0;
    m["samples"] = tot[3];
    if (tot[0] == 0) return m;  // nothing to learn from on any rank: no step
    if (dpo) {
      std::vector<const TokenSeq*> all;
      for (const auto* v : {&chosen, &rejected}) {
        for (const auto& x : *v) all.push_back(&x);
      }
      std::vector<float> ref;
      RETURN_IF_ERROR(GuardExceptions("online dpo reference", [&]() -> absl::Status {
        ref = SequenceLogProbs(*reference, all, micro, pad);
        return absl::OkStatus();
      }));
      for (size_t i = 0; i < chosen.size(); i += static_cast<size_t>(micro)) {
        const size_t end = std::min(chosen.size(), i + static_cast<size_t>(micro));
        std::vector<const TokenSeq*> c, r;
        std::vector<float> rcs, rrs;
        for (size_t j = i; j < end; ++j) {
          c.push_back(&chosen[j]), r.push_back(&rejected[j]);
          rcs.push_back(ref[j]), rrs.push_back(ref[chosen.size() + j]);
        }
        auto mb = PairRows(c, r, pad);
        mb.fields["ref_chosen"] = torch::tensor(rcs), mb.fields["ref_rejected"] = torch::tensor(rrs);
        mbs.push_back(std::move(mb));
      }
    } else {
      for (size_t i = 0; i < rows.size(); i += static_cast<size_t>(micro)) {
        std::vector<const TokenSeq*> part;
        for (size_t j = i; j < std::min(rows.size(), i + static_cast<size_t>(micro)); ++j) part.push_back(&rows[j]);
        mbs.push_back(PadRows(part, pad));
      }
    }
    if (mbs.empty()) {
      // This rank kept nothing but others did: it joins the step with a row that trains no token.
      if (dpo) {
        auto q = row(mine[0], false);
        std::vector<const TokenSeq*> one = {&q};
        auto mb = PairRows(one, one, pad);
        mb.fields["ref_chosen"] = torch::zeros({1}), mb.fields["ref_rejected"] = torch::zeros({1});
        mbs.push_back(std::move(mb));
      } else {
        auto q = row(mine[0], false);
        mbs.push_back(PadRows({&q}, pad));
      }
    }
    ASSIGN_OR_RETURN(auto r, learner.Step(mbs, *objective));
    for (const auto& [k, v] : r.metrics) m[k] = v;
    return m;
  };
  if (p.rank0()) spdlog::info("{}: about {} steps of {} prompts x {} samples", stage, total, rs.sc.rollout_batch_size, g);
  trainer.finish = [&]() -> absl::StatusOr<std::string> {
    const std::string model = (fs::path(StageDir(p, index, stage)) / "model").string();
    RETURN_IF_ERROR(SaveStageModel(p, *rs.policy, model));
    return model;
  };
  return RunOnline(p, index, stage, rs, &learner, trainer, ds, total);
}


// ---- evaluations of the pipeline's policies ----------------------------------------------------------------
// With eval.data.path set, the policy is evaluated (greedy accuracy, mean reward, pass@k; services/coordinator)
// before the first stage and after each stage that changes it, on an embedded rollout worker and scorer;
// the figures go to <run>/evals.json and summary.json. Rank 0 evaluates; the others wait.
absl::Status EvaluatePolicy(Pipeline& p, const std::string& name) {
  const auto dc = coordinator::EvalDataSection().Read(*p.config);
  if (dc.path.empty()) return absl::OkStatus();
  if (p.rank0()) {
    const auto ec = coordinator::EvalConfig::Spec().Read(*p.config);
    const auto roles_cfg = coordinator::RolesConfig::Spec().Read(*p.config);
    const auto reward_cfg = PipelineReward(p);
    ASSIGN_OR_RETURN(auto prompts, coordinator::LoadEvalPrompts(dc, ec.split, p.tokenizer_dir, reward_cfg.answer_field));
    coordinator::RolesConfig embedded = roles_cfg;
    embedded.rollout_addresses.clear();  // the worker must hold this policy
    ASSIGN_OR_RETURN(auto roles, coordinator::Roles::Start(embedded, *p.config, p.policy, 0, &reward_cfg));
    coordinator::RolloutPool pool(roles->rollout_channels(), roles->rpc(), roles_cfg.retry(), {});
    coordinator::ScorerClient scorer(roles->scorer_channel(), roles->rpc(), roles_cfg.retry());
    ASSIGN_OR_RETURN(auto r, RunEval(pool, scorer, prompts, ec, 0, p.seed,
                                     (fs::path(p.run_dir) / ("eval_" + name + ".jsonl")).string()));
    const std::string path = (fs::path(p.run_dir) / "evals.json").string();
    json all = json::object();
    if (fs::exists(path)) all = json::parse(std::ifstream(path), nullptr, false);
    if (!all.is_object()) all = json::object();
    r["policy"] = p.policy;
    all[name] = r;
    std::ofstream(path + ".tmp", std::ios::trunc) << all.dump(2) << "\n";
    fs::rename(path + ".tmp", path);
    spdlog::info("eval of {} ({}): accuracy {:.1f}%", name, p.policy, 100 * r["accuracy"].get<double>());
  }
  return p.group->Barrier();
}

// summary.json of the pipeline: the evaluations in stage order, the first and the last; merged into the one
// an online stage wrote.
absl::Status WritePipelineSummary(Pipeline& p, const std::vector<std::string>& names, double wall) {
  if (!p.rank0()) return absl::OkStatus();
  const std::string evals_path = (fs::path(p.run_dir) / "evals.json").string();
  const std::string path = (fs::path(p.run_dir) / "summary.json").string();
  json summary = json::object();
  if (fs::exists(path)) summary = json::parse(std::ifstream(path), nullptr, false);
  if (!summary.is_object()) summary = json::object();
  if (fs::exists(evals_path)) {
    json evals = json::parse(std::ifstream(evals_path), nullptr, false);
    json ordered = json::array();
    for (const auto& n : names) {
      if (evals.is_object() && evals.contains(n)) ordered.push_back({{"after", n}, {"eval", evals[n]}});
    }
    summary["pipeline_evals"] = ordered;
    if (!ordered.empty() && !summary.contains("eval_before")) {
      summary["eval_before"] = ordered.front()["eval"];
      summary["eval_after"] = ordered.back()["eval"];
    }
  }
  summary["stages"] = p.train.stages;
  if (!summary.contains("wall_seconds")) summary["wall_seconds"] = wall;
  std::ofstream(path + ".tmp", std::ios::trunc) << summary.dump(2) << "\n";
  fs::rename(path + ".tmp", path);
  return absl::OkStatus();
}

}  // namespace

void RegisterTrainKeys(config::Schema& schema) {
  TrainConfig::Spec().Register(schema);
  comm::DistConfig::Spec().Register(schema);
  for (const std::string& stage : kOfflineStages) {
    OfflineSection(stage).Register(schema);
    DataSection(stage).Register(schema);
    OptimSection(stage + ".optim").Register(schema);
  }
  RlStageSection().Register(schema);
  DataSection("rl").Register(schema);
  RlSection().Register(schema);
  coordinator::EvalConfig::Spec().Register(schema);
  coordinator::EvalDataSection().Register(schema);
  OnlinePrefConfig::Dpo().Register(schema);
  OnlinePrefConfig::Rft().Register(schema);
  coordinator::RegisterRoleKeys(schema);
  OptimSection("rl.optim").Register(schema);
  OptimSection("rl.critic_optim").Register(schema);
}

absl::Status RunTraining(const config::Config& config, const std::string& run_dir, uint64_t seed,
                         const std::string& serve_learner_address) {
  Pipeline p;
  p.config = &config;
  p.run_dir = run_dir;
  p.seed = seed;
  p.serve_learner_address = serve_learner_address;
  p.train = TrainConfig::Spec().Read(config);
  const double t_start = Seconds();
  const auto dist = comm::DistConfig::Spec().Read(config);
  p.bucket_bytes = dist.bucket_bytes;
  if (p.train.stages.empty()) return absl::InvalidArgumentError("train.stages is empty");
  for (const auto& s : p.train.stages) {
    if (std::find(kStages.begin(), kStages.end(), s) == kStages.end()) {
      return absl::InvalidArgumentError(absl::StrCat("train.stages: unknown stage '", s,
                                                     "' (", absl::StrJoin(kStages, ", "), ")"));
    }
  }
  if (p.train.model.empty()) return absl::InvalidArgumentError("set train.model (--model DIR): the starting policy");
  p.policy = p.train.model;
  p.tokenizer_dir = p.train.model;
  const bool coordinate_only = LearnsElsewhere(p);
  if (coordinate_only) {
    for (const auto& s : p.train.stages) {
      if (s != "ppo" && s != "grpo" && s != "online_dpo" && s != "rft") {
        return absl::InvalidArgumentError(absl::StrCat(
            "roles.learner_address: this process only coordinates online stages; stage '", s,
            "' belongs in the learner's pipeline (rlhf serve learner)"));
      }
    }
  }
  ASSIGN_OR_RETURN(p.group, comm::Group::Create(dist));
  torch::manual_seed(seed);

  int64_t resume_stage = 0;
  if (coordinate_only) {
    // The learner holds the checkpoints; the log is cut at its step once the stage knows it (RunOnline).
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), std::numeric_limits<int64_t>::max(), 0));
  } else if (p.train.resume) {
    ASSIGN_OR_RETURN(p.resume_dir, FindLatestCheckpoint(run_dir));
    ASSIGN_OR_RETURN(auto state, ReadTrainState(p.resume_dir));
    if (state.stage_index >= static_cast<int64_t>(p.train.stages.size()) ||
        p.train.stages[static_cast<size_t>(state.stage_index)] != state.stage) {
      return absl::FailedPreconditionError(absl::StrCat(p.resume_dir, " belongs to stage '", state.stage,
                                                        "', which is not stage ", state.stage_index, " of train.stages"));
    }
    resume_stage = state.stage_index;
    p.resume = state;
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), state.stage_index, state.step));
  } else {
    if (p.rank0() && fs::exists(fs::path(run_dir) / "checkpoints" / "latest")) {
      return absl::FailedPreconditionError(absl::StrCat(run_dir, " already holds checkpoints: add --resume to continue "
                                                        "it, or choose another --run-dir"));
    }
    RETURN_IF_ERROR(p.log.Open(run_dir, p.rank0(), -1, 0));
  }
  for (size_t i = 0; i < p.train.stages.size(); ++i) {
    const std::string& stage = p.train.stages[i];
    const int64_t index = static_cast<int64_t>(i);
    if (index < resume_stage) {  // finished before the checkpoint: take its outputs
      const std::string out = (fs::path(StageDir(p, index, stage)) / "model").string();
      if (!fs::exists(fs::path(out) / "config.json")) {
        return absl::FailedPreconditionError(absl::StrCat("cannot resume: stage ", index, " (", stage,
                                                          ") finished but its output ", out, " is missing"));
      }
      (stage == "reward_model" ? p.reward_model : p.policy) = out;
      continue;
    }
    // Pipeline evaluations run where the policy is: in the learner's process when that is another one.
    if (index == 0 && !p.resume && !coordinate_only) RETURN_IF_ERROR(EvaluatePolicy(p, "start"));
    if (p.rank0()) spdlog::info("stage {}/{}: {}", index + 1, p.train.stages.size(), stage);
    if (stage == "sft") {
      RETURN_IF_ERROR(RunSft(p, index));
    } else if (stage == "ppo" || stage == "grpo") {
      RETURN_IF_ERROR(RunRl(p, index, stage));
    } else if (stage == "online_dpo" || stage == "rft") {
      RETURN_IF_ERROR(RunOnlinePreference(p, index, stage));
    } else {
      RETURN_IF_ERROR(RunPreference(p, index, stage));
    }
    if (stage != "reward_model" && !coordinate_only) RETURN_IF_ERROR(EvaluatePolicy(p, absl::StrCat(index, "-", stage)));
  }
  std::vector<std::string> names = {"start"};
  for (size_t i = 0; i < p.train.stages.size(); ++i) names.push_back(absl::StrCat(i, "-", p.train.stages[i]));
  RETURN_IF_ERROR(WritePipelineSummary(p, names, Seconds() - t_start));
  if (p.rank0()) spdlog::info("training done: policy {}", p.policy);
  return absl::OkStatus();
}

}  // namespace rlhf::trainer
