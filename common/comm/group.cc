#include "common/comm/group.h"

#include <mpi.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef RLHF_WITH_CUDA
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <functional>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/net.h"

namespace rlhf::comm {

const config::Section<DistConfig>& DistConfig::Spec() {
  static const auto* s = [] {
    using D = DistConfig;
    auto* s = new config::Section<D>("dist");
    s->Add("bootstrap", &D::bootstrap,
           "how ranks find each other: auto (env vars, else mpirun's, else one process) | env | mpi | single",
           config::OneOf({"auto", "env", "mpi", "single"}));
    s->Add("backend", &D::backend, "collectives: auto (nccl with CUDA builds, else gloo) | gloo | nccl",
           config::OneOf({"auto", "gloo", "nccl"}));
    s->Add("master_addr", &D::master_addr, "rendezvous host; \"\" = MASTER_ADDR, else (mpirun) rank 0's hostname");
    s->Add("master_port", &D::master_port, "rendezvous port; 0 = MASTER_PORT, else (mpirun) a free port of rank 0",
           config::InRange(0, 65535));
    s->Add("interface_addr", &D::interface_addr,
           "address this rank's Gloo transport binds; \"\" = loopback when the master is loopback, else the hostname's");
    s->Add("timeout_seconds", &D::timeout_seconds, "a collective or the rendezvous longer than this fails",
           config::AtLeast(1));
    s->Add("bucket_bytes", &D::bucket_bytes, "gradients are all-reduced in flattened buckets of about this size",
           config::AtLeast(1024));
    return s;
  }();
  return *s;
}

namespace {

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

absl::StatusOr<int> EnvInt(const char* name) {
  int v = 0;
  if (!absl::SimpleAtoi(Env(name), &v)) return absl::InvalidArgumentError(absl::StrCat(name, " is not an integer"));
  return v;
}

bool UnderMpirun() { return Env("OMPI_COMM_WORLD_SIZE") || Env("PMI_SIZE") || Env("PMIX_RANK"); }


std::string Hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "127.0.0.1";
  addrinfo* res = nullptr;
  if (getaddrinfo(buf, nullptr, nullptr, &res) != 0) return "127.0.0.1";  // does not resolve: one machine
  freeaddrinfo(res);
  return buf;
}

class SingleGroup : public Group {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "none"; }
  absl::Status AllReduceSum(std::vector<torch::Tensor>&) override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<Work>> BroadcastAsync(std::vector<torch::Tensor>&, int) override {
    return std::unique_ptr<Work>(std::make_unique<DoneWork>());
  }
  absl::Status Barrier() override { return absl::OkStatus(); }

 private:
  struct DoneWork : Work {
    absl::Status Wait() override { return absl::OkStatus(); }
  };
};

// A c10d exception as a Status: a timeout is DEADLINE_EXCEEDED, anything else UNAVAILABLE (a peer died).
absl::Status CollectiveError(const char* what, const std::exception& e) {
  std::string msg = e.what();
  msg = msg.substr(0, msg.find('\n'));  // c10 appends a stack trace
  if (msg.size() > 400) msg = msg.substr(0, 400);
  if (msg.find("imed out") != std::string::npos || msg.find("imeout") != std::string::npos) {
    return absl::DeadlineExceededError(absl::StrCat(what, " timed out: ", msg));
  }
  return absl::UnavailableError(absl::StrCat(what, " failed (a peer may have died): ", msg));
}

class TcpStore : public Store {
 public:
  TcpStore(c10::intrusive_ptr<c10d::TCPStore> store, std::string host)
      : store_(std::move(store)), host_(std::move(host)) {}
  std::string host() const override { return host_; }
  int port() const override { return store_->getPort(); }
  absl::Status Set(const std::string& key, const std::string& value) override {
    return GuardExceptions("store set", [&]() -> absl::Status {
      store_->set(key, std::vector<uint8_t>(value.begin(), value.end()));
      return absl::OkStatus();
    });
  }
  absl::StatusOr<std::string> Get(const std::string& key) override {
    std::string out;
    RETURN_IF_ERROR(Call("store get", [&] {
      auto v = store_->get(key);
      out.assign(v.begin(), v.end());
    }));
    return out;
  }
  absl::StatusOr<bool> Has(const std::string& key) override {
    bool has = false;
    RETURN_IF_ERROR(Call("store check", [&] { has = store_->check({key}); }));
    return has;
  }
  c10::intrusive_ptr<c10d::Store> raw() const { return store_; }

