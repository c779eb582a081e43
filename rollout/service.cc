#include "rollout/service.h"

#include <spdlog/spdlog.h>
#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/model/checkpoint.h"
#include "common/text/model_text.h"
#include "common/text/tokenizer.h"
#include "rollout/weight_client.h"

namespace rlhf::rollout {

namespace {
size_t DTypeSize(DType d) {
  switch (d) {
    case DTYPE_F32: return 4;
    case DTYPE_BF16:
    case DTYPE_F16: return 2;
    default: return 0;
  }
}
torch::ScalarType TorchType(DType d) {
  switch (d) {
    case DTYPE_BF16: return torch::kBFloat16;
    case DTYPE_F16: return torch::kFloat16;
    default: return torch::kFloat32;
  }
}

// What a rollout worker exports (its process's /metrics): requests and their latency, tokens generated,
// prompts waiting for the model, and the KV cache in use.
struct WorkerMetrics {
  prometheus::Counter& requests;
  prometheus::Histogram& latency;
  prometheus::Counter& tokens;
  prometheus::Gauge& queue;
  prometheus::Gauge& sequences;
  prometheus::Gauge& cached;
  prometheus::Gauge& capacity;
  prometheus::Gauge& version;
  static WorkerMetrics& Get() {
    static WorkerMetrics* m = [] {
      auto& r = Metrics::Process();
      return new WorkerMetrics{
          r.Counter("rlhf_rollout_requests_total", "Generate calls answered by this rollout worker"),
          r.Histogram("rlhf_rollout_request_duration_seconds", "time of a Generate call, queueing included",
                      {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
          r.Counter("rlhf_rollout_generated_tokens_total", "completion tokens this rollout worker generated"),
          r.Gauge("rlhf_rollout_queue_prompts", "prompts received by this worker and not yet generating"),
          r.Gauge("rlhf_rollout_active_sequences", "sequences decoded together now"),
          r.Gauge("rlhf_rollout_kv_cache_tokens", "tokens the KV cache holds for the sequences decoded now"),
          r.Gauge("rlhf_rollout_kv_cache_capacity_tokens", "tokens the KV cache can hold (slots x capacity)"),
          r.Gauge("rlhf_policy_version", "weights version held by this process", {{"role", "rollout"}})};
    }();
    return *m;
  }
};

// Fault-injection seam of the fault tests: with RLHF_FAULT_STALL_GENERATE=<call>:<dir>[:<seconds>], this
// process's <call>-th Generate call (counted from 1) creates <dir>/generating-<call> and then stalls for
// <seconds> (default 60) before generating, so that a test can kill or stop the worker at a known point in
// the middle of a step.
void MaybeStallGenerate() {
  static std::atomic<int64_t> calls{0};
  const int64_t call = ++calls;
  const char* v = std::getenv("RLHF_FAULT_STALL_GENERATE");
  if (v == nullptr) return;
  const std::string spec = v;
  const auto colon = spec.find(':');
  int64_t which = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(spec.substr(0, colon), &which) || which != call) return;
  std::string dir = spec.substr(colon + 1);
  double seconds = 60;
  if (const auto second = dir.rfind(':'); second != std::string::npos) {
    if (!absl::SimpleAtod(dir.substr(second + 1), &seconds)) seconds = 60;
    dir = dir.substr(0, second);
  }
  const std::string mark = dir + "/generating-" + std::to_string(call);
  spdlog::warn("fault injection: Generate call {} stalls for {} s (marked {})", call, seconds, mark);
  std::ofstream(mark).put('\n');
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// Fault-injection seam of the lease tests and benchmark: RLHF_FAULT_SLOW_GENERATE=<factor> makes this
// worker `factor` times slower (after each group of prompts it waits factor - 1 times what the group took).
double SlowGenerateFactor() {
  static const double factor = [] {
    const char* v = std::getenv("RLHF_FAULT_SLOW_GENERATE");
    double f = 1;
    if (v == nullptr || !absl::SimpleAtod(v, &f) || f < 1) return 1.0;
    spdlog::warn("fault injection: this rollout worker is {}x slower", f);
    return f;
  }();
  return factor;
}

}  // namespace

RolloutService::RolloutService(model::TransformerImpl* model, const text::Tokenizer* tokenizer,
                               std::vector<int32_t> eos_ids, RolloutServiceOptions options, int64_t initial_version)
    : model_(model), tokenizer_(tokenizer), eos_(std::move(eos_ids)), options_(options), version_(initial_version) {
  for (const auto& p : model_->named_parameters(true)) params_[p.key()] = p.value();
  generator_ = std::make_unique<Generator>(model_, tokenizer_, eos_, options_.generator);
  if (options_.swap_between_tokens) {
    // Runs inside Generate, where the calling thread holds model_mu_.
    generator_->SetWeightsVersion([this] {
      SwapIfPending();
      return version_;
    });
  }
  auto& m = WorkerMetrics::Get();
  m.capacity.Set(static_cast<double>(generator_->capacity_tokens()));
  m.version.Set(static_cast<double>(initial_version));
  generator_->SetStepObserver([&m](int64_t sequences, int64_t cached) {
    m.sequences.Set(static_cast<double>(sequences));
    m.cached.Set(static_cast<double>(cached));
  });
  watcher_ = std::thread([this] { WatchStore(); });
}

RolloutService::~RolloutService() {
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    stopping_ = true;
  }
  watch_cv_.notify_all();
  watcher_.join();
}

void RolloutService::WatchStore() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, std::chrono::seconds(3), [this] { return stopping_; })) {
    std::unique_lock<std::mutex> weights(weight_mu_, std::try_to_lock);
    if (!weights.owns_lock() || !weight_group_) continue;  // a sync or a join runs: it has its own deadline
    if (comm::Store::Connect(store_host_, store_port_, 2.0).ok()) continue;
    spdlog::warn("rollout worker: the rendezvous store {}:{} of weight group generation {} is gone; leaving the group",
                 store_host_, store_port_, weight_group_->generation());
    weight_group_.reset();
  }
}

