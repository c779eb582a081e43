#include "services/coordinator/clients.h"

#include <future>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/metrics.h"

namespace rlhf::coordinator {

namespace {
double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void Backoff(const RetryPolicy& r, int64_t attempt) {
  const double s = r.backoff_seconds * static_cast<double>(int64_t{1} << std::min<int64_t>(attempt, 10));
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

bool Retryable(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kResourceExhausted ||
         code == absl::StatusCode::kDeadlineExceeded;
}

// ---- rollout ------------------------------------------------------------------------------------------------
RolloutPool::RolloutPool(std::vector<std::shared_ptr<grpc::Channel>> channels, RpcConfig rpc, RetryPolicy retry,
                         Publisher publish)
    : channels_(std::move(channels)), rpc_(rpc), retry_(retry), publish_(std::move(publish)) {
  for (const auto& c : channels_) {
    stubs_.push_back(Rollout::NewStub(c));
    push_mu_.push_back(std::make_unique<std::mutex>());
  }
  active_.assign(stubs_.size(), true);
}

std::vector<size_t> RolloutPool::active() const {
  std::lock_guard<std::mutex> lock(members_mu_);
  std::vector<size_t> out;
  for (size_t w = 0; w < active_.size(); ++w) {
    if (active_[w]) out.push_back(w);
  }
  return out;
}

int64_t RolloutPool::dropped() const {
  std::lock_guard<std::mutex> lock(members_mu_);
  return dropped_;
}

int64_t RolloutPool::rejoined() const {
  std::lock_guard<std::mutex> lock(members_mu_);
  return rejoined_;
}

absl::Status RolloutPool::Probe(size_t w, double seconds, bool wait_for_ready) const {
  return CheckHealth(channels_[w], rpc_, wait_for_ready, seconds).status();
}

std::vector<absl::Status> RolloutPool::ProbeAll(const std::vector<size_t>& workers, double seconds,
                                                bool reconnect_now) const {
  std::vector<std::future<absl::Status>> asked;
  for (size_t w : workers) {
    asked.push_back(std::async(std::launch::async, [this, w, seconds, reconnect_now] {
      if (reconnect_now) grpc::experimental::ChannelResetConnectionBackoff(channels_[w].get());
      return Probe(w, seconds, /*wait_for_ready=*/reconnect_now);
    }));
  }
  std::vector<absl::Status> out;
  for (auto& a : asked) out.push_back(a.get());
  return out;
}

absl::Status RolloutPool::Refresh(size_t w, int64_t version) {
  if (publish_all_) {
    // The whole group syncs, through the membership (a failure drops the workers that do not answer).
    std::lock_guard<std::mutex> lock(group_mu_);
    if (auto h = CheckHealth(channels_[w], rpc_); h.ok() && h->policy_version == version) return absl::OkStatus();
    return SyncGroupLocked(version, /*force=*/true);
  }
  std::lock_guard<std::mutex> lock(*push_mu_[w]);
  if (auto h = CheckHealth(channels_[w], rpc_); h.ok() && h->policy_version == version) return absl::OkStatus();
  return publish_(stubs_[w].get(), version);
}

absl::StatusOr<std::vector<std::vector<Sample>>> RolloutPool::Call(size_t w, const std::vector<Prompt>& chunk,
                                                                  const SamplingParams& params, int32_t n,
                                                                  int64_t version) {
  GenerateRequest req;
  for (const auto& p : chunk) *req.add_prompts() = p;
  *req.mutable_params() = params;
  req.set_n(n);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, rpc_);
  auto reader = stubs_[w]->Generate(&ctx, req);
  std::map<int64_t, size_t> where;  // prompt_index -> position in chunk
  for (size_t i = 0; i < chunk.size(); ++i) where[chunk[i].prompt_index()] = i;
  std::vector<std::vector<Sample>> groups(chunk.size());
  GenerateResponse resp;
  while (reader->Read(&resp)) {
    for (auto& s : *resp.mutable_samples()) {
      auto it = where.find(s.prompt_index());
      if (it == where.end()) {
        ctx.TryCancel();
        return absl::InternalError(absl::StrCat("rollout worker sent a sample of prompt ", s.prompt_index(),
                                                ", which the request did not hold"));
      }
      groups[it->second].push_back(std::move(s));
    }
  }
  RETURN_IF_ERROR(FromGrpc(reader->Finish()));
  for (size_t i = 0; i < chunk.size(); ++i) {
    auto& g = groups[i];
    std::sort(g.begin(), g.end(), [](const Sample& a, const Sample& b) { return a.sample_index() < b.sample_index(); });
    bool whole = static_cast<int32_t>(g.size()) == n;
    for (size_t j = 0; whole && j < g.size(); ++j) whole = g[j].sample_index() == static_cast<int32_t>(j);
    if (!whole) {
      return absl::InternalError(absl::StrCat("rollout worker returned ", g.size(), " samples for prompt ",
                                              chunk[i].prompt_index(), ", not samples 0..", n - 1));
    }
    for (const auto& s : g) {
      if (s.policy_version() < version) {
        return absl::AbortedError(absl::StrCat("rollout worker generated with policy version ", s.policy_version(),
                                               ", the step needs ", version, " or newer"));
      }
    }
  }
  return groups;
}

RolloutPool::Result RolloutPool::Generate(const std::vector<Prompt>& prompts, const SamplingParams& params, int32_t n,
                                          int64_t version) {
  const double t0 = Now();
  Result out;
  out.groups.resize(prompts.size());
  out.errors.assign(prompts.size(), absl::OkStatus());
  out.relets.assign(prompts.size(), 0);
  const std::vector<size_t> workers = active();
  if (prompts.empty() || workers.empty()) {
    if (stubs_.empty()) out.errors.assign(prompts.size(), absl::FailedPreconditionError("no rollout workers"));
    else if (workers.empty()) out.errors.assign(prompts.size(), absl::UnavailableError("no rollout worker is left"));
    return out;
  }
  auto next_worker = [&workers](size_t w) {  // the active worker after w
    auto it = std::upper_bound(workers.begin(), workers.end(), w);
    return it == workers.end() ? workers.front() : *it;
  };
  // One task = a list of prompt positions tried together; a non-retryable failure of several prompts is
  // retried prompt by prompt, so that one bad prompt does not take its neighbours with it.
  std::function<void(std::vector<size_t>, size_t)> run = [&](std::vector<size_t> idx, size_t w) {
    std::vector<Prompt> chunk;
    for (size_t i : idx) chunk.push_back(prompts[i]);
    absl::Status last;
    for (int64_t attempt = 0; attempt < retry_.max_attempts; ++attempt) {
      if (attempt > 0) {
        for (size_t i : idx) ++out.relets[i];
      }
      auto r = Call(w, chunk, params, n, version);
      if (r.ok()) {
        for (size_t j = 0; j < idx.size(); ++j) out.groups[idx[j]] = std::move((*r)[j]);
        return;
      }
      last = r.status();
      spdlog::warn("rollout worker {}: {} (try {}/{})", w, std::string(last.message()), attempt + 1, retry_.max_attempts);
      const bool behind = last.code() == absl::StatusCode::kAborted;
      if (behind && refresh_ && (publish_ || publish_all_)) {
        if (auto s = Refresh(w, version); !s.ok()) last = s;
        continue;
      }
      if (!Retryable(last.code()) && !behind) break;
      Backoff(retry_, attempt);
      w = next_worker(w);  // another worker, when there is one
    }
    if (idx.size() > 1 && !Retryable(last.code()) && last.code() != absl::StatusCode::kAborted) {
      for (size_t i : idx) run({i}, w);
      return;
    }
    for (size_t i : idx) out.errors[i] = last;
  };
  // Contiguous chunks, one per active worker, in parallel.
  const size_t chunks = std::min(workers.size(), prompts.size());
  std::vector<std::thread> threads;
  for (size_t c = 0; c < chunks; ++c) {
    const size_t lo = prompts.size() * c / chunks, hi = prompts.size() * (c + 1) / chunks;
    std::vector<size_t> idx;
    for (size_t i = lo; i < hi; ++i) idx.push_back(i);
    threads.emplace_back(run, std::move(idx), workers[c]);
  }
  for (auto& t : threads) t.join();
  for (const auto& g : out.groups) {
    for (const auto& s : g) out.tokens += s.completion_ids_size();
  }
  out.seconds = Now() - t0;
  return out;
}

absl::Status RolloutPool::SyncGroupLocked(int64_t version, bool force) {
  auto set_active = [this](size_t w, bool on) {
    std::lock_guard<std::mutex> m(members_mu_);
    active_[w] = on;
    ++(on ? rejoined_ : dropped_);
  };
  // A dropped worker that answers again rejoins: it takes this version with the others. The probes run at
  // once, each after its channel's reconnect backoff is reset, so a worker that is back is seen now and one
  // that is still down costs this sync at most half a second.
  std::vector<size_t> dropped;
  {
    std::lock_guard<std::mutex> m(members_mu_);
    for (size_t w = 0; w < stubs_.size(); ++w) {
      if (!active_[w]) dropped.push_back(w);
    }
  }
  const auto back = ProbeAll(dropped, 0.5, /*reconnect_now=*/true);
  for (size_t i = 0; i < dropped.size(); ++i) {
    if (!back[i].ok()) continue;
    spdlog::info("rollout worker {} answers again: it rejoins the weight group at version {}", dropped[i], version);
    set_active(dropped[i], true);
  }
  std::vector<size_t> members = active();
  if (members.empty()) return absl::UnavailableError("no rollout worker is left");
  // A worker that lost its weights since (restarted at the same address) answers Generate with another
  // version, and is brought back by Refresh.
  if (!force && members == synced_members_ && synced_version_ == version) return absl::OkStatus();
  absl::Status s = publish_all_(version, members);
  if (s.ok()) {
    synced_members_ = members;
    synced_version_ = version;
    return s;
  }
  // Which members are lost: those that do not answer now. When all answer, the failure is elsewhere (the
  // learner, a model that does not fit) and is the caller's.
  // All are asked at once, for a second (a live worker answers Health in milliseconds, from threads of its
  // own): a stopped or dead worker is dropped that long after the sync's deadline.
  std::vector<size_t> lost;
  const auto answers = ProbeAll(members, 1, /*reconnect_now=*/false);
  for (size_t i = 0; i < members.size(); ++i) {
    if (answers[i].ok()) continue;
    const size_t w = members[i];
    spdlog::warn("rollout worker {} dropped: the weight sync of version {} failed and it does not answer ({}); "
                 "the run goes on with the others", w, version, std::string(answers[i].message()));
    set_active(w, false);
    lost.push_back(w);
  }
  if (lost.empty()) return s;
  Metrics::Process()
      .Counter("rlhf_rollout_workers_dropped_total", "rollout workers dropped after a failed weight sync")
      .Increment(static_cast<double>(lost.size()));
  members = active();
  if (members.empty()) return absl::Status(s.code(), absl::StrCat("no rollout worker is left: ", s.message()));
  s = publish_all_(version, members);  // the next generation, without them
  if (s.ok()) {
    synced_members_ = members;
    synced_version_ = version;
  }
  return s;
}

absl::Status RolloutPool::Sync(int64_t version, bool force) {
  if (publish_all_) {
    std::lock_guard<std::mutex> lock(group_mu_);
    return SyncGroupLocked(version, force);
  }
  for (size_t w = 0; w < stubs_.size(); ++w) {
    absl::Status last;
    for (int64_t attempt = 0; attempt < retry_.max_attempts; ++attempt) {
      if (attempt > 0) Backoff(retry_, attempt - 1);
      auto h = CheckHealth(channels_[w], rpc_);
      if (!h.ok()) {
        last = h.status();
        continue;
      }
      if (h->policy_version == version && !force) {
        last = absl::OkStatus();
        break;
      }
      if (!publish_) return absl::FailedPreconditionError("rollout pool: no weight publisher");
      std::lock_guard<std::mutex> lock(*push_mu_[w]);
      last = publish_(stubs_[w].get(), version);
      if (last.ok() || !Retryable(last.code())) break;
    }
    if (!last.ok()) return absl::Status(last.code(), absl::StrCat("rollout worker ", w, ": ", last.message()));
  }
  return absl::OkStatus();
}

// ---- scoring ------------------------------------------------------------------------------------------------
ScorerClient::ScorerClient(std::shared_ptr<grpc::Channel> channel, RpcConfig rpc, RetryPolicy retry,
                           int64_t max_request_samples)
    : ScorerClient(std::vector<std::shared_ptr<grpc::Channel>>{std::move(channel)}, rpc, retry, max_request_samples) {}

ScorerClient::ScorerClient(std::vector<std::shared_ptr<grpc::Channel>> channels, RpcConfig rpc, RetryPolicy retry,
                           int64_t max_request_samples)
    : rpc_(rpc), retry_(retry), max_request_samples_(std::max<int64_t>(1, max_request_samples)),
      failed_at_(std::make_unique<std::atomic<double>[]>(channels.size())) {
  for (size_t r = 0; r < channels.size(); ++r) {
    stubs_.push_back(Scorer::NewStub(channels[r]));  // the stub keeps its channel
    failed_at_[r].store(-1e9);
  }
}

absl::Status ScorerClient::ScoreChunk(size_t first, const ScoreRequest& req, ScoreReply* reply) {
  const size_t n = stubs_.size();
  // Start at `first`, passing over a replica that failed within the last 2 s while another may answer.
  size_t at = first % n;
  for (size_t k = 0; k < n && Now() - failed_at_[at].load() < 2.0; ++k) at = (at + 1) % n;
  absl::Status last;
  for (int64_t attempt = 0; attempt < retry_.max_attempts; ++attempt) {
    // A failure moves to the next replica at once; once every replica has failed, the backoff applies.
    if (attempt >= static_cast<int64_t>(n)) Backoff(retry_, attempt - static_cast<int64_t>(n));
    grpc::ClientContext ctx;
    SetDeadline(&ctx, rpc_);
    reply->Clear();
    last = FromGrpc(stubs_[at]->Score(&ctx, req, reply));
    if (last.ok() && reply->results_size() != req.samples_size()) {
      last = absl::InternalError(absl::StrCat("scorer answered ", reply->results_size(), " results for ",
                                              req.samples_size(), " samples"));
    }
    if (last.ok() || !Retryable(last.code())) return last;
    failed_at_[at].store(Now());
    const size_t next = (at + 1) % n;
    if (n > 1) {
      spdlog::warn("scorer replica {}: {} (try {}/{}); failing over to replica {}", at, std::string(last.message()),
                   attempt + 1, retry_.max_attempts, next);
      Metrics::Process()
          .Counter("rlhf_scorer_failovers_total", "scoring calls moved to another scorer replica after a failure")
          .Increment();
    } else {
      spdlog::warn("scorer: {} (try {}/{})", std::string(last.message()), attempt + 1, retry_.max_attempts);
    }
    at = next;
  }
  return last;
}

ScorerClient::Result ScorerClient::Score(std::vector<Sample> samples, bool want_ref) {
  const double t0 = Now();
  Result out;
  out.errors.assign(samples.size(), absl::OkStatus());
  // Chunks of whole prompt groups, up to the limit (a single group larger than it is cut).
  std::vector<std::pair<size_t, size_t>> chunks;
  size_t begin = 0;
  while (begin < samples.size()) {
    size_t end = begin;
    while (end < samples.size()) {
      size_t g = end + 1;
      while (g < samples.size() && samples[g].prompt_id() == samples[end].prompt_id()) ++g;
      if (end > begin && static_cast<int64_t>(g - begin) > max_request_samples_) break;
      end = std::min(g, begin + static_cast<size_t>(max_request_samples_));
      if (static_cast<int64_t>(end - begin) >= max_request_samples_) break;
    }
    chunks.emplace_back(begin, end);
    begin = end;
  }
  // One lane per replica: lane r scores chunks r, r + R, ... starting at replica start + r (balanced, and
  // across calls too: `start` moves on by the chunks of each call; a failed call moves to the next replica).
  const size_t start = rotation_.fetch_add(chunks.size());
  auto lane = [&](size_t r) {
    for (size_t c = r; c < chunks.size(); c += stubs_.size()) {
      const auto [b, e] = chunks[c];
      ScoreRequest req;
      for (size_t i = b; i < e; ++i) *req.add_samples() = samples[i];
      req.set_want_ref_logprobs(want_ref);
      ScoreReply reply;
      const absl::Status last = ScoreChunk(start + r, req, &reply);
      for (size_t i = b; i < e; ++i) {
        if (!last.ok()) {
          out.errors[i] = last;
          continue;
        }
        auto& res = *reply.mutable_results(static_cast<int>(i - b));
        if (res.has_error() && res.error().code() != 0) {
          out.errors[i] = absl::Status(static_cast<absl::StatusCode>(res.error().code()), res.error().message());
        } else if (!res.sample().has_reward()) {
          out.errors[i] = absl::InternalError("scorer returned a sample without a reward and without an error");
        } else {
          samples[i] = std::move(*res.mutable_sample());
        }
      }
    }
  };
  const size_t lanes = std::min(stubs_.size(), chunks.size());
  if (lanes <= 1) {
    lane(0);
  } else {
    std::vector<std::future<void>> running;
    for (size_t r = 0; r < lanes; ++r) running.push_back(std::async(std::launch::async, lane, r));
    for (auto& f : running) f.get();
  }
  out.samples = std::move(samples);
  out.seconds = Now() - t0;
  return out;
}

}  // namespace rlhf::coordinator