 private:
  // `fn` on the store: a failure (the store gone, a timeout) as CollectiveError says it.
  static absl::Status Call(const char* what, const std::function<void()>& fn) {
    return GuardExceptions(what, [&]() -> absl::Status {
      try {
        fn();
      } catch (const std::exception& e) {
        return CollectiveError(what, e);
      }
      return absl::OkStatus();
    });
  }
  c10::intrusive_ptr<c10d::TCPStore> store_;
  std::string host_;
};

absl::StatusOr<std::shared_ptr<Store>> OpenStore(const std::string& host, int port, bool server, double timeout_seconds) {
  std::shared_ptr<Store> out;
  auto st = GuardExceptions(server ? "rendezvous store" : "rendezvous store connect", [&]() -> absl::Status {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = server;
    o.waitWorkers = false;
    o.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
    try {
      out = std::make_shared<TcpStore>(c10::make_intrusive<c10d::TCPStore>(host, o), host);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("rendezvous store at ", host, ":", port, ": ", e.what()));
    }
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(st);
  return out;
}

// Who is stuck when a collective fails. Every member of a watched group writes a heartbeat to the group's
// store once a second from its own thread and connection: a counter, the number of collectives it has
// entered, its host and pid. When a collective times out or a peer fails, the member reads every heartbeat
// twice, two seconds apart, and names in its error the ranks whose heartbeat stood still (stopped with
// SIGSTOP, dead, or cut off) and the live ranks that have not reached this collective (hung elsewhere).
class Watch {
 public:
  static std::shared_ptr<Watch> Start(const std::string& host, int port, const std::string& prefix, int rank, int size,
                                      double timeout_seconds) {
    auto store = OpenStore(host, port, false, std::min(timeout_seconds, 30.0));
    if (!store.ok()) {
      spdlog::warn("group heartbeat off: {}", std::string(store.status().message()));
      return nullptr;
    }
    auto w = std::shared_ptr<Watch>(new Watch(*store, prefix, rank, size));
    w->Send(0);  // the first beat before the group is used
    w->thread_ = std::thread([raw = w.get()] { raw->Beat(); });
    return w;
  }
  ~Watch() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void Entered() { entered_.fetch_add(1); }
  // `status` with the ranks that hold the collective up, when it is a timeout or a failed peer.
  absl::Status Explain(absl::Status status) {
    if (status.code() != absl::StatusCode::kDeadlineExceeded && status.code() != absl::StatusCode::kUnavailable) {
      return status;
    }
    auto first = ReadAll();
    std::this_thread::sleep_for(std::chrono::seconds(2));  // this rank's own heartbeat goes on meanwhile
    auto second = ReadAll();
    if (!first.ok() || !second.ok()) {
      return absl::Status(status.code(), absl::StrCat(status.message(), "; the group's rendezvous store does not answer "
                                                                        "either (the process hosting it is gone?)"));
    }
    const int64_t mine = entered_.load();
    std::vector<std::string> stuck;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      const auto& a = (*first)[static_cast<size_t>(r)];
      const auto& b = (*second)[static_cast<size_t>(r)];
      if (b.beat < 0) {
        stuck.push_back(absl::StrCat("rank ", r, " never sent a heartbeat"));
      } else if (a.beat == b.beat) {
        stuck.push_back(absl::StrCat("rank ", r, " (pid ", b.pid, " on ", b.host,
                                     ") has sent no heartbeat for 2 s: stopped, dead or cut off"));
      } else if (b.entered < mine) {
        stuck.push_back(absl::StrCat("rank ", r, " (pid ", b.pid, " on ", b.host, ") is alive but has not reached this ",
                                     "collective (it entered ", b.entered, " collectives, this rank ", mine, "): hung"));
      }
    }
    if (stuck.empty()) return status;
    return absl::Status(status.code(), absl::StrCat(status.message(), "; ", absl::StrJoin(stuck, "; ")));
  }

 private:
  struct Beat_ {
    int64_t beat = -1, entered = 0, pid = 0;
    std::string host;
  };
  Watch(std::shared_ptr<Store> store, std::string prefix, int rank, int size)
      : store_(std::move(store)), prefix_(std::move(prefix)), rank_(rank), size_(size), host_(Hostname()) {}
  std::string Key(int r) const { return absl::StrCat(prefix_, "heartbeat/", r); }
  void Send(int64_t n) {
    std::lock_guard<std::mutex> l(store_mu_);
    (void)store_->Set(Key(rank_), absl::StrCat(n, " ", entered_.load(), " ", getpid(), " ", host_));
  }
  void Beat() {
    std::unique_lock<std::mutex> l(mu_);
    for (int64_t n = 1;; ++n) {
      cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_; });
      if (stop_) return;
      l.unlock();
      Send(n);
      l.lock();
    }
  }
  absl::StatusOr<std::vector<Beat_>> ReadAll() {
    std::lock_guard<std::mutex> l(store_mu_);
    std::vector<Beat_> out(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      ASSIGN_OR_RETURN(bool has, store_->Has(Key(r)));
      if (!has) continue;
      ASSIGN_OR_RETURN(auto v, store_->Get(Key(r)));
      std::vector<std::string> parts = absl::StrSplit(v, absl::MaxSplits(' ', 3));
      auto& b = out[static_cast<size_t>(r)];
      if (parts.size() == 4 && absl::SimpleAtoi(parts[0], &b.beat) && absl::SimpleAtoi(parts[1], &b.entered) &&
          absl::SimpleAtoi(parts[2], &b.pid)) {
        b.host = parts[3];
      } else {
        b.beat = -1;
      }
    }
    return out;
  }
  std::shared_ptr<Store> store_;
  const std::string prefix_;
  const int rank_, size_;
  const std::string host_;
  std::atomic<int64_t> entered_{0};
  std::mutex mu_, store_mu_;  // mu_: stop_; store_mu_: the store connection (one call at a time)
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// A started c10d collective (the work type differs between LibTorch 1.x and 2.x).
template <typename WorkPtr>
class C10dWork : public Work {
 public:
  C10dWork(WorkPtr work, const char* what, std::chrono::milliseconds timeout, std::shared_ptr<Watch> watch)
      : work_(std::move(work)), what_(what), timeout_(timeout), watch_(std::move(watch)) {}
  absl::Status Wait() override {
    absl::Status s;
    try {
      if (!work_->wait(timeout_)) {
        s = absl::DeadlineExceededError(absl::StrCat(what_, " did not complete within the timeout"));
      }
    } catch (const std::exception& e) {
      s = CollectiveError(what_, e);
    }
    return s.ok() || !watch_ ? s : watch_->Explain(std::move(s));
  }