int64_t RolloutService::version() const {
  std::lock_guard<std::mutex> lock(model_mu_);
  return version_;
}

int64_t RolloutService::next_version() const {
  {
    std::lock_guard<std::mutex> lock(staged_mu_);
    if (pending_) return pending_->version;
  }
  return version();
}

absl::StatusOr<std::vector<PromptInput>> RolloutService::Prepare(const GenerateRequest& r) const {
  const auto& p = r.params();
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError(m); };
  if (r.prompts_size() == 0) return bad("no prompts");
  if (r.prompts_size() > options_.max_prompts) return bad(absl::StrCat("at most ", options_.max_prompts, " prompts per request"));
  if (r.n() < 1 || r.n() > options_.max_n) return bad(absl::StrCat("n must be in [1, ", options_.max_n, "]"));
  if (!(p.temperature() >= 0) || p.temperature() > 100) return bad("temperature must be in [0, 100]");
  if (p.top_k() < 0) return bad("top_k must be >= 0");
  if (!(p.top_p() > 0 && p.top_p() <= 1) && p.top_p() != 0) return bad("top_p must be in (0, 1] (0 = off)");
  if (!(p.min_p() >= 0 && p.min_p() <= 1)) return bad("min_p must be in [0, 1]");
  if (p.max_new_tokens() < 1 || p.max_new_tokens() > options_.max_new_tokens) {
    return bad(absl::StrCat("max_new_tokens must be in [1, ", options_.max_new_tokens, "]"));
  }
  const int64_t vocab = model_->config().vocab_size;
  std::vector<PromptInput> prompts;
  for (int i = 0; i < r.prompts_size(); ++i) {
    const auto& pr = r.prompts(i);
    if (pr.ids_size() == 0 && pr.text().empty()) return bad(absl::StrCat("prompt ", i, " has neither ids nor text"));
    if (pr.ids_size() == 0 && tokenizer_ == nullptr) return bad("this worker has no tokenizer: send token ids");
    for (int32_t id : pr.ids()) {
      if (id < 0 || id >= vocab) return bad(absl::StrCat("prompt ", i, ": token id ", id, " outside [0, ", vocab, ")"));
    }
    PromptInput in;
    in.prompt_id = pr.prompt_id().empty() ? std::to_string(pr.prompt_index()) : pr.prompt_id();
    in.prompt_index = i;  // position in this request; the client's index is restored from the request
    if (pr.ids_size() > 0) {
      in.ids.assign(pr.ids().begin(), pr.ids().end());
    } else {
      in.ids = tokenizer_->Encode(pr.text());
    }
    const int64_t len = static_cast<int64_t>(in.ids.size());
    if (len + 1 > options_.generator.capacity) {
      return bad(absl::StrCat("prompt ", i, " has ", len, " tokens; the context holds ", options_.generator.capacity));
    }
    prompts.push_back(std::move(in));
  }
  return prompts;
}

void RolloutService::Commit(std::unique_ptr<Staged> staged) {
  {
    std::lock_guard<std::mutex> lock(staged_mu_);
    pending_ = std::move(staged);
  }
  // Idle worker: apply now rather than at the next request.
  if (model_mu_.try_lock()) {
    SwapIfPending();
    model_mu_.unlock();
  }
}

