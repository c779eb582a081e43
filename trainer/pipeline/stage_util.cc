#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/model/checkpoint.h"
#include "common/model/safetensors.h"
#include "trainer/pipeline/stage.h"

namespace rlhf::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

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

void MaybeSlowTrain() {
  const char* v = std::getenv("RLHF_FAULT_SLOW_TRAIN");
  double seconds = 0;
  if (v == nullptr || !absl::SimpleAtod(v, &seconds) || seconds <= 0) return;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

void MaybePauseBeforeSync(int64_t version) {
  const char* dir = std::getenv("RLHF_FAULT_PAUSE_DIR");
  const char* list = std::getenv("RLHF_FAULT_PAUSE_BEFORE_SYNC");
  if (!dir || !list) return;
  bool listed = false;
  for (absl::string_view v : absl::StrSplit(list, ',')) listed |= v == absl::StrCat(version);
  if (!listed) return;
  const fs::path paused = fs::path(dir) / absl::StrCat("paused-", version), resume = fs::path(dir) / absl::StrCat("resume-", version);
  spdlog::warn("fault injection: paused before the weight sync of version {} (waiting for {})", version, resume.string());
  std::ofstream(paused.string()).put('\n');
  for (int i = 0; i < 1200 && !fs::exists(resume); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
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

absl::Status CheckMemory(Pipeline& p, const std::string& stage, const std::string& model_dir, const MemoryPlan& plan) {
  ASSIGN_OR_RETURN(auto config, model::LoadHfConfig(model_dir));
  const MemoryEstimate e = EstimateMemory(config, plan);
  p.peak_estimate = std::max(p.peak_estimate, e.total());
  const double limit = p.train.memory_limit_gb > 0 ? p.train.memory_limit_gb * 1e9
                                                  : static_cast<double>(MachineMemoryBytes(/*available=*/false));
  if (limit > 0 && e.total() > limit) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: estimated memory %s is above %s %.2f GB: lower %s.micro_batch_size or the sequence length (%d rows of %d "
        "tokens), or use a machine with more memory", stage, e.Describe(),
        p.train.memory_limit_gb > 0 ? "train.memory_limit_gb" : "this machine's memory", limit / 1e9, stage,
        plan.micro_batch_rows, plan.tokens_per_row));
  }
  if (p.rank0()) {
    const double available = static_cast<double>(MachineMemoryBytes(/*available=*/true));
    if (available > 0 && e.total() > available) {
      spdlog::warn("{}: estimated memory {} is above the {:.2f} GB available now", stage, e.Describe(), available / 1e9);
    } else {
      spdlog::info("{}: estimated memory per process {}", stage, e.Describe());
    }
  }
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


namespace {
// The early stop's state (OfflineTask::target_accuracy / patience), kept in the checkpoint's extra.
struct EarlyStop {
  double best = -1;                                      // best held-out accuracy so far
  double best_loss = std::numeric_limits<double>::max(); // best held-out loss so far
  int64_t since_best = 0;                                // evaluations since either improved
  bool stopped = false;                                  // the stage has ended early

  json ToJson() const { return {{"best", best}, {"best_loss", best_loss}, {"since_best", since_best}, {"stopped", stopped}}; }
  // The state in `extra` ("early_stop"), or a fresh one when it is missing or malformed.
  static EarlyStop From(const json& extra) {
    EarlyStop e;
    if (!extra.contains("early_stop") || !extra["early_stop"].is_object()) return e;
    const json& j = extra["early_stop"];
    if (!j.value("best", json()).is_number() || !j.value("since_best", json()).is_number_integer() ||
        !j.value("stopped", json()).is_boolean()) {
      return e;
    }
    e.best = j["best"].get<double>();
    if (j.value("best_loss", json()).is_number()) e.best_loss = j["best_loss"].get<double>();
    e.since_best = j["since_best"].get<int64_t>();
    e.stopped = j["stopped"].get<bool>();
    return e;
  }
};
}  // namespace

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
  if (c.max_steps > total && p.rank0()) {
    spdlog::warn("{}: max_steps {} is cut to {} steps by epochs {} ({} examples, batch {}): raise {}.epochs to train "
                 "{} steps", task.stage, c.max_steps, total, c.epochs, task.n_train, c.batch_size, task.stage, c.max_steps);
  }
  if (c.max_steps > 0) total = std::min(total, c.max_steps);
  learner.SetTotalSteps(total);
  if ((task.target_accuracy > 0 || task.patience > 0) && (!task.accuracy || c.eval_every == 0)) {
    return absl::InvalidArgumentError(absl::StrCat(task.stage, ".target_accuracy / ", task.stage, ".patience need ",
                                                   task.stage, ".accuracy_prompts > 0 and ", task.stage, ".eval_every > 0"));
  }
  int64_t step = 0;
  EarlyStop early;
  if (p.resume) {
    step = p.resume->step;
    RETURN_IF_ERROR(LoadTrainCheckpoint(p.resume_dir, learner, *p.resume));
    if (p.rank0()) spdlog::info("{}: resumed at step {} from {}", task.stage, step, p.resume_dir);
    early = EarlyStop::From(p.resume->extra);
    p.resume.reset();
  }
  if (early.stopped) {
    if (p.rank0()) spdlog::info("{}: ended early at step {} before the resume; nothing left to train", task.stage, step);
    return absl::OkStatus();
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
    bool last = step + 1 == total;
    if ((c.eval_every > 0 && (step + 1) % c.eval_every == 0) || last) {
      ASSIGN_OR_RETURN(auto ev, task.evaluate());
      for (const auto& [k, v] : ev) m["eval/" + k] = v;
      if (task.accuracy) {
        ASSIGN_OR_RETURN(const double acc, task.accuracy());
        m["eval/accuracy"] = acc;
        // Progress is a new best accuracy or a held-out loss 0.1% under its best: the loss is the smoother of
        // the two (an accuracy on a few hundred prompts moves by a few points from noise alone).
        const auto loss = ev.find("loss");
        const bool loss_better = loss != ev.end() && loss->second < early.best_loss * (1 - 1e-3);
        const bool acc_better = acc > early.best;
        if (loss_better) early.best_loss = loss->second;
        if (acc_better) early.best = acc;
        early.since_best = acc_better || loss_better ? 0 : early.since_best + 1;
        std::string why;
        if (task.target_accuracy > 0 && acc >= task.target_accuracy) {
          why = absl::StrFormat("held-out accuracy %.1f%% reached %s.target_accuracy %.1f%%", 100 * acc, task.stage,
                                100 * task.target_accuracy);
        } else if (task.patience > 0 && early.since_best >= task.patience) {
          why = absl::StrFormat("neither the held-out accuracy (%.1f%%, best %.1f%%) nor the held-out loss has improved for "
                                "%d evaluations (%s.patience)", 100 * acc, 100 * early.best, task.patience, task.stage);
        }
        if (!why.empty() && !last) {
          if (p.rank0()) spdlog::info("{}: ending at step {} of {}: {}", task.stage, step + 1, total, why);
          early.stopped = true;
          last = true;
        }
      }
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
      if (task.accuracy) st.extra["early_stop"] = early.ToJson();
      RETURN_IF_ERROR(Checkpoint(p, learner, st));
    }
    if (last) break;
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

std::vector<TokenSeq> Tokenize(const data::Dataset& ds, const std::vector<size_t>& idx, const text::ModelText& t,
                               int64_t max_length, data::ojson data::Example::*field, absl::Status* status) {
  std::vector<TokenSeq> out;
  for (size_t i : idx) {
    const auto& ex = ds.examples()[i];
    auto sft = data::BuildSft(ex.prompt, ex.*field, t);
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

// Pairs (prompt + chosen, prompt + rejected) as rows: chosen rows first, then rejected rows.
MicroBatch PairRows(const std::vector<const TokenSeq*>& chosen, const std::vector<const TokenSeq*>& rejected, int32_t pad) {
  std::vector<const TokenSeq*> rows = chosen;
  rows.insert(rows.end(), rejected.begin(), rejected.end());
  return PadRows(rows, pad);
}

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
static std::string ReferenceFingerprint(const std::string& ref_dir, const std::vector<const TokenSeq*>& seqs) {
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

absl::StatusOr<OnlinePrompts> LoadOnlinePrompts(const RlStageConfig& sc, const data::DataConfig& dc) {
  ASSIGN_OR_RETURN(auto ds, LoadData(dc, "rl", {data::Kind::kPromptAnswer, data::Kind::kPromptCompletion,
                                                data::Kind::kMessages, data::Kind::kPreference, data::Kind::kKto}));
  const int64_t n = static_cast<int64_t>(ds.Indices(data::Split::kTrain).size());
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(dc.path, " has no training prompts"));
  int64_t total = (n * sc.epochs + sc.rollout_batch_size - 1) / sc.rollout_batch_size;
  if (sc.steps > total) {
    spdlog::warn("rl.steps {} is cut to about {} steps by rl.epochs {} ({} training prompts, {} per step): raise "
                 "rl.epochs to train {} steps", sc.steps, total, sc.epochs, n, sc.rollout_batch_size, sc.steps);
  }
  if (sc.steps > 0) total = std::min(total, sc.steps);
  return OnlinePrompts{std::move(ds), total};
}

}  // namespace rlhf::trainer