 private:
  WorkPtr work_;
  const char* what_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<Watch> watch_;
};

class C10dGroup : public Group {
 public:
  C10dGroup(c10::intrusive_ptr<c10d::ProcessGroup> pg, int rank, int size, std::string backend,
            std::chrono::milliseconds timeout, std::shared_ptr<Watch> watch = nullptr)
      : pg_(std::move(pg)), rank_(rank), size_(size), backend_(std::move(backend)), timeout_(timeout),
        watch_(std::move(watch)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return backend_; }

  absl::Status AllReduceSum(std::vector<torch::Tensor>& tensors) override {
    return Run("all-reduce", [&] {
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      o.timeout = timeout_;
      return pg_->allreduce(tensors, o);
    });
  }
  absl::StatusOr<std::unique_ptr<Work>> BroadcastAsync(std::vector<torch::Tensor>& tensors, int root) override {
    if (watch_) watch_->Entered();
    try {
      c10d::BroadcastOptions o;
      o.rootRank = root;
      o.timeout = timeout_;
      auto work = pg_->broadcast(tensors, o);
      return std::unique_ptr<Work>(
          std::make_unique<C10dWork<decltype(work)>>(std::move(work), "broadcast", timeout_, watch_));
    } catch (const std::exception& e) {
      return Explained(CollectiveError("broadcast", e));
    }
  }
  absl::Status Barrier() override {
    return Run("barrier", [&] {
      c10d::BarrierOptions o;
      o.timeout = timeout_;
      return pg_->barrier(o);
    });
  }