absl::Status RolloutService::StageFromFolder(const std::string& dir, int64_t version) {
  model::LoadOptions load;
  load.dtype = model_->dtype();
  ASSIGN_OR_RETURN(auto loaded, model::LoadModel(dir, load));
  auto staged = std::make_unique<Staged>();
  staged->version = version;
  for (const auto& p : loaded->named_parameters(true)) {
    auto it = params_.find(p.key());
    if (it == params_.end() || !it->second.sizes().equals(p.value().sizes())) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor '", p.key(), "' does not fit the served model"));
    }
    staged->tensors[p.key()] = p.value().detach();
  }
  if (staged->tensors.size() != params_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": has ", staged->tensors.size(), " tensors, the served model ",
                                                   params_.size()));
  }
  Commit(std::move(staged));
  return absl::OkStatus();
}

void RolloutService::SwapIfPending() {
  std::unique_ptr<Staged> staged;
  {
    std::lock_guard<std::mutex> lock(staged_mu_);
    staged.swap(pending_);
  }
  if (!staged) return;
  torch::NoGradGuard ng;
  for (auto& [name, t] : staged->tensors) params_.at(name).copy_(t);
  version_ = staged->version;
  WorkerMetrics::Get().version.Set(static_cast<double>(version_));
}

grpc::Status RolloutService::Generate(grpc::ServerContext* ctx, const GenerateRequest* r,
                                      grpc::ServerWriter<GenerateResponse>* writer) {
  MaybeStallGenerate();
  auto& metrics = WorkerMetrics::Get();
  const auto t0 = std::chrono::steady_clock::now();
  metrics.requests.Increment();
  auto prepared = Prepare(*r);
  if (!prepared.ok()) return ToGrpc(prepared.status());
  const std::vector<PromptInput>& prompts = *prepared;
  // Prompts of this call not yet generating: counted down as each group takes the model.
  double waiting = static_cast<double>(prompts.size());
  metrics.queue.Increment(waiting);
  struct Done {
    WorkerMetrics& m;
    double& waiting;
    std::chrono::steady_clock::time_point t0;
    ~Done() {
      m.queue.Decrement(waiting);
      m.latency.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  } done_metrics{metrics, waiting, t0};
  SamplingParams sp;
  sp.temperature = r->params().temperature();
  sp.top_k = r->params().top_k();
  sp.top_p = r->params().top_p() > 0 ? r->params().top_p() : 1.0;
  sp.min_p = r->params().min_p();
  sp.max_new_tokens = r->params().max_new_tokens();
  sp.stop.assign(r->params().stop().begin(), r->params().stop().end());
  sp.seed = r->params().seed();
  // Groups of prompts that fill the slots; new weights may be swapped in between groups.
  const int64_t per_group = std::max<int64_t>(1, options_.generator.slots / r->n());
  for (size_t start = 0; start < prompts.size(); start += per_group) {
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    std::vector<PromptInput> group(prompts.begin() + start,
                                   prompts.begin() + std::min(prompts.size(), start + per_group));
    std::lock_guard<std::mutex> lock(model_mu_);
    const auto group_start = std::chrono::steady_clock::now();
    metrics.queue.Decrement(static_cast<double>(group.size()));
    waiting -= static_cast<double>(group.size());
    SwapIfPending();
    const int64_t version = version_;
    bool write_failed = false;
    auto done = generator_->Generate(group, r->n(), sp, [&](const Generated& g) {
      const auto& pr = r->prompts(static_cast<int>(g.prompt_index));
      GenerateResponse resp;
      rlhf::Sample* s = resp.add_samples();
      s->set_prompt_id(pr.prompt_id());
      s->set_prompt_index(pr.prompt_index());
      s->set_sample_index(static_cast<int32_t>(g.sample_index));
      for (int32_t id : prompts[g.prompt_index].ids) s->add_prompt_ids(id);
      for (int32_t id : g.completion_ids) s->add_completion_ids(id);
      metrics.tokens.Increment(static_cast<double>(g.completion_ids.size()));
      for (float lp : g.logprobs) s->add_logprobs(lp);
      s->set_policy_version(version);  // the oldest weights of the sample: those it started with
      for (int64_t v : g.token_versions) s->add_token_versions(v);
      s->set_finish_reason(g.stopped ? FINISH_REASON_STOP : FINISH_REASON_LENGTH);
      s->set_seed(g.seed);
      s->set_temperature(static_cast<float>(sp.temperature));
      s->set_prompt(pr.text());
      s->set_completion(g.completion);
      for (const auto& [k, v] : pr.extra()) (*s->mutable_extra())[k] = v;
      if (!write_failed && !writer->Write(resp)) write_failed = true;
      if (stream_hook_) stream_hook_(*s);
    });
    if (!done.ok()) return ToGrpc(done.status());
    if (const double slow = SlowGenerateFactor(); slow > 1) {
      const auto took = std::chrono::steady_clock::now() - group_start;
      std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::nanoseconds>(took * (slow - 1)));
    }
    if (write_failed) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  return grpc::Status::OK;
}

grpc::Status RolloutService::UpdateWeights(grpc::ServerContext*, grpc::ServerReader<WeightChunk>* reader,
                                           UpdateWeightsReply* reply) {
  struct Partial {
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
    int64_t filled = 0;
  };
  std::map<std::string, Partial> parts;
  WeightChunk c;
  int64_t version = -1, total = 0;
  bool committed = false;
  while (reader->Read(&c)) {
    if (committed) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "chunks after the commit chunk");
    version = c.version();
    if (!c.name().empty()) {
      auto it = params_.find(c.name());
      if (it == params_.end()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown tensor '" + c.name() + "'");
      }
      const size_t es = DTypeSize(c.dtype());
      if (es == 0) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tensor '" + c.name() + "': dtype must be F32, BF16 or F16");
      std::vector<int64_t> shape(c.shape().begin(), c.shape().end());
      std::vector<int64_t> want(it->second.sizes().begin(), it->second.sizes().end());
      if (shape != want) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tensor '" + c.name() + "': shape differs from the model's");
      }
      auto& p = parts[c.name()];
      if (p.bytes.empty()) {
        p.dtype = c.dtype();
        p.shape = shape;
        p.bytes.assign(static_cast<size_t>(it->second.numel()) * es, '\0');
      }
      if (c.offset() < 0 || static_cast<size_t>(c.offset()) + c.data().size() > p.bytes.size()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tensor '" + c.name() + "': chunk outside the tensor");
      }
      std::memcpy(p.bytes.data() + c.offset(), c.data().data(), c.data().size());
      p.filled += static_cast<int64_t>(c.data().size());
      total += static_cast<int64_t>(c.data().size());
    }
    committed = c.commit();
  }
  if (!committed) return grpc::Status(grpc::StatusCode::ABORTED, "stream ended without a commit chunk: nothing applied");
  if (parts.size() != params_.size()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("the update names ", parts.size(), " of the model's ", params_.size(),
                                     " tensors: nothing applied"));
  }
  auto staged = std::make_unique<Staged>();
  staged->version = version;
  for (auto& [name, p] : parts) {
    if (p.filled != static_cast<int64_t>(p.bytes.size())) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "tensor '" + name + "' is incomplete: nothing applied");
    }
    auto t = torch::from_blob(p.bytes.data(), p.shape, torch::TensorOptions().dtype(TorchType(p.dtype)));
    staged->tensors[name] = t.to(params_.at(name).scalar_type()).clone();
  }
  Commit(std::move(staged));
  reply->set_version(version);
  reply->set_tensors(static_cast<int64_t>(parts.size()));
  reply->set_bytes(total);
  return grpc::Status::OK;
}

