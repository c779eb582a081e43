#include "services/coordinator/clients.h"

#include <future>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
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

double BackoffSeconds(const RetryPolicy& r, int64_t attempt) {
  return r.backoff_seconds * static_cast<double>(int64_t{1} << std::min<int64_t>(attempt, 10));
}

void Backoff(const RetryPolicy& r, int64_t attempt) {
  std::this_thread::sleep_for(std::chrono::duration<double>(BackoffSeconds(r, attempt)));
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
  overdue_.assign(stubs_.size(), 0);
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
                                                                  int64_t version, grpc::ClientContext* ctx) {
  GenerateRequest req;
  for (const auto& p : chunk) *req.add_prompts() = p;
  *req.mutable_params() = params;
  req.set_n(n);
  SetDeadline(ctx, rpc_);
  auto reader = stubs_[w]->Generate(ctx, req);
  std::map<int64_t, size_t> where;  // prompt_index -> position in chunk
  for (size_t i = 0; i < chunk.size(); ++i) where[chunk[i].prompt_index()] = i;
  std::vector<std::vector<Sample>> groups(chunk.size());
  GenerateResponse resp;
  while (reader->Read(&resp)) {
    for (auto& s : *resp.mutable_samples()) {
      auto it = where.find(s.prompt_index());
      if (it == where.end()) {
        ctx->TryCancel();
        return absl::InternalError(absl::StrCat("rollout worker sent a sample of prompt ", s.prompt_index(),
                                                ", which the request did not hold"));
      }
      s.set_rollout_worker(static_cast<int32_t>(w));
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

RolloutPool::~RolloutPool() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto& c : calls_) {
      if (c.ctx) c.ctx->TryCancel();
    }
    for (auto& c : calls_) threads.push_back(std::move(c.thread));
    calls_.clear();
  }
  for (auto& t : threads) t.join();
}

double RolloutPool::LeaseSeconds(size_t prompts) const {
  if (leases_.seconds > 0) return leases_.seconds;
  std::lock_guard<std::mutex> lock(members_mu_);
  if (seconds_per_prompt_ <= 0) return rpc_.deadline_seconds;  // nothing measured yet
  return std::min(rpc_.deadline_seconds, std::max(10.0, 8.0 * seconds_per_prompt_ * static_cast<double>(prompts)));
}

int64_t RolloutPool::leases_expired() const { return expired_.load(); }

bool RolloutPool::Overdue(size_t w) const {
  std::lock_guard<std::mutex> lock(members_mu_);
  return overdue_[w] > 0;
}
int64_t RolloutPool::late_results_refused() const { return late_refused_.load(); }

