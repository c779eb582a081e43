// One weight sync from the learner to N rollout workers on loopback, for the "small" config (125M) and a
// Qwen3-0.6B-shaped model (hidden 1024, 28 layers, 16/8 heads, head_dim 128, intermediate 3072, vocab
// 151936, tied), to 1, 2 and 4 workers (separate processes, bf16 on the workers, f32 on the learner).
// Beside each figure, measured in the same run:
//   raw broadcast  a bare Gloo broadcast of the same bucket bytes, already packed, into buffers the
//                  receivers hold: the floor our sync is compared with
//   memory copy    one copy of the same bytes in this process: the machine's bound
//   gRPC relay     today's path (weights.transport=grpc): the learner's chunks pushed into each worker's
//                  UpdateWeights, one worker after another. Measured from the sender straight to the
//                  workers, so it leaves out the learner -> coordinator hop of the real relay (a lower
//                  bound of its time: the speed-up shown is conservative)
// Every timed sync ends with a barrier of all members (so the figure is until the last worker has it);
// best of --repeats after one untimed warm-up.
//   bench/weight_sync_bench [--shapes small,qwen3-0.6b] [--workers 1,2,4] [--grpc-workers 1,2] [--repeats 3]
//                           [--bucket-mb 64]
// Its last line is one JSON object: overhead_vs_raw_broadcast and speedup_vs_grpc_relay for the 0.6B shape
// and 2 workers (or the first run when that one was not run), and every run's figures.
#include <CLI/CLI.hpp>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "bench/timing.h"
#include "common/comm/group.h"
#include "common/comm/weight_sync.h"
#include "common/logging.h"
#include "common/model/init.h"
#include "common/model/transformer.h"
#include "common/rpc.h"
#include "common/runtime.h"
#include "rollout/service.h"
#include "rollout/weight_client.h"

extern char** environ;

using namespace rlhf;
using json = nlohmann::json;

