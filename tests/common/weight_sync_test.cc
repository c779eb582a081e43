// Weights over a real c10d Gloo group on loopback: one thread per member (the learner as rank 0, rollout
// workers after it), each with its own connection to a real TCPStore. Buckets in the workers' dtype, a
// corrupt bucket detected, a version that is not newer refused without breaking the group, a sender that
// stops halfway ending at the deadline, and the next generation formed over the same store.
#include "common/comm/weight_sync.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

namespace rlhf::comm {
namespace {

// A small model's tensors: names and shapes as a decoder has them.
NamedTensors Model(torch::ScalarType dtype, int64_t hidden = 16, uint64_t seed = 1) {
  torch::manual_seed(seed);
  NamedTensors m;
  m.emplace_back("model.embed_tokens.weight", torch::randn({40, hidden}).to(dtype));
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    m.emplace_back(p + ".self_attn.q_proj.weight", torch::randn({hidden, hidden}).to(dtype));
    m.emplace_back(p + ".mlp.up_proj.weight", torch::randn({2 * hidden, hidden}).to(dtype));
    m.emplace_back(p + ".input_layernorm.weight", torch::randn({hidden}).to(dtype));
  }
  m.emplace_back("model.norm.weight", torch::randn({hidden}).to(dtype));
  return m;
}

WeightGroupOptions Options(double timeout = 20, int64_t bucket_bytes = 1024) {
  WeightGroupOptions o;
  o.group.timeout_seconds = timeout;
  o.bucket_bytes = bucket_bytes;
  return o;
}

// Runs fn(rank) for every member on its own thread, each joined to `generation` over its own client of
// the store; returns when all are done.
struct Members {
  std::shared_ptr<Store> host;
  Members() {
    auto s = Store::Host("127.0.0.1", 0, 20);
    EXPECT_TRUE(s.ok()) << s.status();
    host = *s;
  }
  void Run(int size, const std::function<void(int rank, Store& store)>& fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < size; ++r) {
      threads.emplace_back([&, r] {
        auto client = Store::Connect("127.0.0.1", host->port(), 20);
        ASSERT_TRUE(client.ok()) << client.status();
        fn(r, **client);
      });
    }
    for (auto& t : threads) t.join();
  }
};

TEST(Checksum, SeesAFlippedBitAMovedWordAndTheLength) {
  std::vector<uint8_t> bytes(1000);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 3);
  const uint64_t base = Checksum(bytes.data(), bytes.size());
  EXPECT_EQ(base, Checksum(bytes.data(), bytes.size()));
  for (size_t at : {0, 31, 500, 995, 999}) {
    auto flipped = bytes;
    flipped[at] ^= 0x10;
    EXPECT_NE(Checksum(flipped.data(), flipped.size()), base) << "bit flipped at " << at;
  }
  auto moved = bytes;
  std::swap_ranges(moved.begin(), moved.begin() + 8, moved.begin() + 8);
  EXPECT_NE(Checksum(moved.data(), moved.size()), base);
  EXPECT_NE(Checksum(bytes.data(), bytes.size() - 1), base);
}

TEST(WeightGroup, TwoBf16WorkersReceiveTheLearnersF32WeightsInBf16Buckets) {
  Members m;
  const auto learner = Model(torch::kFloat32);
  int64_t expected_bytes = 0;
  for (const auto& [n, t] : learner) expected_bytes += t.numel() * 2;
  std::vector<std::map<std::string, torch::Tensor>> got(3);
  m.Run(3, [&](int rank, Store& store) {
    const auto mine = rank == 0 ? learner : Model(torch::kBFloat16, 16, 99 + rank);
    auto g = WeightGroup::Join(store, 0, rank, 3, Options(), mine);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ((*g)->wire_dtype(), torch::kBFloat16);
    if (rank == 0) {
      auto s = (*g)->Send(learner, 7);
      ASSERT_TRUE(s.ok()) << s.status();
      EXPECT_EQ(s->bytes, expected_bytes);
      EXPECT_GT(s->buckets, 3) << "1 KiB buckets split the model";
    } else {
      auto r = (*g)->Receive(7, false);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->stats.version, 7);
      EXPECT_EQ(r->stats.bytes, expected_bytes);
      got[rank] = r->tensors;
    }
  });
  for (int rank : {1, 2}) {
    ASSERT_EQ(got[rank].size(), learner.size());
    for (const auto& [name, t] : learner) {
      const auto& r = got[rank].at(name);
      EXPECT_EQ(r.scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(torch::equal(r, t.to(torch::kBFloat16))) << name;
    }
  }
}