 private:
  template <typename Fn>
  absl::Status Run(const char* what, Fn&& fn) {
    if (watch_) watch_->Entered();
    try {
      auto work = fn();
      return C10dWork<decltype(work)>(std::move(work), what, timeout_, watch_).Wait();
    } catch (const std::exception& e) {
      return Explained(CollectiveError(what, e));
    }
  }
  absl::Status Explained(absl::Status s) { return watch_ ? watch_->Explain(std::move(s)) : s; }
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  int rank_, size_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<Watch> watch_;
};


// A c10d process group of `backend` over `store` (keys under `prefix`).
absl::StatusOr<c10::intrusive_ptr<c10d::ProcessGroup>> MakeProcessGroup(const c10::intrusive_ptr<c10d::Store>& store,
                                                                          const std::string& prefix, int rank, int size,
                                                                          const std::string& backend,
                                                                          std::chrono::milliseconds timeout,
                                                                          const std::string& bind) {
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  auto st = GuardExceptions("process group", [&]() -> absl::Status {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    if (backend == "nccl") {
#ifdef RLHF_WITH_CUDA
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, size, o);
#else
      return absl::FailedPreconditionError("backend nccl needs a build against LibTorch with CUDA");
#endif
    } else {
      auto o = c10d::ProcessGroupGloo::Options::create(timeout);
      o->devices.push_back(bind.empty() ? c10d::ProcessGroupGloo::createDefaultDevice()
                                        : c10d::ProcessGroupGloo::createDeviceForHostname(bind));
      o->threads = 2;
      try {
        pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, o);
      } catch (const std::exception& e) {
        return CollectiveError("forming the process group", e);
      }
    }
    return absl::OkStatus();
  });
  RETURN_IF_ERROR(st);
  return pg;
}

}  // namespace

std::string DefaultInterface(const std::string& store_host) {
  return IsLoopbackHost(store_host) ? "127.0.0.1" : Hostname();
}
std::string HostName() { return Hostname(); }
std::string DefaultBackend() {
#ifdef RLHF_WITH_CUDA
  return torch::cuda::is_available() ? "nccl" : "gloo";
#else
  return "gloo";
#endif
}
absl::StatusOr<std::shared_ptr<Store>> Store::Host(const std::string& bind_host, int port, double timeout_seconds) {
  return OpenStore(bind_host, port, true, timeout_seconds);
}

absl::StatusOr<std::shared_ptr<Store>> Store::Connect(const std::string& host, int port, double timeout_seconds) {
  return OpenStore(host, port, false, timeout_seconds);
}

absl::Status Group::Broadcast(std::vector<torch::Tensor>& tensors, int root) {
  ASSIGN_OR_RETURN(auto work, BroadcastAsync(tensors, root));
  return work->Wait();
}

absl::StatusOr<std::shared_ptr<Group>> Group::Join(Store& store, const std::string& prefix, int rank, int size,
                                                   const GroupOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is not within group size ", size));
  }
  if (size == 1) return Single();
  auto* tcp = dynamic_cast<TcpStore*>(&store);
  if (!tcp) return absl::InvalidArgumentError("Group::Join needs a store made by Store::Host or Store::Connect");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
  const std::string bind = options.interface_addr.empty() ? "127.0.0.1" : options.interface_addr;
  ASSIGN_OR_RETURN(auto pg, MakeProcessGroup(tcp->raw(), prefix, rank, size, options.backend, timeout, bind));
  auto watch = options.watch ? Watch::Start(tcp->host(), tcp->port(), prefix, rank, size, options.timeout_seconds) : nullptr;
  return std::shared_ptr<Group>(std::make_shared<C10dGroup>(pg, rank, size, options.backend, timeout, watch));
}

