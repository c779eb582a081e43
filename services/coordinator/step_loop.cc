#include "services/coordinator/step_loop.h"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/comm/group.h"
#include "common/file.h"
#include "common/metrics.h"
#include "rollout/weight_client.h"

namespace rlhf::coordinator {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Makes a rollout worker hold the learner's current weights: the learner's chunks are relayed one at a
// time into the worker's UpdateWeights stream, stamped with `version`, then committed.
RolloutPool::Publisher LearnerPublisher(LearnerClient& learner, int64_t chunk_bytes, const RpcConfig& rpc) {
  return [&learner, chunk_bytes, rpc](Rollout::Stub* stub, int64_t version) -> absl::Status {
    const double t0 = Seconds();
    absl::Status source;         // the learner's side of the relay
    bool worker_broke = false;   // the worker's stream refused a chunk: its own status says why
    auto r = rollout::PushChunks(stub, version, [&](const rollout::ChunkWriter& w) {
      source = learner.StreamWeights(chunk_bytes, [&](const WeightChunk& c) {
        WeightChunk stamped = c;
        stamped.set_version(version);
        worker_broke = !w(stamped);
        return !worker_broke;
      });
      return source.ok();
    }, rpc);
    if (!source.ok() && !worker_broke) return source;
    if (!r.ok()) return r.status();
    Metrics::Process()
        .Histogram("rlhf_weight_sync_duration_seconds", "time of one weight sync (grpc: to one worker; collective: to all)",
                   {0.01, 0.1, 1, 10, 100})
        .Observe(Seconds() - t0);
    return absl::OkStatus();
  };
}

// One process of processes.json from its Health (what a remote process says about itself).
json ProcessEntry(const std::string& role, int64_t index, const std::string& address,
                  const std::shared_ptr<grpc::Channel>& channel, const RpcConfig& rpc) {
  json e = {{"role", role}, {"index", index}, {"address", address}};
  auto h = CheckHealth(channel, rpc, /*wait_for_ready=*/false, /*max_seconds=*/2);
  if (!h.ok()) {
    e["state"] = "unreachable";
    return e;
  }
  e["state"] = "running";
  e["host"] = h->host;
  e["pid"] = h->pid;
  e["metrics_port"] = h->metrics_port;
  e["policy_version"] = h->policy_version;
  return e;
}

// Where the loop's batches come from. With max_staleness 0, the batch of a step is generated when the loop
// asks for it (the workers hold the learner's version then). With k > 0, a thread generates and scores
// batches ahead while the learner trains: it starts a batch when at most k batches are in flight (taken or
// waiting, not yet trained and synced), so a batch is trained at most k versions after the version the
// workers held when it started. When the epoch's last prompts are all in flight it waits until they are
// settled (a batch never spans two epochs), and it stops after the batches the run still needs.
class BatchSource {
 public:
  BatchSource(Coordinator& coord, int64_t max_staleness, int64_t version, int64_t batches_needed)
      : coord_(coord), k_(max_staleness), synced_(version), needed_(batches_needed) {
    if (k_ > 0) thread_ = std::thread([this] { Produce(); });
  }
  ~BatchSource() { Stop().IgnoreError(); }

