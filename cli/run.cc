// rlhf run: every role of a run from the run's one config, each process taking its role from its rank
// (`mpirun -np N rlhf run --config X.yaml`) or from its environment (RLHF_ROLE / RLHF_ROLE_INDEX, one pod per
// role under Kubernetes). The `cluster:` section says how many of each role there are; ranks are given out in
// order: learner ranks (learner 0 also coordinates: it runs the step loop), then rollout workers, then the
// scorer.
//
// Each process is a supervisor and a child. The supervisor does no work of its own: it finds the run's
// rendezvous store (learner 0's supervisor hosts it), starts the child (this binary again, with
// RLHF_SUPERVISED=1) and watches it. The child runs the role: learner ranks form their data-parallel group
// over the store and run the pipeline; rollout workers and the scorer serve and publish their gRPC address in
// the store, where learner 0 finds them (the address book). So:
//   - a rollout worker or scorer that dies (kill -9, a crash) is started again by its supervisor on the same
//     address, and rejoins at the next weight sync, while the job under mpirun never sees a process exit;
//   - a learner rank that dies takes the learner group down (the others' collectives name it and fail): each
//     learner's supervisor starts its child again with train.resume, in a new learner group, from the newest
//     verified checkpoint, while the rollout workers and scorers keep their processes (cluster.max_restarts;
//     after that, or for a bad config, the supervisor exits with the status and mpirun stops the rest);
//   - when learner 0's child ends, its supervisor marks the run done in the store; the serving roles'
//     supervisors stop their children and leave, and learner 0's supervisor exits last with the run's status.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <nlohmann/json.hpp>
#include <optional>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/command.h"
#include "cli/serve.h"
#include "common/comm/group.h"
#include "common/file.h"
#include "common/net.h"
#include "common/metrics.h"
#include "common/runtime.h"
#include "trainer/pipeline/pipeline.h"
#include "trainer/pipeline/stages.h"

extern char** environ;