TEST(WeightGroup, WorkersOfDifferentDtypesGetFloat32) {
  Members m;
  const auto learner = Model(torch::kFloat32);
  m.Run(3, [&](int rank, Store& store) {
    auto g = WeightGroup::Join(store, 0, rank, 3, Options(),
                               Model(rank == 2 ? torch::kBFloat16 : torch::kFloat32));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ((*g)->wire_dtype(), torch::kFloat32);
    if (rank == 0) {
      ASSERT_TRUE((*g)->Send(learner, 1).ok());
    } else {
      auto r = (*g)->Receive(0, false);
      ASSERT_TRUE(r.ok()) << r.status();
      for (const auto& [name, t] : learner) EXPECT_TRUE(torch::equal(r->tensors.at(name), t)) << name;
    }
  });
}

TEST(WeightGroup, AModelOfAnotherShapeIsRefusedWhenTheGroupForms) {
  Members m;
  m.Run(3, [&](int rank, Store& store) {
    auto g = WeightGroup::Join(store, 0, rank, 3, Options(), Model(torch::kFloat32, rank == 2 ? 8 : 16));
    ASSERT_EQ(g.status().code(), absl::StatusCode::kFailedPrecondition) << g.status();
    EXPECT_NE(std::string(g.status().message()).find("rank(s) 2 "), std::string::npos) << g.status();
  });
}

TEST(WeightGroup, ACorruptBucketIsDetectedAndNothingIsHandedOut) {
  Members m;
  const auto learner = Model(torch::kFloat32);
  m.Run(3, [&](int rank, Store& store) {
    auto g = WeightGroup::Join(store, 0, rank, 3, Options(), learner);
    ASSERT_TRUE(g.ok()) << g.status();
    if (rank == 1) {
      (*g)->SetBucketHookForTesting([](int64_t bucket, torch::Tensor& flat) {
        if (bucket == 2) reinterpret_cast<uint8_t*>(flat.data_ptr())[5] ^= 0x01;
      });
    }
    if (rank == 0) {
      ASSERT_TRUE((*g)->Send(learner, 1).ok());
    } else {
      auto r = (*g)->Receive(0, false);
      if (rank == 1) {
        ASSERT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
        EXPECT_NE(std::string(r.status().message()).find("bucket 2 "), std::string::npos) << r.status();
      } else {
        EXPECT_TRUE(r.ok()) << r.status();
      }
    }
  });
}

TEST(WeightGroup, ChecksumsOffLetACorruptBucketThrough) {
  // The seam is real: without checksums the same flipped bit arrives unnoticed.
  Members m;
  const auto learner = Model(torch::kFloat32);
  m.Run(2, [&](int rank, Store& store) {
    auto o = Options();
    o.checksum = false;
    auto g = WeightGroup::Join(store, 0, rank, 2, o, learner);
    ASSERT_TRUE(g.ok()) << g.status();
    if (rank == 0) {
      ASSERT_TRUE((*g)->Send(learner, 1).ok());
      return;
    }
    (*g)->SetBucketHookForTesting([](int64_t bucket, torch::Tensor& flat) {
      if (bucket == 0) reinterpret_cast<uint8_t*>(flat.data_ptr())[5] ^= 0x01;
    });
    auto r = (*g)->Receive(0, false);
    ASSERT_TRUE(r.ok()) << r.status();
    bool differs = false;
    for (const auto& [name, t] : learner) differs |= !torch::equal(r->tensors.at(name), t);
    EXPECT_TRUE(differs);
  });
}