absl::StatusOr<WorldInfo> DetectWorld(const DistConfig& config) {
  WorldInfo w;
  std::string how = config.bootstrap;
  if (how == "auto") {
    how = (Env("RANK") && Env("WORLD_SIZE")) ? "env" : UnderMpirun() ? "mpi" : "single";
  }
  w.method = how;
  if (how == "single") return w;
  if (how == "env") {
    if (!Env("RANK") || !Env("WORLD_SIZE")) {
      return absl::InvalidArgumentError("dist.bootstrap=env needs RANK and WORLD_SIZE in the environment");
    }
    ASSIGN_OR_RETURN(w.rank, EnvInt("RANK"));
    ASSIGN_OR_RETURN(w.size, EnvInt("WORLD_SIZE"));
  } else if (how == "mpi") {
    const char* r = Env("OMPI_COMM_WORLD_RANK") ? "OMPI_COMM_WORLD_RANK" : Env("PMI_RANK") ? "PMI_RANK" : nullptr;
    const char* s = Env("OMPI_COMM_WORLD_SIZE") ? "OMPI_COMM_WORLD_SIZE" : Env("PMI_SIZE") ? "PMI_SIZE" : nullptr;
    if (!r || !s) return absl::InvalidArgumentError("dist.bootstrap=mpi but this process was not started by mpirun");
    ASSIGN_OR_RETURN(w.rank, EnvInt(r));
    ASSIGN_OR_RETURN(w.size, EnvInt(s));
  }
  if (w.size < 1 || w.rank < 0 || w.rank >= w.size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", w.rank, " is not within world size ", w.size));
  }
  return w;
}

std::shared_ptr<Group> Group::Single() { return std::make_shared<SingleGroup>(); }

absl::StatusOr<std::shared_ptr<Group>> Group::Create(const DistConfig& config) {
  ASSIGN_OR_RETURN(WorldInfo w, DetectWorld(config));
  if (w.method == "single") return Single();
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_seconds * 1000));

  std::string addr = config.master_addr;
  if (addr.empty() && Env("MASTER_ADDR")) addr = Env("MASTER_ADDR");
  int port = static_cast<int>(config.master_port);
  if (port == 0 && Env("MASTER_PORT")) {
    ASSIGN_OR_RETURN(port, EnvInt("MASTER_PORT"));
  }
  std::shared_ptr<Store> store;
  if (w.method == "mpi" && (addr.empty() || port == 0)) {
    // Rank 0 opens the store (on a free port unless one is given) and tells the others over MPI.
    std::string where;
    if (w.rank == 0) {
      if (addr.empty()) addr = Hostname();
      ASSIGN_OR_RETURN(store, OpenStore(addr, port, true, config.timeout_seconds));
      where = absl::StrCat(addr, ":", store->port());
    }
    ASSIGN_OR_RETURN(where, ShareOverMpi(w.rank, where));
    const auto colon = where.rfind(':');
    addr = where.substr(0, colon);
    if (!absl::SimpleAtoi(where.substr(colon + 1), &port)) return absl::InternalError("bad rendezvous address over MPI");
    if (w.rank != 0) {
      ASSIGN_OR_RETURN(store, OpenStore(addr, port, false, config.timeout_seconds));
    }
  } else {
    if (addr.empty() || port == 0) {
      return absl::InvalidArgumentError(
          "set MASTER_ADDR and MASTER_PORT (or dist.master_addr / dist.master_port) for a multi-process run");
    }
    ASSIGN_OR_RETURN(store, OpenStore(addr, port, w.rank == 0, config.timeout_seconds));
  }

  std::string backend = config.backend;
  if (backend == "auto") backend = DefaultBackend();
  std::string bind = config.interface_addr;
  if (backend == "gloo" && bind.empty() && IsLoopbackHost(addr)) bind = "127.0.0.1";
  ASSIGN_OR_RETURN(auto pg, MakeProcessGroup(static_cast<TcpStore&>(*store).raw(), "rlhf/dp", w.rank, w.size,
                                             backend, timeout, bind));
  spdlog::info("rank {}/{} joined the {} group (bootstrap {}, rendezvous {}:{})", w.rank, w.size, backend, w.method,
               addr, port);
  auto watch = Watch::Start(addr, port, "rlhf/dp/", w.rank, w.size, config.timeout_seconds);
  return std::shared_ptr<Group>(std::make_shared<C10dGroup>(pg, w.rank, w.size, backend, timeout, watch));
}