  // The next batch (empty when every epoch is done), and how long the caller waited for it.
  absl::StatusOr<StepBatch> Take(double* waited) {
    const double t0 = Seconds();
    if (k_ == 0) {
      auto b = coord_.NextBatch(synced_);
      *waited = Seconds() - t0;
      return b;
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !ready_.empty(); });
    auto b = std::move(ready_.front());
    ready_.pop_front();
    *waited = Seconds() - t0;
    return b;
  }
  // A taken batch is settled: trained, after which the workers hold `version`, or not trained (discarded,
  // version unchanged); `counts` says whether it was one of the run's steps.
  void Settled(int64_t version, bool counts) {
    std::lock_guard<std::mutex> lock(mu_);
    synced_ = version;
    --in_flight_;
    if (!counts) ++needed_;
    cv_.notify_all();
  }
  // How long the batch thread has waited for the learner (at most k batches in flight) since the last call.
  double TakeIdleSeconds() {
    std::lock_guard<std::mutex> lock(mu_);
    const double s = idle_;
    idle_ = 0;
    return s;
  }
  // Stops the thread (after the batch it is generating) and hands every batch not taken back to the ledger.
  absl::Status Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    absl::Status s;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& b : ready_) {
      if (b.ok() && !b->empty()) s.Update(coord_.Release(*b));
    }
    ready_.clear();
    return s;
  }

 private:
  void Produce() {
    std::unique_lock<std::mutex> lock(mu_);
    int64_t produced = 0;
    bool wait_settled = false;  // the epoch's remaining prompts are all in flight
    while (true) {
      const double t0 = Seconds();
      cv_.wait(lock, [&] {
        return stop_ || (produced < needed_ && in_flight_ <= k_ && !(wait_settled && in_flight_ > 0));
      });
      idle_ += Seconds() - t0;
      if (stop_) return;
      const int64_t version = synced_;
      ++in_flight_;
      lock.unlock();
      auto b = coord_.NextBatch(version);
      const bool done = b.ok() && b->empty() && coord_.Done();
      lock.lock();
      if (b.ok() && b->empty() && !done) {  // wait for the batches in flight to settle, then try again
        --in_flight_;
        wait_settled = true;
        continue;
      }
      wait_settled = false;
      ++produced;
      const bool last = !b.ok() || done;
      if (done) --in_flight_;
      ready_.push_back(std::move(b));
      cv_.notify_all();
      if (last) return;
    }
  }

  Coordinator& coord_;
  const int64_t k_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t synced_;         // the version the workers hold (under mu_)
  int64_t needed_;         // batches the run still trains, plus those discarded (under mu_)
  int64_t in_flight_ = 0;  // batches produced or being produced, not yet settled (under mu_)
  bool stop_ = false;
  double idle_ = 0;        // seconds the thread waited for the learner (under mu_)
  std::deque<absl::StatusOr<StepBatch>> ready_;
  std::thread thread_;
};

// samples.jsonl after a resume at `step`: the lines of the steps before it.
absl::Status TrimSampleLog(const std::string& path, int64_t step) {
  if (path.empty() || !fs::exists(path)) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto text, ReadFile(path));
  std::string kept;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    json j = json::parse(line, nullptr, false);
    if (j.is_object() && j.value("step", int64_t{-1}) < step) kept += line + "\n";
  }
  return WriteFileAtomic(path, kept);
}

}  // namespace