namespace {

model::HfConfig Shape(const std::string& name) {
  if (name == "small") return model::ModelInitConfig::Small().ToHfConfig().value();
  if (name != "qwen3-0.6b") {
    std::fprintf(stderr, "unknown shape %s (small | qwen3-0.6b)\n", name.c_str());
    std::exit(2);
  }
  return model::ModelInitConfig::Qwen3_0_6B().ToHfConfig().value();
}

struct Plan {
  std::string shape;
  int workers = 1;
  bool grpc = false;
  int repeats = 3;
  int64_t bucket_bytes = 64 << 20;
};

// The bucket sizes (elements) a weight group of `bucket_bytes` makes of `named` in bf16.
std::vector<int64_t> BucketSizes(comm::NamedTensors named, int64_t bucket_bytes) {
  std::sort(named.begin(), named.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<int64_t> out;
  int64_t cur = 0;
  for (const auto& [n, t] : named) {
    if (cur > 0 && (cur + t.numel()) * 2 > bucket_bytes) {
      out.push_back(cur);
      cur = 0;
    }
    cur += t.numel();
  }
  if (cur > 0) out.push_back(cur);
  return out;
}

// Each member, the sender (rank 0) and the workers: the same collectives in the same order.
struct Member {
  int rank, size;
  std::shared_ptr<comm::Store> store;
  std::shared_ptr<comm::Group> raw;
  std::vector<torch::Tensor> raw_buffers;  // bf16 buckets, as the sender packed them / the receivers hold

  Member(int r, int s, std::shared_ptr<comm::Store> st, const std::vector<int64_t>& buckets) : rank(r), size(s), store(st) {
    comm::GroupOptions o;
    o.timeout_seconds = 600;
    raw = comm::Group::Join(*store, "bench/raw/", rank, size, o).value();
    for (int64_t n : buckets) raw_buffers.push_back(torch::full({n}, 0.5, torch::kBFloat16));
  }
  void Barrier() { (void)raw->Barrier(); }
  // A bare broadcast of every bucket.
  void RawSync() {
    for (auto& b : raw_buffers) {
      std::vector<torch::Tensor> v{b.view(torch::kFloat16)};
      auto s = raw->Broadcast(v, 0);
      if (!s.ok()) {
        std::fprintf(stderr, "raw broadcast: %s\n", s.ToString().c_str());
        std::exit(1);
      }
    }
  }
};

template <typename Fn>
double Timed(Member& m, int repeats, Fn&& fn) {
  fn();
  m.Barrier();
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    m.Barrier();
    auto t = bench::Clock::now();
    fn();
    m.Barrier();
    best = std::min(best, bench::Seconds(t));
  }
  return best;
}

comm::WeightGroupOptions GroupOptions(int64_t bucket_bytes, bool checksum) {
  comm::WeightGroupOptions o;
  o.group.timeout_seconds = 600;
  o.bucket_bytes = bucket_bytes;
  o.checksum = checksum;
  return o;
}

void Die(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}

// A rollout worker: takes the raw and the collective syncs, then serves UpdateWeights for the relay.
int Receiver(const Plan& p, int rank, int port) {
  auto store = comm::Store::Connect("127.0.0.1", port, 600).value();
  const auto cfg = Shape(p.shape);
  model::Transformer served(cfg);
  served->to(torch::kBFloat16);
  auto named = rollout::NamedParameters(*served);
  Member m(rank, p.workers + 1, store, BucketSizes(named, p.bucket_bytes));
  Timed(m, p.repeats, [&] { m.RawSync(); });
  for (bool checksum : {true, false}) {
    auto g = comm::WeightGroup::Join(*store, checksum ? 1 : 2, rank, p.workers + 1, GroupOptions(p.bucket_bytes, checksum), named);
    Die(g.status(), "join");
    Timed(m, p.repeats, [&] { Die((*g)->Receive(0, true).status(), "receive"); });
  }
  if (p.grpc) {
    rollout::RolloutService svc(served.get(), nullptr, {}, {{1, 8, true}});
    RpcConfig rpc;
    rpc.max_message_bytes = 64 << 20;
    auto server = RpcServer::Start(rpc, {"127.0.0.1:0", "rollout", nullptr}, {&svc});
    Die(server.status(), "serve");
    Die(store->Set("bench/grpc/" + std::to_string(rank), std::to_string((*server)->port())), "store");
    (void)store->Get("bench/done");
    (*server)->Shutdown();
  }
  return 0;
}

struct Figures {
  std::string shape;
  int workers = 0;
  double gbytes = 0;  // per worker
  double ours = 0, ours_unchecked = 0, raw = 0, memcpy_s = 0, grpc = -1;
};

Figures Sender(const Plan& p, model::TransformerImpl& learner, const std::string& self) {
  auto store = comm::Store::Host("127.0.0.1", 0, 600).value();
  std::vector<pid_t> kids;
  for (int r = 1; r <= p.workers; ++r) {
    std::vector<std::string> args = {self, "--receiver", "--rank", std::to_string(r), "--port",
                                     std::to_string(store->port()), "--shapes", p.shape, "--workers",
                                     std::to_string(p.workers), "--repeats", std::to_string(p.repeats),
                                     "--bucket-mb", std::to_string(p.bucket_bytes >> 20), "--grpc-workers",
                                     p.grpc ? std::to_string(p.workers) : "0", "--threads", "1"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      std::perror("posix_spawn");
      std::exit(1);
    }
    kids.push_back(pid);
  }
  auto named = rollout::NamedParameters(learner);
  Figures f;
  f.shape = p.shape;
  f.workers = p.workers;
  int64_t bytes = 0;
  for (const auto& [n, t] : named) bytes += t.numel() * 2;
  f.gbytes = static_cast<double>(bytes) / 1e9;
  Member m(0, p.workers + 1, store, BucketSizes(named, p.bucket_bytes));
  f.raw = Timed(m, p.repeats, [&] { m.RawSync(); });
  for (bool checksum : {true, false}) {
    auto g = comm::WeightGroup::Join(*store, checksum ? 1 : 2, 0, p.workers + 1, GroupOptions(p.bucket_bytes, checksum), named);
    Die(g.status(), "join");
    int64_t version = 0;
    (checksum ? f.ours : f.ours_unchecked) =
        Timed(m, p.repeats, [&] { Die((*g)->Send(named, ++version).status(), "send"); });
  }
  // The machine's bound: one copy of the same bytes.
  {
    auto src = torch::full({bytes / 2}, 0.5, torch::kBFloat16), dst = torch::empty_like(src);
    f.memcpy_s = bench::BestOf(p.repeats, [&] { dst.copy_(src); });
  }
  if (p.grpc) {
    RpcConfig rpc;
    rpc.max_message_bytes = 64 << 20;
    rpc.deadline_seconds = 600;
    std::vector<std::unique_ptr<Rollout::Stub>> stubs;
    for (int r = 1; r <= p.workers; ++r) {
      auto port = store->Get("bench/grpc/" + std::to_string(r));
      Die(port.status(), "store");
      stubs.push_back(Rollout::NewStub(MakeChannel(rpc, "127.0.0.1:" + *port).value()));
    }
    int64_t version = 0;
    f.grpc = bench::BestOf(p.repeats, [&] {
      ++version;
      for (auto& s : stubs) Die(rollout::PushWeights(s.get(), learner, version, 4 << 20, rpc).status(), "push");
    });
  }
  Die(store->Set("bench/done", "1"), "store");
  for (pid_t k : kids) {
    int st = 0;
    waitpid(k, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      std::fprintf(stderr, "a worker process failed\n");
      std::exit(1);
    }
  }
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  PrepareProcess(argc, argv);
  CLI::App app{"weight sync: learner -> rollout workers over a collective, beside raw broadcast, memcpy, gRPC"};
  std::vector<std::string> shapes = {"small", "qwen3-0.6b"};
  std::vector<int> workers = {1, 2, 4}, grpc_workers = {1, 2};
  int repeats = 3, threads = 1, rank = 0, port = 0;
  int64_t bucket_mb = 64;
  bool receiver = false;
  app.add_option("--shapes", shapes, "small, qwen3-0.6b")->delimiter(',');
  app.add_option("--workers", workers, "rollout worker counts")->delimiter(',');
  app.add_option("--grpc-workers", grpc_workers, "worker counts for which the gRPC relay is measured too")->delimiter(',');
  app.add_option("--repeats", repeats, "timed syncs (best is reported)");
  app.add_option("--bucket-mb", bucket_mb, "weights.bucket_bytes in MiB");
  app.add_option("--threads", threads, "LibTorch threads of each process");
  app.add_flag("--receiver", receiver, "internal: run as a worker process");
  app.add_option("--rank", rank, "internal");
  app.add_option("--port", port, "internal");
  CLI11_PARSE(app, argc, argv);
  InitLogging("warn");
  ConfigureRuntime(threads);
  auto in = [](const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); };
  if (receiver) {
    Plan p{shapes.at(0), workers.at(0), in(grpc_workers, workers.at(0)), repeats, bucket_mb << 20};
    return Receiver(p, rank, port);
  }
  bench::PrintMachine();
  {
    // The per-byte work a sync adds to a bare broadcast: the checksum and the learner's f32 -> bf16 packing.
    auto f32 = torch::full({int64_t{64} << 20}, 0.5f), bf = torch::empty({int64_t{64} << 20}, torch::kBFloat16);
    const double gb = static_cast<double>(bf.numel()) * 2 / 1e9;
    volatile uint64_t sink = 0;
    const double ck = bench::BestOf(3, [&] { sink = sink + comm::Checksum(bf.data_ptr(), bf.numel() * 2); });
    const double pack = bench::BestOf(3, [&] { bf.copy_(f32); });
    std::printf("per byte of bf16: checksum %.1f GB/s, packing from f32 %.1f GB/s\n", gb / ck, gb / pack);
  }
  const std::string self = "/proc/self/exe";
  char exe[4096] = {0};
  const ssize_t n = readlink(self.c_str(), exe, sizeof(exe) - 1);
  if (n <= 0) return 1;
  json runs = json::array();
  json headline;
  for (const auto& shape : shapes) {
    model::Transformer learner(Shape(shape));  // f32, as the learner holds it
    for (int w : workers) {
      Plan p{shape, w, in(grpc_workers, w), repeats, bucket_mb << 20};
      auto f = Sender(p, *learner, exe);
      const double overhead = f.ours / f.raw - 1;
      std::printf("%-10s %d worker%s  %.2f GB each: sync %.3f s (%.2f GB/s per worker), unchecked %.3f s, raw broadcast "
                  "%.3f s (overhead %+.1f%%), memcpy %.3f s (%.1f GB/s)",
                  shape.c_str(), w, w == 1 ? " " : "s", f.gbytes, f.ours, f.gbytes / f.ours, f.ours_unchecked, f.raw,
                  100 * overhead, f.memcpy_s, f.gbytes / f.memcpy_s);
      json r = {{"shape", shape}, {"workers", w}, {"gbytes_per_worker", f.gbytes}, {"sync_seconds", f.ours},
                {"sync_unchecked_seconds", f.ours_unchecked}, {"raw_broadcast_seconds", f.raw},
                {"memcpy_seconds", f.memcpy_s}, {"overhead_vs_raw_broadcast", overhead}};
      if (f.grpc > 0) {
        std::printf(", gRPC relay %.3f s (%.1fx slower)", f.grpc, f.grpc / f.ours);
        r["grpc_relay_seconds"] = f.grpc;
        r["speedup_vs_grpc_relay"] = f.grpc / f.ours;
      }
      std::printf("\n");
      std::fflush(stdout);
      runs.push_back(r);
      if (headline.is_null() || (shape == "qwen3-0.6b" && w == 2)) headline = r;
    }
  }
  json out = {{"bench", "weight_sync"},
              {"shape", headline["shape"]},
              {"workers", headline["workers"]},
              {"overhead_vs_raw_broadcast", headline["overhead_vs_raw_broadcast"]},
              {"speedup_vs_grpc_relay", headline.value("speedup_vs_grpc_relay", json())},
              {"runs", runs}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