namespace rlhf::cli {

namespace {

struct ClusterConfig {
  int64_t learners = 1;         // learner ranks (data parallel); learner 0 also runs the step loop
  int64_t rollout_workers = 0;  // rollout worker processes; 0 = one embedded in learner 0
  int64_t scorers = 0;          // scorer replicas; 0 = one embedded in learner 0
  std::string store;            // host:port of the rendezvous store learner 0 hosts; "" = see Spec
  std::string advertise_host;   // host the others reach this process's servers at; "" = see Spec
  int64_t max_restarts = 3;     // restarts of a role by its supervisor (a learner rank: from the newest checkpoint)
  double restart_backoff_seconds = 1;  // wait before a restart
  double wait_seconds = 300;    // how long a role waits for the others (the store, their addresses)
  static const config::Section<ClusterConfig>& Spec() {
    static const auto* s = [] {
      using C = ClusterConfig;
      auto* s = new config::Section<C>("cluster");
      s->Add("learners", &C::learners, "learner ranks (data parallel); learner 0 also coordinates (the step loop)",
             config::AtLeast(1));
      s->Add("rollout_workers", &C::rollout_workers,
             "rollout worker processes; 0 = one embedded in learner 0 (rollout.* keys)", config::AtLeast(0));
      s->Add("scorers", &C::scorers,
             "scorer replicas (scoring calls spread over them, failover between them); 0 = one embedded in learner 0 "
             "(reward.* keys)",
             config::AtLeast(0));
      s->Add("store", &C::store,
             "host:port of the rendezvous store learner 0 hosts; \"\" = MASTER_ADDR:MASTER_PORT when set, else (under "
             "mpirun) a free port on learner 0's host, shared over MPI");
      s->Add("advertise_host", &C::advertise_host,
             "host the other roles reach this process's servers at; \"\" = POD_IP when set, else 127.0.0.1 when the "
             "store is on loopback, else this host's name");
      s->Add("max_restarts", &C::max_restarts,
             "times a supervisor starts its role again after it died: a rollout worker or scorer on the same address, "
             "a learner rank (with every other learner rank) from the newest verified checkpoint", config::AtLeast(0));
      s->Add("restart_backoff_seconds", &C::restart_backoff_seconds, "wait before such a restart", config::AtLeast(0));
      s->Add("wait_seconds", &C::wait_seconds,
             "how long a role waits for the others: the store, the learner group, the serving roles' addresses",
             config::AtLeast(1));
      return s;
    }();
    return *s;
  }
  int64_t total() const { return learners + rollout_workers + scorers; }
};

enum class Role { kLearner, kRollout, kScorer };

const char* RoleName(Role r) {
  switch (r) {
    case Role::kLearner: return "learner";
    case Role::kRollout: return "rollout";
    case Role::kScorer: return "scorer";
  }
  return "?";
}

// The store key of process `index` of `role` under `kind` ("" = its published address: cluster/rollout/1;
// "info": cluster/info/rollout/1; "left", "restarts").
std::string KeyOf(Role role, int64_t index, const std::string& kind = "") {
  return absl::StrCat("cluster/", kind.empty() ? "" : kind + "/", RoleName(role), "/", index);
}

struct Placement {
  Role role = Role::kLearner;
  int index = 0;
  int local_rank = 0;
  bool under_mpirun = false;
  int rank = 0;  // in the mpirun job (the role's index under RLHF_ROLE)
  std::string name() const { return absl::StrCat(RoleName(role), " ", index); }
  std::string path() const { return absl::StrCat(RoleName(role), "/", index); }  // e.g. rollout/1
  // The store key of this process under `kind` (KeyOf).
  std::string key(const std::string& kind = "") const { return KeyOf(role, index, kind); }
};

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

// The role of this process: from RLHF_ROLE / RLHF_ROLE_INDEX when set, else from its rank under mpirun
// (learners first, then rollout workers, then the scorer).
absl::StatusOr<Placement> Place(const ClusterConfig& c) {
  Placement p;
  p.local_rank = LocalRank();
  if (const char* role = Env("RLHF_ROLE")) {
    const std::string r = role;
    int64_t count = 0;
    if (r == "learner") {
      p.role = Role::kLearner;
      count = c.learners;
    } else if (r == "rollout") {
      p.role = Role::kRollout;
      count = c.rollout_workers;
    } else if (r == "scorer") {
      p.role = Role::kScorer;
      count = c.scorers;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("RLHF_ROLE=", r, ": expected learner, rollout or scorer"));
    }
    const char* index = Env("RLHF_ROLE_INDEX") ? Env("RLHF_ROLE_INDEX") : Env("JOB_COMPLETION_INDEX");
    if (index != nullptr && !absl::SimpleAtoi(index, &p.index)) {
      return absl::InvalidArgumentError(absl::StrCat("RLHF_ROLE_INDEX=", index, " is not an integer"));
    }
    if (p.index < 0 || p.index >= count) {
      return absl::InvalidArgumentError(absl::StrCat(p.name(), ": the cluster section has ", count, " of this role (cluster.",
                                                     r == "learner" ? "learners" : r == "rollout" ? "rollout_workers" : "scorers", ")"));
    }
    p.rank = p.index;
    return p;
  }
  ASSIGN_OR_RETURN(auto world, comm::DetectWorld(comm::DistConfig{}));
  if (world.size != c.total()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster: ", c.learners, " learner(s) + ", c.rollout_workers, " rollout worker(s) + ", c.scorers,
        " scorer(s) make ", c.total(), " processes, but ", world.size, " were started (", world.method,
        "); start `mpirun -np ", c.total(), " rlhf run ...`, or give each process RLHF_ROLE and RLHF_ROLE_INDEX"));
  }
  p.under_mpirun = world.method == "mpi";
  p.rank = world.rank;
  int r = world.rank;
  if (r < c.learners) {
    p.role = Role::kLearner;
    p.index = r;
  } else if ((r -= static_cast<int>(c.learners)) < c.rollout_workers) {
    p.role = Role::kRollout;
    p.index = r;
  } else {
    p.role = Role::kScorer;
    p.index = r - static_cast<int>(c.rollout_workers);
  }
  return p;
}