absl::StatusOr<std::string> RunStepLoop(const StepLoopOptions& o, Roles& roles, LearnerClient& learner,
                                        std::vector<Prompt> train_prompts, const std::vector<Prompt>& eval_prompts,
                                        const StepLoopHooks& hooks) {
  const std::string& stage = o.stage;
  const int64_t g = o.coordinator.group_size;
  const double t_start = Seconds();
  // Where the learner stands: its stage, version and the state of this loop in its newest checkpoint.
  ASSIGN_OR_RETURN(auto st, learner.State());
  if (st.stage() != stage || st.group_size() != g) {
    return absl::FailedPreconditionError(absl::StrCat("the learner (", o.learner_label, ") serves stage ", st.stage(),
                                                      " with groups of ", st.group_size(), "; this is ", stage,
                                                      " with groups of ", g));
  }
  if (st.version() != st.checkpoint_step()) {
    // This loop's state of the steps after the checkpoint is gone: continuing would train them twice.
    return absl::FailedPreconditionError(absl::StrCat(
        "the learner (", o.learner_label, ") is at policy version ", st.version(),
        " but its newest checkpoint is of step ", st.checkpoint_step(),
        ": restart it with --resume, so that learner and coordinator continue from that checkpoint"));
  }
  int64_t step = st.version();
  const int64_t learner_ranks = std::max(1, st.ranks());
  RETURN_IF_ERROR(hooks.resume_at(step));
  json extra = json::object();
  if (!st.extra_json().empty()) extra = json::parse(st.extra_json(), nullptr, false);
  if (!extra.is_object()) return absl::DataLossError("the learner's checkpoint holds a coordinator state that is not JSON");
  spdlog::info("{}: learner {} ({} rank{}), policy version {}", stage, o.learner_label, learner_ranks,
               learner_ranks == 1 ? "" : "s", step);

  fs::create_directories(o.stage_dir);
  const RpcConfig rpc = roles.rpc();
  RolloutPool pool(roles.rollout_channels(), rpc, o.retry, LearnerPublisher(learner, o.weight_chunk_bytes, rpc));
  pool.SetLeases(o.leases);
  std::unique_ptr<CollectiveWeights> collective;
  const bool use_collective =
      o.weights.transport == "collective" || (o.weights.transport == "auto" && !roles.embedded_rollout());
  if (use_collective) {
    ASSIGN_OR_RETURN(collective, CollectiveWeights::Start(o.weights, o.weights_store_host, learner,
                                                          roles.rollout_channels(), rpc, o.retry));
    pool.SetGroupPublisher([&collective](int64_t version, const std::vector<size_t>& members) {
      if (!collective) return absl::FailedPreconditionError("the weight group was closed at the end of the stage");
      return collective->Sync(version, members);
    });
  }
  ScorerClient scorer(roles.scorer_channels(), rpc, o.retry);
  // processes.json: this process, and each remote one as its Health describes it; rewritten when a rollout
  // worker leaves or rejoins.
  auto write_processes = [&]() -> absl::Status {
    if (o.processes_path.empty()) return absl::OkStatus();
    std::vector<std::string> here = {"coordinator"};
    if (o.learner_label == "embedded") here.push_back("learner");
    if (roles.embedded_rollout()) here.push_back("rollout");
    if (roles.embedded_scorer()) here.push_back("scorer");
    json self = {{"role", absl::StrJoin(here, "+")}, {"index", 0}, {"address", ""},
                 {"host", comm::HostName()}, {"pid", static_cast<int64_t>(getpid())},
                 {"metrics_port", Metrics::Process().port()}, {"state", "running"}};
    if (collective) self["weights_store"] = absl::StrCat(o.weights_store_host, ":", collective->store_port());
    json all = json::array({self});
    if (!roles.embedded_rollout()) {
      const auto active = pool.active();
      const auto channels = roles.rollout_channels();
      for (size_t w = 0; w < channels.size(); ++w) {
        const std::string address = w < o.rollout_addresses.size() ? o.rollout_addresses[w] : "";
        if (std::find(active.begin(), active.end(), w) == active.end()) {  // not asked: it may be stopped
          all.push_back({{"role", "rollout"}, {"index", w}, {"address", address}, {"state", "dropped"}});
          continue;
        }
        all.push_back(ProcessEntry("rollout", static_cast<int64_t>(w), address, channels[w], rpc));
      }
    }
    if (!roles.embedded_scorer()) {
      const auto channels = roles.scorer_channels();
      for (size_t i = 0; i < channels.size(); ++i) {
        all.push_back(ProcessEntry("scorer", static_cast<int64_t>(i),
                                   i < o.scorer_addresses.size() ? o.scorer_addresses[i] : "", channels[i], rpc));
      }
    }
    if (o.learner_label != "embedded") {
      ASSIGN_OR_RETURN(auto channel, MakeChannel(rpc, o.learner_label));
      all.push_back(ProcessEntry("learner", 0, o.learner_label, channel, rpc));
    }
    // What the launcher knows (ranks, learner ranks above 0): merged into the entry of the same role and
    // index, added where there is none.
    for (const auto& other : o.other_processes) {
      json e = json::parse(other, nullptr, false);
      if (!e.is_object()) continue;
      bool merged = false;
      for (auto& a : all) {
        if (a["role"] == e.value("role", json()) && a["index"] == e.value("index", json())) {
          for (const auto& [k, v] : e.items()) {
            if (!a.contains(k)) a[k] = v;
          }
          merged = true;
        }
      }
      if (!merged) all.push_back(e);
    }
    return WriteFileAtomic(o.processes_path, json({{"stage", stage}, {"processes", all}}).dump(2) + "\n");
  };
  const bool precheck = o.learnability.precheck_prompts > 0 && !extra.contains("precheck");
  const std::vector<Prompt> precheck_sample =
      precheck ? SpreadSample(train_prompts, o.learnability.precheck_prompts) : std::vector<Prompt>{};
  Coordinator coord(o.coordinator, std::move(train_prompts), o.seed, &pool, &scorer);
  if (extra.contains("ledger")) RETURN_IF_ERROR(coord.Restore(extra["ledger"]));
  // Every worker holds the policy of this step (a fresh or restarted worker may hold anything).
  RETURN_IF_ERROR(pool.Sync(step, /*force=*/true));
  RETURN_IF_ERROR(write_processes());
  int64_t membership_changes = pool.dropped() + pool.rejoined();
  spdlog::info("{}: online, {} training prompts x {} epochs, {} held-out prompts for eval; rollout workers: {} ({}), "
               "scorer: {}", stage, coord.num_prompts(), o.coordinator.epochs, eval_prompts.size(), pool.size(),
               roles.embedded_rollout() ? "embedded" : "remote", roles.embedded_scorer() ? "embedded" : "remote");
  auto eval_file = [&](const std::string& name) { return (fs::path(o.stage_dir) / (name + ".jsonl")).string(); };
  if (!extra.contains("eval_before")) {
    ASSIGN_OR_RETURN(extra["eval_before"],
                     EvaluateToFile(pool, scorer, eval_prompts, o.eval, step, o.seed, eval_file("eval_before")));
  }
  // Can this policy learn at all? (Before the first step only: a resumed run has answered that.)
  if (precheck) {
    ASSIGN_OR_RETURN(extra["precheck"], Precheck(pool, scorer, precheck_sample, o.coordinator.params, o.coordinator.group_size,
                                                 o.eval, o.learnability, step, o.seed, stage));
  }
  EqualRewardAlarm equal_alarm(o.learnability, stage);
  auto& reg = Metrics::Process();
  auto& version_gauge = reg.Gauge("rlhf_policy_version", "weights version held by this process", {{"role", "learner"}});
  auto& tokens_total = reg.Counter("rlhf_rollout_tokens_total", "completion tokens generated by the rollout workers");
  auto& reassigned_total = reg.Counter("rlhf_samples_reassigned_total", "prompt leases handed out again after a failure");
  auto& reward_gauge = reg.Gauge("rlhf_reward_mean", "mean reward of the latest rollout batch");
  auto& kl_gauge = reg.Gauge("rlhf_kl_mean", "mean KL to the reference of the latest batch");
  // Where a step's time goes: the loop waits on the rollout workers, the scorer, the learner and the sync.
  const std::vector<double> phase_buckets = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
  const char* phase_help = "time of one phase of an online step: generate, score, train or sync";
  auto& phase_generate = reg.Histogram("rlhf_step_phase_seconds", phase_help, phase_buckets, {{"kind", "generate"}});
  auto& phase_score = reg.Histogram("rlhf_step_phase_seconds", phase_help, phase_buckets, {{"kind", "score"}});
  auto& phase_train = reg.Histogram("rlhf_step_phase_seconds", phase_help, phase_buckets, {{"kind", "train"}});
  auto& phase_sync = reg.Histogram("rlhf_step_phase_seconds", phase_help, phase_buckets, {{"kind", "sync"}});
  // Role throughput, accumulated over the run (and across resumes).
  auto acc = [&](const char* k) -> double& {
    if (!extra.contains("acc")) extra["acc"] = json::object();
    if (!extra["acc"].contains(k)) extra["acc"][k] = 0.0;
    return extra["acc"][k].get_ref<double&>();
  };
  const double wall_before = acc("wall_seconds");  // of the run before this process resumed it
  auto& phase_wait = reg.Histogram("rlhf_step_phase_seconds", phase_help, phase_buckets, {{"kind", "wait_batch"}});
  auto& staleness_hist = reg.Histogram("rlhf_sample_staleness", "policy versions between a trained sample's behaviour policy and the learner",
                                       {0, 1, 2, 3, 4, 8});
  auto& stale_total = reg.Counter("rlhf_stale_groups_total", "groups too many versions behind the learner, generated again");
  int64_t released_seen = coord.Totals().released;
  // Leases that expired and late results refused since the last call (in batches or evaluations; the pool
  // counts from this process's start) go to the ledger; returns the two counts.
  int64_t expired_seen = 0, late_seen = 0;
  auto count_lease_events = [&]() {
    const int64_t expired = pool.leases_expired() - expired_seen, late = pool.late_results_refused() - late_seen;
    coord.Count("lease_expired", expired);
    coord.Count("late_refused", late);
    expired_seen += expired, late_seen += late;
    return std::make_pair(expired, late);
  };
  const int64_t k = o.max_staleness;
  if (k > 0) pool.SetRefreshBehind(false);  // only this loop pushes weights, between learner steps
  RETURN_IF_ERROR(TrimSampleLog(o.sample_log_path, step));
  // Batches the run still trains (a bound for the thread that generates ahead; 0 = every epoch).
  const int64_t needed = o.steps > 0 ? o.steps - step : std::numeric_limits<int64_t>::max() / 2;
  BatchSource source(coord, k, step, needed);
  for (; o.steps == 0 || step < o.steps; ++step) {
    const double t_step = Seconds();
    // 1-3. Lease, generate, score and sort: a batch of whole groups, at least one per learner rank, none
    // of them more than k versions behind the learner.
    StepBatch batch;
    double waited = 0;
    int64_t stale_groups = 0;
    while (true) {
      double w = 0;
      ASSIGN_OR_RETURN(batch, source.Take(&w));
      waited += w;
      if (batch.empty()) break;
      ASSIGN_OR_RETURN(const int64_t stale, coord.DropStale(batch, step - k));
      stale_groups += stale;
      // Stale groups are generated again now, with the workers' current version.
      while (stale > 0 && static_cast<int64_t>(batch.prompts.size()) < o.coordinator.rollout_batch_size) {
        spdlog::warn("{}: {} group(s) more than {} version(s) behind policy {}: generated again", stage, stale, k, step);
        ASSIGN_OR_RETURN(auto more, coord.NextBatch(step, o.coordinator.rollout_batch_size - static_cast<int64_t>(batch.prompts.size())));
        if (more.empty()) break;
        batch.Append(std::move(more));
      }
      if (static_cast<int64_t>(batch.prompts.size()) >= learner_ranks) break;
      // An epoch's remainder too small to give every rank a group: recorded as filtered, not trained.
      RETURN_IF_ERROR(coord.Discard(batch, "epoch remainder smaller than the number of learner ranks"));
      source.Settled(step, /*counts=*/false);
    }
    if (batch.empty()) break;  // every epoch done
    // Staleness of every sample the learner trains at this version (0 when on-policy).
    std::map<int64_t, int64_t> staleness;
    for (const auto& smp : batch.samples) ++staleness[step - smp.policy_version()];
    // 4. The learner step.
    const double t_learn = Seconds();
    ASSIGN_OR_RETURN(auto reply, learner.Train(step, batch.samples, o.seed + static_cast<uint64_t>(step)));
    std::map<std::string, double> m(reply.metrics().begin(), reply.metrics().end());
    const double learn_seconds = Seconds() - t_learn;
    const int64_t version = step + 1;
    version_gauge.Set(static_cast<double>(version));
    // Groups the learner refused (rl.max_behaviour_gap): their samples' log-probs are not those of the
    // policy the worker was to hold. Dropped, not trained, with the worker named, and said loudly.
    std::map<size_t, std::string> refused;
    for (auto it = m.begin(); it != m.end();) {
      int64_t pos = -1;
      if (!absl::StartsWith(it->first, "refused_group/") ||
          !absl::SimpleAtoi(it->first.substr(std::string("refused_group/").size()), &pos) || pos < 0 ||
          static_cast<size_t>(pos) >= batch.prompts.size()) {
        ++it;
        continue;
      }
      const Sample& first = batch.samples[static_cast<size_t>(pos) * static_cast<size_t>(g)];
      const int32_t w = first.has_rollout_worker() ? first.rollout_worker() : -1;
      const std::string who = w < 0 ? "an unknown rollout worker"
                              : static_cast<size_t>(w) < o.rollout_addresses.size()
                                  ? absl::StrCat("rollout worker ", w, " (", o.rollout_addresses[static_cast<size_t>(w)], ")")
                                  : absl::StrCat("rollout worker ", w);
      spdlog::error("{}: REFUSED prompt {} from {}: its behaviour log-probs differ from the learner's by {:.3f} nats per "
                    "token (rl.max_behaviour_gap; version {}): the worker does not hold the weights it reports. Not "
                    "trained.", stage, batch.prompts[static_cast<size_t>(pos)], who, it->second, first.policy_version());
      refused[static_cast<size_t>(pos)] = absl::StrCat("behaviour gap (", w < 0 ? std::string("unknown worker") : absl::StrCat("rollout worker ", w), ")");
      reg.Counter("rlhf_refused_groups_total", "groups the learner refused: behaviour log-probs far from its own",
                  {{"worker", std::to_string(w)}})
          .Increment();
      it = m.erase(it);
    }
    if (!o.sample_log_path.empty()) {
      json rows = json::array();
      for (size_t i = 0; i < batch.samples.size(); ++i) {
        if (refused.count(i / static_cast<size_t>(g))) continue;  // not trained
        const auto& smp = batch.samples[i];
        rows.push_back({smp.prompt_index(), smp.sample_index(), smp.policy_version()});
      }
      std::ofstream log(o.sample_log_path, std::ios::app);
      log << json({{"step", step}, {"samples", rows}}).dump() << "\n";
      if (!log) return absl::InternalError(absl::StrCat("cannot append to ", o.sample_log_path));
    }
    // 5. Settle the ledger; 6. the workers take the new weights.
    RETURN_IF_ERROR(coord.MarkTrained(batch, refused));
    hooks.before_sync(version);
    const double t_sync = Seconds();
    RETURN_IF_ERROR(pool.Sync(version));
    if (k > 0) source.Settled(version, /*counts=*/true);  // the next batch may start (on-policy: after eval)
    // The step's time split: generate, score, train, sync (a batch's rollouts and scores may span several
    // calls; these are its totals), and how long the learner waited for the batch (on-policy: generate +
    // score; asynchronous: what generating ahead did not hide).
    m["weight_sync_seconds"] = Seconds() - t_sync;
    m["generate_seconds"] = batch.generate_seconds;
    m["score_seconds"] = batch.score_seconds;
    m["train_seconds"] = learn_seconds;
    m["wait_batch_seconds"] = waited;
    if (k > 0) m["rollout_wait_seconds"] = source.TakeIdleSeconds();  // the generating thread, waiting on the learner
    phase_generate.Observe(batch.generate_seconds);
    phase_score.Observe(batch.score_seconds);
    phase_train.Observe(learn_seconds);
    phase_sync.Observe(m["weight_sync_seconds"]);
    phase_wait.Observe(waited);
    {
      double sum = 0, n = 0, max = 0;
      for (const auto& [d, c] : staleness) {
        for (int64_t i = 0; i < c; ++i) staleness_hist.Observe(static_cast<double>(d));
        sum += static_cast<double>(d * c), n += static_cast<double>(c), max = std::max(max, static_cast<double>(d));
        if (!extra.contains("staleness")) extra["staleness"] = json::object();
        const std::string key = std::to_string(d);
        extra["staleness"][key] = extra["staleness"].value(key, int64_t{0}) + c;
      }
      m["staleness/mean"] = n > 0 ? sum / n : 0.0;
      m["staleness/max"] = max;
      m["rollout/stale_groups"] = static_cast<double>(stale_groups);
      stale_total.Increment(static_cast<double>(stale_groups));
    }
    if (pool.dropped() + pool.rejoined() != membership_changes) {
      membership_changes = pool.dropped() + pool.rejoined();
      RETURN_IF_ERROR(write_processes());
    }
    acc("steps") += 1;
    acc("step_wall_seconds") += Seconds() - t_step;  // the step's wall time (its evaluation and checkpoint are after)
    acc("generate_seconds") += batch.generate_seconds;
    acc("generated_tokens") += static_cast<double>(batch.generated_tokens);
    acc("score_seconds") += batch.score_seconds;
    acc("scored_samples") += static_cast<double>(batch.generated_samples);
    acc("learn_seconds") += learn_seconds;
    acc("learned_samples") += static_cast<double>(batch.samples.size());
    const auto [expired, late] = count_lease_events();
    m["rollout/leases_expired"] = static_cast<double>(expired);
    m["rollout/late_refused"] = static_cast<double>(late);
    const auto t = coord.Totals();
    m["rollout/reward_mean"] = batch.rewarded > 0 ? batch.reward_sum / static_cast<double>(batch.rewarded) : 0.0;
    m["rollout/tokens_per_second"] = static_cast<double>(batch.generated_tokens) / std::max(batch.generate_seconds, 1e-9);
    m["rollout/filtered"] = static_cast<double>(batch.filtered);
    m["rollout/equal_reward_fraction"] =
        batch.scored_groups > 0 ? static_cast<double>(batch.equal_reward_groups) / static_cast<double>(batch.scored_groups) : 0.0;
    if (equal_alarm.Observe(version, batch.scored_groups, batch.equal_reward_groups, m["rollout/reward_mean"])) {
      extra["equal_reward_alarms"] = extra.value("equal_reward_alarms", int64_t{0}) + 1;
    }
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
    // 7. Evaluation every eval.every steps (the last step is evaluated after the loop).
    const bool done = coord.Done() || (o.steps > 0 && version >= o.steps);
    if (o.eval.every > 0 && version % o.eval.every == 0 && !done) {
      ASSIGN_OR_RETURN(auto ev, EvaluateToFile(pool, scorer, eval_prompts, o.eval, version, o.seed,
                                               eval_file(absl::StrCat("eval_step_", version))));
      m["eval/accuracy"] = ev["accuracy"].get<double>();
      m["eval/mean_reward"] = ev["mean_reward"].get<double>();
      if (!ev["pass_at_k"].is_null()) m["eval/pass_at_k"] = ev["pass_at_k"].get<double>();
    }
    if (hooks.log_step) hooks.log_step(version, m);
    if (version % o.log_every == 0 || coord.Done()) {
      std::string parts;  // the update's own figures, those this stage reports
      for (const char* k : {"pg_loss", "kl_ref", "clip_fraction", "entropy", "accuracy", "margin", "kept_fraction"}) {
        if (m.count(k)) parts += absl::StrFormat(" %s %.4f", k, m.at(k));
      }
      spdlog::info("{} step {}/~{}: reward {:.4f} loss {:.4f}{} | rollout {:.0f} tok/s, filtered {}, dropped {} | "
                   "trained {}/{} prompts of epoch {}",
                   stage, version, o.total_estimate, m["reward_mean"], m["loss"], parts, m["rollout/tokens_per_second"],
                   batch.filtered, batch.dropped, coord.Current().trained, coord.num_prompts(), coord.epoch());
    }
    // 8. Checkpoint: the learner's state with this loop's beside it.
    if ((o.save_every > 0 && version % o.save_every == 0) || done) {
      extra["ledger"] = coord.State();
      acc("wall_seconds") = wall_before + Seconds() - t_start;
      RETURN_IF_ERROR(learner.Checkpoint(version, extra.dump()));
      spdlog::info("checkpoint of step {} on the learner", version);
      hooks.after_checkpoint(version);
    }
    if (k == 0) source.Settled(version, /*counts=*/true);
  }
  // Batches generated ahead and not trained go back to the ledger (pending: a resumed run trains them).
  RETURN_IF_ERROR(source.Stop());
  // The end: the learner saves its models; evaluation of the final policy; summary.json.
  collective.reset();  // every member leaves the weight group before the learner ends its stage
  ASSIGN_OR_RETURN(auto model, learner.Finish());
  spdlog::info("{}: the learner saved {}", stage, model);
  ASSIGN_OR_RETURN(auto eval_after, EvaluateToFile(pool, scorer, eval_prompts, o.eval, step, o.seed, eval_file("eval_after")));
  count_lease_events();
  RETURN_IF_ERROR(coord.Check());
  const auto t = coord.Totals();
  const bool finished = coord.Done();
  const double wall = wall_before + Seconds() - t_start;
  auto rate = [&](const char* num, const char* den) { return acc(den) > 0 ? acc(num) / acc(den) : 0.0; };
  json summary = {
      {"stage", stage},
      {"steps", step},
      {"policy_version", step},
      {"epochs", o.coordinator.epochs},
      {"prompts_per_epoch", coord.num_prompts()},
      {"prompts_trained", t.trained},
      {"prompts_filtered", t.filtered},
      {"prompts_dropped", t.dropped},
      {"prompts_released", t.released},
      {"prompts_not_reached", finished ? 0 : t.pending},  // rl.steps stopped the run inside an epoch
      {"duplicates", t.duplicates},
      {"missing", t.leased + (finished ? t.pending : 0)},
      {"reasons", t.reasons},
      {"events", t.events},
      {"max_staleness", k},
      {"staleness", extra.value("staleness", json::object())},
      {"eval_before", extra["eval_before"]},
      {"learnability",
       {{"precheck", extra.value("precheck", json())}, {"equal_reward_alarms", extra.value("equal_reward_alarms", int64_t{0})}}},
      {"eval_after", eval_after},
      {"wall_seconds", wall},
      {"throughput",
       {{"rollout_tokens_per_second", rate("generated_tokens", "generate_seconds")},
        {"scorer_samples_per_second", rate("scored_samples", "score_seconds")},
        {"learner_samples_per_second", rate("learned_samples", "learn_seconds")},
        // Of the run as a whole (wall time of the steps, evaluations and checkpoints left out): what
        // overlapping generation with training (rl.max_staleness) gains.
        {"steps_per_minute", 60 * rate("steps", "step_wall_seconds")},
        {"rollout_tokens_per_wall_second", rate("generated_tokens", "step_wall_seconds")}}},
      {"roles",
       {{"rollout_workers", pool.size()},
        {"rollout", roles.embedded_rollout() ? "embedded" : "remote"},
        {"scorer", roles.embedded_scorer() ? "embedded" : "remote"},
        {"scorers", roles.scorer_channels().size()},
        {"learner", o.learner_label},
        {"learner_ranks", learner_ranks},
        {"weights", use_collective ? "collective" : "grpc"},
        {"rollout_workers_dropped", pool.dropped()},
        {"rollout_workers_rejoined", pool.rejoined()}}}};
  RETURN_IF_ERROR(WriteFileAtomic(o.summary_path, summary.dump(2) + "\n"));
  RETURN_IF_ERROR(write_processes());  // as the stage ends
  spdlog::info("{}: held-out accuracy {:.1f}% -> {:.1f}%; prompts trained {}, filtered {}, dropped {}, released {}; "
               "summary {}", stage, 100 * extra["eval_before"]["accuracy"].get<double>(),
               100 * eval_after["accuracy"].get<double>(), t.trained, t.filtered, t.dropped, t.released, o.summary_path);
  return model;
}

}  // namespace rlhf::coordinator