grpc::Status RolloutService::JoinWeightGroup(grpc::ServerContext* ctx, const WeightGroupSpec* spec,
                                             WeightGroupReply* reply) {
  if (auto ok = CheckWeightGroupSpec(*spec); !ok.ok()) return ToGrpc(ok);
  if (spec->rank() < 1 || spec->rank() >= spec->size()) {
    return ToGrpc(absl::InvalidArgumentError("a rollout worker is rank 1..size-1 of a weight group (0 is the learner)"));
  }
  std::lock_guard<std::mutex> lock(weight_mu_);
  weight_group_.reset();  // the previous generation is over, whatever this one becomes
  comm::NamedTensors named(params_.begin(), params_.end());
  auto g = rollout::JoinWeightGroup(*spec, named, SecondsLeft(*ctx));
  if (!g.ok()) return ToGrpc(g.status());
  weight_group_ = std::move(*g);
  store_host_ = spec->store_host();
  store_port_ = spec->store_port();
  weight_floor_ = 0;  // a new group (a new run, or the same run re-formed) may start at any version
  if (bucket_hook_) weight_group_->SetBucketHookForTesting(bucket_hook_);
  reply->set_generation(weight_group_->generation());
  reply->set_wire_dtype(ProtoDType(weight_group_->wire_dtype()));
  return grpc::Status::OK;
}