TEST(WeightGroup, AnOlderVersionIsRefusedAndTheGroupStaysInStep) {
  Members m;
  const auto v1 = Model(torch::kFloat32, 16, 1), v2 = Model(torch::kFloat32, 16, 2);
  m.Run(2, [&](int rank, Store& store) {
    auto g = WeightGroup::Join(store, 0, rank, 2, Options(), v1);
    ASSERT_TRUE(g.ok()) << g.status();
    if (rank == 0) {
      ASSERT_TRUE((*g)->Send(v1, 3).ok());
      ASSERT_TRUE((*g)->Send(v2, 4).ok());
      return;
    }
    auto r = (*g)->Receive(4, true);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
    r = (*g)->Receive(4, true);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stats.version, 4);
    for (const auto& [name, t] : v2) EXPECT_TRUE(torch::equal(r->tensors.at(name), t)) << name;
  });
}

TEST(WeightGroup, ASenderThatStopsHalfwayEndsTheSyncAtItsDeadlineAndTheNextGenerationWorks) {
  Members m;
  const auto learner = Model(torch::kFloat32);
  const double deadline = 2;
  m.Run(3, [&](int rank, Store& store) {
    auto g = WeightGroup::Join(store, 0, rank, 3, Options(deadline), learner);
    ASSERT_TRUE(g.ok()) << g.status();
    if (rank == 0) {
      (*g)->SetStopAfterBucketsForTesting(2);
      EXPECT_EQ((*g)->Send(learner, 1).status().code(), absl::StatusCode::kAborted);
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = (*g)->Receive(0, false);
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_FALSE(r.ok());
      EXPECT_TRUE(r.status().code() == absl::StatusCode::kDeadlineExceeded ||
                  r.status().code() == absl::StatusCode::kUnavailable)
          << r.status();
      EXPECT_LT(took, 4 * deadline) << "the sync ends at its deadline, not later";
    }
    // Generation 1 over the same store: a fresh group, a whole sync.
    auto g1 = WeightGroup::Join(store, 1, rank, 3, Options(), learner);
    ASSERT_TRUE(g1.ok()) << g1.status();
    if (rank == 0) {
      ASSERT_TRUE((*g1)->Send(learner, 1).ok());
    } else {
      auto r = (*g1)->Receive(0, false);
      ASSERT_TRUE(r.ok()) << r.status();
      for (const auto& [name, t] : learner) EXPECT_TRUE(torch::equal(r->tensors.at(name), t)) << name;
    }
  });
}

// A watched group names, in the error of a failed collective, the rank that holds it up.
GroupOptions Watched(double timeout) {
  GroupOptions o;
  o.timeout_seconds = timeout;
  o.watch = true;
  return o;
}

TEST(Group, ATimedOutCollectiveNamesTheLiveRankThatNeverReachedIt) {
  Members m;
  std::atomic<int> returned{0};
  m.Run(3, [&](int rank, Store& store) {
    auto g = Group::Join(store, "hung/", rank, 3, Watched(2));
    ASSERT_TRUE(g.ok()) << g.status();
    if (rank == 2) {  // alive (its heartbeat goes on) but busy elsewhere until the others gave up
      while (returned.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return;
    }
    std::vector<torch::Tensor> t = {torch::ones({4})};
    auto s = (*g)->AllReduceSum(t);
    ++returned;
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
    EXPECT_NE(s.message().find("rank 2 (pid "), std::string::npos) << s;
    EXPECT_NE(s.message().find("is alive but has not reached this collective"), std::string::npos) << s;
    EXPECT_EQ(s.message().find("rank " + std::to_string(1 - rank) + " "), std::string::npos) << "the other rank is fine: " << s;
  });
}

TEST(Group, AFailedCollectiveNamesTheRankWhoseHeartbeatStopped) {
  Members m;
  std::atomic<int> joined{0};
  m.Run(3, [&](int rank, Store& store) {
    auto g = Group::Join(store, "gone/", rank, 3, Watched(5));
    ASSERT_TRUE(g.ok()) << g.status();
    ++joined;
    if (rank == 2) {  // leaves once every member has formed the group: its connections close, its heartbeat stops
      while (joined.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      g->reset();
      return;
    }
    std::vector<torch::Tensor> t = {torch::ones({4})};
    auto s = (*g)->AllReduceSum(t);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("rank 2 (pid "), std::string::npos) << s;
    EXPECT_NE(s.message().find("has sent no heartbeat for 2 s"), std::string::npos) << s;
  });
}

}  // namespace
}  // namespace rlhf::comm