void RolloutPool::RefuseLate(size_t w) {
  late_refused_.fetch_add(1);
  Metrics::Process()
      .Counter("rlhf_late_results_refused_total", "results of expired rollout leases that came in after all, not used")
      .Increment();
  spdlog::warn("rollout worker {}: the result of an expired lease came in late: refused", w);
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
  {  // calls of earlier batches that have ended
    std::lock_guard<std::mutex> lock(calls_mu_);
    for (auto it = calls_.begin(); it != calls_.end();) {
      if (it->finished->load()) {
        it->thread.join();
        it = calls_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // The leases: runs of consecutive prompts, by default two per worker.
  const size_t per = leases_.prompts > 0 ? static_cast<size_t>(leases_.prompts)
                                         : std::max<size_t>(1, (prompts.size() + 2 * workers.size() - 1) / (2 * workers.size()));
  struct Lease {
    std::vector<size_t> idx;  // prompt positions
    int64_t attempts = 0;     // failed tries
    int64_t token = 0;        // bumped each time it is handed out or expires: a result must carry the current one
    bool done = false;
  };
  std::vector<Lease> leases;
  std::deque<size_t> queue;  // leases waiting for a worker, in order
  for (size_t lo = 0; lo < prompts.size(); lo += per) {
    Lease l;
    for (size_t i = lo; i < std::min(prompts.size(), lo + per); ++i) l.idx.push_back(i);
    queue.push_back(leases.size());
    leases.push_back(std::move(l));
  }
  // What the calls report; shared with their threads, which may outlive this call (a stopped worker's).
  struct Report {
    size_t lease, worker;
    int64_t token;
    absl::StatusOr<std::vector<std::vector<Sample>>> result;
    double seconds;
  };
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Report> reports;
    bool closed = false;  // Generate has returned: a result that comes now is late
  };
  auto shared = std::make_shared<Shared>();
  struct Running {
    size_t lease;
    int64_t token;
    double deadline;
    std::shared_ptr<std::atomic<bool>> expired;  // past the deadline (the call's thread sees it too)
  };
  std::map<size_t, Running> running;  // worker -> its lease in flight (one at a time per worker)
  std::map<size_t, double> rest_until;  // worker -> when it may take a lease again after a failure
  std::map<size_t, int64_t> failures;   // worker -> failed calls in a row (its rest doubles with each)
  auto& m_expired = Metrics::Process().Counter("rlhf_leases_expired_total",
                                               "rollout leases whose worker missed the deadline; handed to another worker");
  size_t left = leases.size();  // leases not done
  // A lease is done: with its samples (set by the caller), or with `error` for each of its prompts.
  auto settle = [&](Lease& lease, const absl::Status& error) {
    if (!error.ok()) {
      for (size_t i : lease.idx) out.errors[i] = error;
    }
    lease.done = true;
    --left;
  };
  // A lease goes back to the front of the queue, for the next idle worker.
  auto relet = [&](size_t l) {
    for (size_t i : leases[l].idx) ++out.relets[i];
    queue.push_front(l);
  };
  auto start = [&](size_t w, size_t l) {
    Lease& lease = leases[l];
    const int64_t token = ++lease.token;
    auto expired = std::make_shared<std::atomic<bool>>(false);
    running[w] = {l, token, Now() + LeaseSeconds(lease.idx.size()), expired};
    std::vector<Prompt> chunk;
    for (size_t i : lease.idx) chunk.push_back(prompts[i]);
    auto ctx = std::make_shared<grpc::ClientContext>();
    auto finished = std::make_shared<std::atomic<bool>>(false);
    std::lock_guard<std::mutex> lock(calls_mu_);
    calls_.push_back({ctx, finished, std::thread([this, shared, w, l, token, chunk = std::move(chunk), params, n,
                                                  version, ctx, finished, expired] {
      const double t = Now();
      auto r = Call(w, chunk, params, n, version, ctx.get());
      if (expired->load()) {  // the worker answers again: it may take leases
        std::lock_guard<std::mutex> m(members_mu_);
        --overdue_[w];
      }
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (!shared->closed) {
          shared->reports.push_back({l, w, token, std::move(r), Now() - t});
          shared->cv.notify_all();
        } else if (r.ok()) {
          RefuseLate(w);  // the batch is done
        }
      }
      finished->store(true);
    })});
  };
  size_t next_worker = 0;  // round robin over idle workers
  while (left > 0) {
    const double now = Now();
    // 1. Idle workers take the waiting leases.
    for (size_t k = 0; k < workers.size() && !queue.empty(); ++k) {
      const size_t w = workers[(next_worker + k) % workers.size()];
      if (running.count(w) || rest_until[w] > now || Overdue(w)) continue;
      start(w, queue.front());
      queue.pop_front();
    }
    next_worker = (next_worker + 1) % workers.size();
    // 2. Wait for a report, the next deadline, or a rested worker.
    double wake = now + 1.0;
    for (const auto& [w, r] : running) {
      if (!r.expired->load()) wake = std::min(wake, r.deadline);
    }
    for (const auto& [w, t] : rest_until) {
      if (t > now && !queue.empty()) wake = std::min(wake, t);
    }
    std::vector<Report> reports;
    {
      std::unique_lock<std::mutex> lock(shared->mu);
      shared->cv.wait_for(lock, std::chrono::duration<double>(std::max(0.0, wake - now) + 1e-3),
                          [&] { return !shared->reports.empty(); });
      reports.swap(shared->reports);
    }
    // 3. Results.
    for (auto& rep : reports) {
      running.erase(rep.worker);
      Lease& lease = leases[rep.lease];
      if (lease.done || lease.token != rep.token) {  // an expired lease, handed out again since
        if (rep.result.ok()) RefuseLate(rep.worker);
        continue;
      }
      failures[rep.worker] = rep.result.ok() ? 0 : failures[rep.worker] + 1;
      if (rep.result.ok()) {
        for (size_t j = 0; j < lease.idx.size(); ++j) out.groups[lease.idx[j]] = std::move((*rep.result)[j]);
        settle(lease, absl::OkStatus());
        std::lock_guard<std::mutex> m(members_mu_);
        const double spp = rep.seconds / static_cast<double>(lease.idx.size());
        seconds_per_prompt_ = seconds_per_prompt_ <= 0 ? spp : 0.8 * seconds_per_prompt_ + 0.2 * spp;
        continue;
      }
      absl::Status last = rep.result.status();
      const size_t w = rep.worker;
      ++lease.attempts;
      spdlog::warn("rollout worker {}: {} (try {}/{})", w, std::string(last.message()), lease.attempts, retry_.max_attempts);
      const bool behind = last.code() == absl::StatusCode::kAborted;
      if (behind && refresh_ && (publish_ || publish_all_)) {
        if (auto s = Refresh(w, version); !s.ok()) last = s;
      } else if (Retryable(last.code()) || behind) {
        rest_until[w] = Now() + BackoffSeconds(retry_, failures[w] - 1);
      } else if (lease.idx.size() > 1) {
        // A final error of several prompts: tried prompt by prompt, so that one bad prompt does not take its
        // neighbours with it.
        settle(lease, absl::OkStatus());
        for (size_t i : lease.idx) {
          Lease one;
          one.idx = {i};
          queue.push_front(leases.size());
          leases.push_back(std::move(one));
          ++left;
        }
        continue;
      } else {
        settle(lease, last);
        continue;
      }
      if (lease.attempts >= retry_.max_attempts) {
        settle(lease, last);
      } else {
        relet(rep.lease);  // another try, on the next idle worker
      }
    }
    // 4. Leases past their deadline go to another worker; the late worker gets no lease until it answers.
    const double after = Now();
    for (auto& [w, r] : running) {
      if (r.expired->load() || after < r.deadline) continue;
      {
        // No lease for this worker, in this call or another, until the overdue call ends.
        std::lock_guard<std::mutex> m(members_mu_);
        ++overdue_[w];
        r.expired->store(true);
      }
      Lease& lease = leases[r.lease];
      ++lease.token;  // its result, should it come, is refused
      relet(r.lease);
      expired_.fetch_add(1);
      m_expired.Increment();
      ++out.expired;
      spdlog::warn("rollout worker {}: its lease of {} prompt(s) missed the deadline ({:.1f} s); handed to another "
                   "worker", w, lease.idx.size(), LeaseSeconds(lease.idx.size()));
    }
  }
  {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->closed = true;
  }
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