absl::StatusOr<std::string> ShareOverMpi(int rank, const std::string& value) {
  if (!UnderMpirun()) return absl::FailedPreconditionError("not started by mpirun: nothing to share over MPI");
  int init = 0;
  MPI_Initialized(&init);
  if (init) return absl::FailedPreconditionError("MPI is already in use in this process");
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  char buf[512] = {0};
  if (rank == 0) std::strncpy(buf, value.c_str(), sizeof(buf) - 1);
  MPI_Bcast(buf, sizeof(buf), MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return std::string(buf);
}

absl::StatusOr<std::vector<double>> Group::SumDoubles(std::vector<double> values) {
  if (size() == 1 || values.empty()) return values;
  auto t = torch::tensor(values, torch::kFloat64);
  std::vector<torch::Tensor> v{t};
  RETURN_IF_ERROR(AllReduceSum(v));
  auto a = v[0].accessor<double, 1>();
  for (size_t i = 0; i < values.size(); ++i) values[i] = a[static_cast<int64_t>(i)];
  return values;
}

absl::StatusOr<double> Group::MaxDouble(double value) {
  if (size() == 1) return value;
  // max via a one-hot sum: every rank contributes its value in its own slot.
  std::vector<double> slots(static_cast<size_t>(size()), 0.0);
  slots[static_cast<size_t>(rank())] = value;
  ASSIGN_OR_RETURN(auto all, SumDoubles(std::move(slots)));
  return *std::max_element(all.begin(), all.end());
}

absl::StatusOr<std::string> BroadcastBytes(Group& group, std::string bytes) {
  if (group.size() == 1) return bytes;
  std::vector<torch::Tensor> len = {torch::tensor({static_cast<int64_t>(bytes.size())}, torch::kInt64)};
  RETURN_IF_ERROR(group.Broadcast(len, 0));
  const int64_t n = len[0].item<int64_t>();
  std::vector<torch::Tensor> data = {group.rank() == 0
                                         ? torch::from_blob(bytes.data(), {n}, torch::kUInt8).clone()
                                         : torch::empty({n}, torch::kUInt8)};
  if (n > 0) RETURN_IF_ERROR(group.Broadcast(data, 0));
  return std::string(reinterpret_cast<const char*>(data[0].data_ptr<uint8_t>()), static_cast<size_t>(n));
}

absl::Status AllReduceBucketed(Group& group, const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  if (group.size() == 1) return absl::OkStatus();
  size_t i = 0;
  while (i < tensors.size()) {
    // One bucket: consecutive tensors of one dtype and device up to bucket_bytes.
    std::vector<torch::Tensor> bucket{tensors[i]};
    int64_t bytes = tensors[i].numel() * static_cast<int64_t>(tensors[i].element_size());
    size_t j = i + 1;
    while (j < tensors.size() && tensors[j].scalar_type() == tensors[i].scalar_type() &&
           tensors[j].device() == tensors[i].device() &&
           bytes + tensors[j].numel() * static_cast<int64_t>(tensors[j].element_size()) <= bucket_bytes) {
      bytes += tensors[j].numel() * static_cast<int64_t>(tensors[j].element_size());
      bucket.push_back(tensors[j++]);
    }
    std::vector<torch::Tensor> flat_parts;
    for (const auto& t : bucket) flat_parts.push_back(t.reshape({-1}));
    std::vector<torch::Tensor> flat{torch::cat(flat_parts)};
    RETURN_IF_ERROR(group.AllReduceSum(flat));
    int64_t off = 0;
    for (auto& t : bucket) {
      t.copy_(flat[0].narrow(0, off, t.numel()).view_as(t));
      off += t.numel();
    }
    i = j;
  }
  return absl::OkStatus();
}

}  // namespace rlhf::comm