bool OneNode() {
  const char* local = Env("OMPI_COMM_WORLD_LOCAL_SIZE");
  const char* all = Env("OMPI_COMM_WORLD_SIZE");
  return local != nullptr && all != nullptr && std::string(local) == all;
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& where, const std::string& what) {
  const auto colon = where.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(where.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", where, "': expected host:port"));
  }
  return std::make_pair(where.substr(0, colon), port);
}

std::string AdvertiseHost(const ClusterConfig& c, const std::string& store_host) {
  if (!c.advertise_host.empty()) return c.advertise_host;
  if (const char* ip = Env("POD_IP")) return ip;
  return IsLoopbackHost(store_host) ? "127.0.0.1" : comm::HostName();
}

// ---- the supervisor -------------------------------------------------------------------------------------------

std::atomic<int> g_signal{0};
extern "C" void OnSupervisorSignal(int sig) { g_signal.store(sig); }

// Exit status of a child as a shell reports it: its code, or 128 + the signal that killed it.
int ExitCode(int status) { return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status); }

std::string Describe(int status) {
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return absl::StrCat("exited with status ", WEXITSTATUS(status));
}

class Child {
 public:
  // Starts this binary again with `extra_args` after the original ones, in an environment without the
  // launcher's variables (the child is not an MPI process) and with `env` added.
  static absl::StatusOr<Child> Start(const std::vector<std::string>& extra_args,
                                     const std::vector<std::pair<std::string, std::string>>& env) {
    std::vector<std::string> args = ProcessArgs();
    if (args.empty()) return absl::InternalError("the command line is unknown (PrepareProcess was not called)");
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    std::vector<std::string> vars;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string v = *e;
      const std::string name = v.substr(0, v.find('='));
      if (name.rfind("OMPI_", 0) == 0 || name.rfind("PMIX_", 0) == 0 || name.rfind("PMI_", 0) == 0 ||
          name == "RANK" || name == "WORLD_SIZE" || name == "LOCAL_RANK" || name == "MASTER_ADDR" ||
          name == "MASTER_PORT") {
        continue;
      }
      bool replaced = false;
      for (const auto& [k, _] : env) replaced |= k == name;
      if (!replaced) vars.push_back(v);
    }
    for (const auto& [k, v] : env) vars.push_back(k + "=" + v);
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& v : vars) envp.push_back(v.data());
    envp.push_back(nullptr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
    if (pid == 0) {
      // Only async-signal-safe calls here: the child dies with its supervisor, then becomes rlhf again.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(1);
      execve("/proc/self/exe", argv.data(), envp.data());
      _exit(127);
    }
    return Child(pid);
  }
  pid_t pid() const { return pid_; }
  // The child's wait status once it has exited; nullopt while it runs.
  std::optional<int> Poll() {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) return status;
    return std::nullopt;
  }
  // Sends `sig`, waits up to `seconds`, then kills it. Returns its wait status.
  int Stop(int sig, double seconds) {
    kill(pid_, sig);
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < until) {
      if (auto s = Poll()) return *s;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    return status;
  }

 private:
  explicit Child(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

// Polls `store` for `key` every 200 ms until it is set (true), `seconds` pass or the store is gone (false).
bool WaitForKey(comm::Store& store, const std::string& key, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    auto has = store.Has(key);
    if (!has.ok()) return false;
    if (*has) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

absl::Status Supervise(const Context& ctx) {
  const auto c = ClusterConfig::Spec().Read(ctx.config);
  ASSIGN_OR_RETURN(const Placement me, Place(c));
  const bool host_store = me.role == Role::kLearner && me.index == 0;
  const double wait = c.wait_seconds;

  // The rendezvous store: learner 0 hosts it; the others connect.
  std::string store_at = c.store;
  if (store_at.empty() && Env("MASTER_ADDR") && Env("MASTER_PORT")) {
    store_at = absl::StrCat(Env("MASTER_ADDR"), ":", Env("MASTER_PORT"));
  }
  std::shared_ptr<comm::Store> store;
  if (store_at.empty() && host_store && c.total() == 1) {
    ASSIGN_OR_RETURN(store, comm::Store::Host("127.0.0.1", 0, wait));  // one process: its own store
    store_at = absl::StrCat("127.0.0.1:", store->port());
  }
  if (store_at.empty()) {
    if (!me.under_mpirun) {
      return absl::InvalidArgumentError(
          "set cluster.store (host:port where learner 0 hosts the rendezvous store) or MASTER_ADDR and MASTER_PORT");
    }
    std::string shared;
    if (host_store) {
      const std::string host = OneNode() ? "127.0.0.1" : comm::HostName();
      ASSIGN_OR_RETURN(store, comm::Store::Host(host, 0, wait));
      shared = absl::StrCat(host, ":", store->port());
    }
    ASSIGN_OR_RETURN(store_at, comm::ShareOverMpi(me.rank, shared));
  }
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(store_at, "cluster.store"));
  if (host_store && store == nullptr) {
    ASSIGN_OR_RETURN(store, comm::Store::Host(hp.first, hp.second, wait));
  } else if (store == nullptr) {
    ASSIGN_OR_RETURN(store, comm::Store::Connect(hp.first, hp.second, wait));
  }
  // One run directory for every role: learner 0's.
  std::string run_dir = ctx.run_dir;
  if (host_store) {
    RETURN_IF_ERROR(store->Set("cluster/run_dir", run_dir));
  } else {
    ASSIGN_OR_RETURN(run_dir, store->Get("cluster/run_dir"));
  }
  spdlog::info("rlhf run: {} (rank {}), rendezvous store {}, run dir {}", me.name(), me.rank, store_at, run_dir);

  std::signal(SIGTERM, OnSupervisorSignal);
  std::signal(SIGINT, OnSupervisorSignal);
  std::vector<std::pair<std::string, std::string>> env = {
      {"RLHF_SUPERVISED", "1"},
      {"RLHF_ROLE", RoleName(me.role)},
      {"RLHF_ROLE_INDEX", std::to_string(me.index)},
      {"RLHF_CLUSTER_STORE", store_at},
      {"LOCAL_RANK", std::to_string(me.local_rank)},
      {"RLHF_RUN_RANK", std::to_string(me.rank)},
  };
  const std::vector<std::string> args = {"--set", "run.dir=" + run_dir};
  ASSIGN_OR_RETURN(Child child, Child::Start(args, env));
  int restarts = 0;
  // A serving role leaves when the store has not answered for this long (a blip is ridden out).
  constexpr double kStoreGraceSeconds = 10;
  std::optional<std::chrono::steady_clock::time_point> unreachable_since;
  for (;;) {
    if (const int sig = g_signal.load()) {
      spdlog::warn("rlhf run: {}: signal {}; stopping its process {}", me.name(), sig, child.pid());
      const int status = child.Stop(sig, 15);
      std::_Exit(ExitCode(status) == 0 ? 128 + sig : ExitCode(status));
    }
    if (me.role != Role::kLearner) {
      auto done = store->Has("cluster/done");
      if (done.ok()) unreachable_since.reset();
      if (!done.ok() && !unreachable_since) unreachable_since = std::chrono::steady_clock::now();
      const bool gone = unreachable_since && std::chrono::steady_clock::now() - *unreachable_since >
                                                 std::chrono::duration<double>(kStoreGraceSeconds);
      if ((done.ok() && *done) || gone) {
        // The run is over (or learner 0 and its store have been gone for a while): stop serving and leave.
        (void)child.Stop(SIGTERM, 15);
        if (gone) {
          return absl::UnavailableError(absl::StrCat(me.name(), ": the run's store at ", store_at, " has not answered for ",
                                                     kStoreGraceSeconds, " s (learner 0 exited?): ", done.status().message()));
        }
        (void)store->Set(me.key("left"), "1");
        return absl::OkStatus();
      }
    }
    auto status = child.Poll();
    if (!status) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    const int code = ExitCode(*status);
    // Died (a signal) or failed at run time (not a bad config: status 2): started again, up to max_restarts.
    // A learner rank that died, or failed because another did (its collective names the lost rank): every
    // learner rank's child ends so, and each supervisor starts its child again from the newest verified
    // checkpoint, in a new learner group (generation = restarts); the rollout workers and scorers keep their
    // processes, and learner 0's step loop resumes and sends them the restored weights. A serving role is
    // started again on its address, unless the run is over.
    const bool learner = me.role == Role::kLearner;
    bool again = (WIFSIGNALED(*status) || (code != 0 && code != 2)) && restarts < c.max_restarts;
    if (again && !learner) {
      auto done = store->Has("cluster/done");
      again = done.ok() && !*done;
    }
    if (!again && learner) {
      if (code != 0) spdlog::error("rlhf run: {} (pid {}) {}", me.name(), child.pid(), Describe(*status));
      if (host_store) {
        // The run is over: the serving roles stop; the store stays up until they have left.
        (void)store->Set("cluster/done", std::to_string(code));
        for (const auto& [role, n] : {std::pair{Role::kRollout, c.rollout_workers}, std::pair{Role::kScorer, c.scorers}}) {
          for (int64_t i = 0; i < n; ++i) {
            if (!WaitForKey(*store, KeyOf(role, i, "left"), 30)) {
              spdlog::warn("rlhf run: {} {} did not report leaving", RoleName(role), i);
            }
          }
        }
      }
      std::_Exit(code);
    }
    if (!again) {
      if (code != 0) spdlog::error("rlhf run: {} (pid {}) {}; not started again", me.name(), child.pid(), Describe(*status));
      std::_Exit(code);
    }
    ++restarts;
    (void)store->Set(me.key("restarts"), std::to_string(restarts));  // for summary.json
    auto again_args = args;
    auto again_env = env;
    again_env.push_back({"RLHF_RESTARTS", std::to_string(restarts)});
    std::string how;  // for the log line
    if (learner) {
      again_args.insert(again_args.end(), {"--set", "train.resume=true"});
      again_env.push_back({"RLHF_LEARNER_GENERATION", std::to_string(restarts)});
      how = absl::StrCat(" from the newest checkpoint (learner group generation ", restarts, ")");
    } else if (auto has = store->Has(me.key()); has.ok() && *has) {
      ASSIGN_OR_RETURN(auto address, store->Get(me.key()));
      again_env.push_back({"RLHF_ROLE_ADDRESS", address});
      how = " at " + address;
    }
    spdlog::warn("rlhf run: {} (pid {}) {}; starting it again{} (restart {} of {})", me.name(), child.pid(),
                 Describe(*status), how, restarts, c.max_restarts);
    std::this_thread::sleep_for(std::chrono::duration<double>(c.restart_backoff_seconds));
    ASSIGN_OR_RETURN(child, Child::Start(again_args, again_env));
  }
}

// ---- the child: one role ----------------------------------------------------------------------------------------

// summary.json's roles.restarts: how often each role's supervisor started it again ({} when never). A
// restarted learner 0 records what was recorded before it (its own restarts included, set by its
// supervisor before the start).
absl::Status RecordRestarts(const ClusterConfig& c, comm::Store& store, const std::string& run_dir) {
  nlohmann::json restarts = nlohmann::json::object();
  auto count = [&](Role role, int64_t n) -> absl::Status {
    for (int64_t i = 0; i < n; ++i) {
      const std::string key = KeyOf(role, i, "restarts");
      ASSIGN_OR_RETURN(bool has, store.Has(key));
      if (!has) continue;
      ASSIGN_OR_RETURN(auto v, store.Get(key));
      int64_t k = 0;
      if (absl::SimpleAtoi(v, &k)) restarts[absl::StrCat(RoleName(role), " ", i)] = k;
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(count(Role::kLearner, c.learners));
  RETURN_IF_ERROR(count(Role::kRollout, c.rollout_workers));
  RETURN_IF_ERROR(count(Role::kScorer, c.scorers));
  const std::string path = (std::filesystem::path(run_dir) / "summary.json").string();
  auto text = ReadFile(path);
  if (!text.ok()) return absl::OkStatus();  // no online stage wrote one
  auto summary = nlohmann::json::parse(*text, nullptr, false);
  if (!summary.is_object()) return absl::OkStatus();
  summary["roles"]["restarts"] = restarts;
  return WriteFileAtomic(path, summary.dump(2) + "\n");
}

absl::Status RunRole(const Context& ctx) {
  const auto c = ClusterConfig::Spec().Read(ctx.config);
  // The supervisor set RLHF_ROLE / RLHF_ROLE_INDEX (and the rank it was given) for this child.
  ASSIGN_OR_RETURN(Placement me, Place(c));
  if (Env("RLHF_RUN_RANK") && !absl::SimpleAtoi(Env("RLHF_RUN_RANK"), &me.rank)) {
    return absl::InvalidArgumentError("RLHF_RUN_RANK is not an integer");
  }
  const char* store_env = Env("RLHF_CLUSTER_STORE");
  if (store_env == nullptr) return absl::FailedPreconditionError("RLHF_CLUSTER_STORE is not set (started by hand?)");
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(store_env, "RLHF_CLUSTER_STORE"));
  ASSIGN_OR_RETURN(auto store, comm::Store::Connect(hp.first, hp.second, c.wait_seconds));
  const std::string host = AdvertiseHost(c, hp.first);
  // What processes.json says of this process beyond what its Health tells the step loop.
  nlohmann::json self = {{"role", RoleName(me.role)}, {"index", me.index}, {"rank", me.rank}};

  auto publish = [&](int port) -> absl::Status {
    const std::string address = absl::StrCat(host, ":", port);
    spdlog::info("{} publishes its address {}", me.name(), address);
    RETURN_IF_ERROR(store->Set(me.key("info"), self.dump()));
    return store->Set(me.key(), address);
  };
  // How often this role's supervisor has started it again (0 for the first start), on /metrics.
  int64_t restarts = 0;
  if (Env("RLHF_RESTARTS")) (void)absl::SimpleAtoi(Env("RLHF_RESTARTS"), &restarts);
  Metrics::Process()
      .Gauge("rlhf_role_restarts", "times this role's supervisor has started it again after it died")
      .Set(static_cast<double>(restarts));
  const char* again = Env("RLHF_ROLE_ADDRESS");
  const std::string address = again != nullptr ? again : host + ":0";
  switch (me.role) {
    case Role::kRollout: {
      std::string model = ctx.config.Get<std::string>("rollout.model");
      if (model.empty()) model = ctx.config.Get<std::string>("train.model");
      return ServeRollout(ctx.config, model, address, publish);
    }
    case Role::kScorer:
      return ServeScorer(ctx.config, address, publish);
    case Role::kLearner:
      break;
  }
  Metrics::Process().SetProcessLabels({{"role", me.index == 0 ? "coordinator+learner" : "learner"}});
  const auto dist = comm::DistConfig::Spec().Read(ctx.config);
  std::shared_ptr<comm::Group> group = comm::Group::Single();
  if (c.learners > 1) {
    comm::GroupOptions o;
    o.backend = dist.backend == "auto" ? comm::DefaultBackend() : dist.backend;
    o.timeout_seconds = dist.timeout_seconds;
    o.interface_addr = dist.interface_addr.empty() ? comm::DefaultInterface(hp.first) : dist.interface_addr;
    o.watch = true;
    // Each restart of the learner ranks forms a new group (its own keys in the store).
    int64_t generation = 0;
    if (Env("RLHF_LEARNER_GENERATION") && !absl::SimpleAtoi(Env("RLHF_LEARNER_GENERATION"), &generation)) {
      return absl::InvalidArgumentError("RLHF_LEARNER_GENERATION is not an integer");
    }
    const std::string prefix = generation == 0 ? "cluster/learners/" : absl::StrCat("cluster/learners/g", generation, "/");
    ASSIGN_OR_RETURN(group, comm::Group::Join(*store, prefix, me.index, static_cast<int>(c.learners), o));
  }
  self["host"] = comm::HostName();
  self["pid"] = static_cast<int64_t>(getpid());
  self["metrics_port"] = Metrics::Process().port();
  self["address"] = "";
  self["state"] = "running";
  RETURN_IF_ERROR(store->Set(me.key("info"), self.dump()));
  config::Config config = ctx.config;
  trainer::TrainingOptions options;
  options.group = group;
  if (me.index == 0) {
    // Learner 0's own entry is the step loop's "coordinator+learner".
    options.other_processes.push_back(nlohmann::json({{"role", "coordinator+learner"}, {"index", 0}, {"rank", me.rank}}).dump());
    for (int i = 1; i < c.learners; ++i) {
      ASSIGN_OR_RETURN(auto info, store->Get(KeyOf(Role::kLearner, i, "info")));
      options.other_processes.push_back(info);
    }
    // The address book: every serving role's address, as it published it (and what it says of itself).
    auto addresses = [&](Role role, int64_t n) -> absl::StatusOr<std::vector<std::string>> {
      std::vector<std::string> out;
      for (int64_t i = 0; i < n; ++i) {
        ASSIGN_OR_RETURN(auto a, store->Get(KeyOf(role, i)));
        out.push_back(a);
        ASSIGN_OR_RETURN(auto info, store->Get(KeyOf(role, i, "info")));
        options.other_processes.push_back(info);
      }
      return out;
    };
    std::vector<std::string> overrides;
    ASSIGN_OR_RETURN(const auto rollout, addresses(Role::kRollout, c.rollout_workers));
    if (!rollout.empty()) overrides.push_back("roles.rollout_addresses=[" + absl::StrJoin(rollout, ", ") + "]");
    ASSIGN_OR_RETURN(const auto scorers, addresses(Role::kScorer, c.scorers));
    if (!scorers.empty()) {
      overrides.push_back("roles.scorer_address=");
      overrides.push_back("roles.scorer_addresses=[" + absl::StrJoin(scorers, ", ") + "]");
    }
    ASSIGN_OR_RETURN(config, ctx.config.With(overrides));
    spdlog::info("learner 0 coordinates: {} learner rank(s), rollout workers [{}], scorers [{}]", c.learners,
                 absl::StrJoin(rollout, ", "), scorers.empty() ? "embedded" : absl::StrJoin(scorers, ", "));
  }
  RETURN_IF_ERROR(trainer::RunTraining(config, ctx.run_dir, static_cast<uint64_t>(ctx.run.seed), options));
  if (me.index == 0) RETURN_IF_ERROR(RecordRestarts(c, *store, ctx.run_dir));
  return absl::OkStatus();
}

}  // namespace

Command RunCommand() {
  Command c;
  c.name = "run";
  c.help = "run every role of a training run from one config: learner ranks, rollout workers and a scorer by rank "
           "under mpirun (cluster.*), or one role per process from RLHF_ROLE / RLHF_ROLE_INDEX";
  c.add_sections = [](config::Schema& s) {
    trainer::RegisterTrainKeys(s);
    ClusterConfig::Spec().Register(s);
  };
  c.keys_of = "train";
  c.own_sections = [](config::Schema& s) { ClusterConfig::Spec().Register(s); };
  c.flags = {{"model", "train.model", "starting policy folder"},
             {"stages", "train.stages", "stages separated by ';', e.g. sft;grpo", false, false, true},
             {"seed", "run.seed", "run seed"},
             {"resume", "train.resume", "continue the run directory from its newest checkpoint", true}};
  c.supervise = Supervise;
  c.body = RunRole;
  return c;
}

}  // namespace rlhf::cli