grpc::Status RolloutService::ReceiveWeights(grpc::ServerContext*, const WeightSyncRequest* request,
                                            UpdateWeightsReply* reply) {
  std::lock_guard<std::mutex> lock(weight_mu_);
  if (!weight_group_ || weight_group_->generation() != request->generation()) {
    return ToGrpc(absl::FailedPreconditionError(absl::StrCat(
        "this rollout worker is not in weight group generation ", request->generation(),
        weight_group_ ? absl::StrCat(" (it is in ", weight_group_->generation(), ")") : std::string(" (in none)"))));
  }
  bool reuse = false;  // the previous sync's buffers are free once its update has been swapped in
  {
    std::lock_guard<std::mutex> staged(staged_mu_);
    reuse = pending_ == nullptr;
  }
  auto r = weight_group_->Receive(weight_floor_, reuse);
  if (!r.ok()) {
    if (r.status().code() != absl::StatusCode::kAborted) weight_group_.reset();  // out of step: re-formed next
    return ToGrpc(r.status());
  }
  if (r->stats.version != request->version()) {
    return ToGrpc(absl::DataLossError(absl::StrCat("the weight group sent version ", r->stats.version,
                                                   ", the coordinator announced ", request->version())));
  }
  weight_floor_ = r->stats.version;
  auto staged = std::make_unique<Staged>();
  staged->version = r->stats.version;
  staged->tensors = std::move(r->tensors);
  Commit(std::move(staged));
  reply->set_version(r->stats.version);
  reply->set_tensors(r->stats.tensors);
  reply->set_bytes(r->stats.bytes);
  return grpc::Status::OK;
}

grpc::Status RolloutService::LeaveWeightGroup(grpc::ServerContext*, const WeightSyncRequest* request,
                                              UpdateWeightsReply* reply) {
  std::lock_guard<std::mutex> lock(weight_mu_);
  if (weight_group_ && weight_group_->generation() == request->generation()) weight_group_.reset();
  reply->set_version(next_version());
  return grpc::Status::OK;
}

const config::Section<RolloutServerConfig>& RolloutServerConfig::Spec() {
  static const auto* s = [] {
    using S = RolloutServerConfig;
    auto* s = new config::Section<S>("rollout");
    s->Add("model", &S::model, "model folder to serve (serve rollout; rlhf train serves its policy)");
    s->Add("address", &S::address, "host:port of the gRPC server (rlhf serve rollout); loopback by default: another host needs TLS and a token (rpc.*) or rpc.insecure");
    s->Add("slots", &S::slots, "sequences decoded together", config::AtLeast(1));
    s->Add("capacity", &S::capacity, "KV cache length per sequence (prompt + completion)", config::AtLeast(2));
    s->Add("max_new_tokens", &S::max_new_tokens, "the most new tokens a request may ask for", config::AtLeast(1));
    s->Add("dtype", &S::dtype, "compute dtype: \"\" = the checkpoint's, float32, bfloat16",
           config::OneOf({"", "float32", "bfloat16", "f32", "bf16"}));
    s->Add("swap_between_tokens", &S::swap_between_tokens,
           "interruptible generation: new weights go into the model between decode steps of a long generation "
           "(the sequences keep their KV cache), and each sample records the version of every token "
           "(token_versions; its policy_version is the oldest); false = only between groups of prompts");
    return s;
  }();
  return *s;
}

absl::StatusOr<std::unique_ptr<ServedRollout>> LoadRolloutService(const RolloutServerConfig& config,
                                                                  const std::string& model_dir,
                                                                  int64_t initial_version) {
  auto out = std::make_unique<ServedRollout>();
  ASSIGN_OR_RETURN(auto load, model::LoadOptionsForDtype(config.dtype));
  ASSIGN_OR_RETURN(out->model, model::LoadModel(model_dir, load));
  // A completion ends at the model folder's stop ids (text::ModelText: config.json's and
  // generation_config.json's eos ids, and the chat template's end-of-turn token), as in `rlhf generate`;
  // config.json's alone where the folder has no tokenizer.
  const auto& ids = out->model->config().eos_token_ids;
  std::vector<int32_t> eos(ids.begin(), ids.end());
  if (auto t = text::ModelText::Load(model_dir); t.ok()) {
    eos = t->stop_ids;
    out->tokenizer = std::make_unique<text::Tokenizer>(std::move(t->tokenizer));
  }
  RolloutServiceOptions opts;
  opts.generator = {config.slots, config.capacity, true};
  opts.max_new_tokens = config.max_new_tokens;
  opts.swap_between_tokens = config.swap_between_tokens;
  out->service = std::make_unique<RolloutService>(out->model.get(), out->tokenizer.get(), eos, opts, initial_version);
  return out;
}

}  // namespace rlhf::rollout
