// The rollout worker service over real gRPC: streaming Generate, validation, chunked weight updates swapped
// in between generation groups, and a client written in another language (python3-grpcio).
#include "rollout/service.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <map>
#include <set>

#include "common/model/checkpoint.h"
#include "rollout/weight_client.h"
#include "tests/model/test_models.h"
#include "tests/test_util.h"

namespace rlhf::rollout {
namespace {

model::Transformer Model(uint64_t seed) {
  model::Transformer t(model::testing::Tiny("qwen3", false, 0, 61));
  t->InitWeights(seed, 0.3);
  t->eval();
  return t;
}

RpcConfig Rpc() {
  RpcConfig c;
  c.max_message_bytes = 1 << 20;
  c.deadline_seconds = 60;
  return c;
}

// Log-probs of a sample's completion recomputed with one full forward of `m` at temperature t.
torch::Tensor Recompute(model::TransformerImpl& m, const rlhf::Sample& s, double t) {
  torch::NoGradGuard ng;
  std::vector<int64_t> all(s.prompt_ids().begin(), s.prompt_ids().end());
  const int64_t P = static_cast<int64_t>(all.size()), T = s.completion_ids_size();
  all.insert(all.end(), s.completion_ids().begin(), s.completion_ids().end());
  auto ids = torch::tensor(all, torch::kInt64).unsqueeze(0);
  auto h = m.Hidden(ids);
  return m.TokenLogProbs(h.narrow(1, P - 1, T), ids.narrow(1, P, T), t).logprobs.squeeze(0);
}

GenerateRequest Request(int prompts, int n, int max_new) {
  GenerateRequest r;
  r.set_n(n);
  for (int i = 0; i < prompts; ++i) {
    auto* p = r.add_prompts();
    p->set_prompt_id("p" + std::to_string(i));
    p->set_prompt_index(i);
    for (int k = 0; k < 2 + i % 4; ++k) p->add_ids(1 + (i * 7 + k * 3) % 60);
  }
  r.mutable_params()->set_temperature(0.9);
  r.mutable_params()->set_max_new_tokens(max_new);
  r.mutable_params()->set_seed(3);
  return r;
}

std::vector<rlhf::Sample> Collect(Rollout::Stub* stub, const GenerateRequest& r, grpc::Status* status,
                                  const std::function<void(const rlhf::Sample&)>& each = {}) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, Rpc());
  auto reader = stub->Generate(&ctx, r);
  std::vector<rlhf::Sample> out;
  GenerateResponse resp;
  while (reader->Read(&resp)) {
    for (const auto& s : resp.samples()) {
      out.push_back(s);
      if (each) each(s);
    }
  }
  *status = reader->Finish();
  return out;
}

TEST(RolloutService, StreamsSamplesWithTheirLogProbs) {
  auto m = Model(1);
  RolloutService svc(m.get(), nullptr, {}, {{4, 64, true}});
  auto server = RpcServer::Start(Rpc(), {"127.0.0.1:0", "rollout", [&] { return svc.version(); }}, {&svc});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Rollout::NewStub(MakeChannel(Rpc(), "127.0.0.1:" + std::to_string((*server)->port())).value());
  grpc::Status st;
  auto samples = Collect(stub.get(), Request(3, 2, 6), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(samples.size(), 6u);
  std::set<std::pair<int64_t, int>> seen;
  for (const auto& s : samples) {
    seen.insert({s.prompt_index(), s.sample_index()});
    EXPECT_EQ(s.policy_version(), 0);
    EXPECT_TRUE(torch::allclose(Recompute(*m, s, 0.9), torch::tensor(std::vector<float>(s.logprobs().begin(), s.logprobs().end())), 1e-4, 1e-5));
  }
  EXPECT_EQ(seen.size(), 6u);
  auto health = CheckHealth((*server)->InProcessChannel(), Rpc());
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->role, "rollout");
}

TEST(RolloutService, BadRequestsAreInvalidArgument) {
  auto m = Model(1);
  RolloutService svc(m.get(), nullptr, {}, {{4, 16, true}});
  auto server = RpcServer::Start(Rpc(), {"", "rollout", nullptr}, {&svc});
  ASSERT_TRUE(server.ok());
  auto stub = Rollout::NewStub((*server)->InProcessChannel());
  auto expect_invalid = [&](GenerateRequest r, const std::string& needle) {
    grpc::Status st;
    Collect(stub.get(), r, &st);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << needle;
    EXPECT_NE(st.error_message().find(needle), std::string::npos) << st.error_message();
  };
  auto r = Request(1, 1, 4);
  r.mutable_prompts(0)->add_ids(61);
  expect_invalid(r, "token id 61 outside [0, 61)");
  r = Request(1, 1, 4);
  r.mutable_params()->set_temperature(-1);
  expect_invalid(r, "temperature");
  r = Request(1, 0, 4);
  expect_invalid(r, "n must be");
  r = Request(1, 1, 4);
  for (int k = 0; k < 20; ++k) r.mutable_prompts(0)->add_ids(5);
  expect_invalid(r, "the context holds 16");
  r = Request(1, 1, 4);
  r.mutable_prompts(0)->clear_ids();
  r.mutable_prompts(0)->set_text("hello");
  expect_invalid(r, "no tokenizer");
}

TEST(RolloutService, WeightsSwapBetweenGroupsWhileAStreamRuns) {
  auto served = Model(1);
  auto v0 = Model(1), v1 = Model(2);  // references for recomputation
  RolloutService svc(served.get(), nullptr, {}, {{2, 64, true}});  // 2 slots: groups of 2 prompts
  auto server = RpcServer::Start(Rpc(), {"127.0.0.1:0", "rollout", nullptr}, {&svc});
  ASSERT_TRUE(server.ok());
  auto channel = MakeChannel(Rpc(), "127.0.0.1:" + std::to_string((*server)->port())).value();
  auto stub = Rollout::NewStub(channel);
  auto pusher = Rollout::NewStub(channel);
  // The push happens at a point of the stream the test chooses, not when the client happens to read: right
  // after the first sample of the first group is written, while that group still holds the model. The
  // update (many small chunks over gRPC) is committed before the group's second sample is generated, and
  // must wait for the group boundary: the second sample is still v0, every later group v1.
  int written = 0;
  svc.SetStreamHookForTesting([&](const rlhf::Sample& s) {
    if (written++ != 0) return;
    EXPECT_EQ(s.policy_version(), 0);
    auto reply = PushWeights(pusher.get(), *v1, 1, 4096, Rpc());  // small chunks: many per tensor
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->version(), 1);  // committed; svc.version() would wait for the group (it takes the model)
  });
  grpc::Status st;
  auto samples = Collect(stub.get(), Request(12, 1, 8), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(samples.size(), 12u);
  std::map<int64_t, int64_t> version_of;  // prompt -> version
  for (const auto& s : samples) {
    version_of[s.prompt_index()] = s.policy_version();
    auto& ref = s.policy_version() == 0 ? *v0 : *v1;
    EXPECT_TRUE(torch::allclose(Recompute(ref, s, 0.9), torch::tensor(std::vector<float>(s.logprobs().begin(), s.logprobs().end())), 1e-4, 1e-5))
        << "sample of prompt " << s.prompt_index() << " stamped v" << s.policy_version();
  }
  ASSERT_EQ(version_of.size(), 12u);
  for (const auto& [prompt, version] : version_of) {
    EXPECT_EQ(version, prompt < 2 ? 0 : 1) << "prompt " << prompt << " (groups of 2 prompts)";
  }
  EXPECT_EQ(svc.version(), 1);
}

TEST(RolloutService, BrokenUpdatesApplyNothing) {
  auto m = Model(1);
  auto before = m->model->norm->weight.clone();
  RolloutService svc(m.get(), nullptr, {}, {{2, 32, true}});
  auto server = RpcServer::Start(Rpc(), {"", "rollout", nullptr}, {&svc});
  auto stub = Rollout::NewStub((*server)->InProcessChannel());
  {
    grpc::ClientContext ctx;
    UpdateWeightsReply reply;
    auto w = stub->UpdateWeights(&ctx, &reply);
    WeightChunk c;
    c.set_version(5);
    c.set_name("model.norm.weight");
    c.set_dtype(DTYPE_F32);
    c.add_shape(32);
    std::vector<float> half(16, 9.0f);
    c.set_data(half.data(), half.size() * 4);
    w->Write(c);  // half a tensor, and no commit
    w->WritesDone();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::ABORTED);
  }
  {
    grpc::ClientContext ctx;
    UpdateWeightsReply reply;
    auto w = stub->UpdateWeights(&ctx, &reply);
    WeightChunk c;
    c.set_version(6);
    c.set_name("model.nonexistent.weight");
    c.set_dtype(DTYPE_F32);
    c.set_commit(true);
    w->Write(c);
    w->WritesDone();
    auto st = w->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("unknown tensor"), std::string::npos);
  }
  {
    // One whole tensor and a commit: a stream that names only some tensors never commits.
    grpc::ClientContext ctx;
    UpdateWeightsReply reply;
    auto w = stub->UpdateWeights(&ctx, &reply);
    WeightChunk c;
    c.set_version(7);
    c.set_name("model.norm.weight");
    c.set_dtype(DTYPE_F32);
    c.add_shape(32);
    std::vector<float> whole(32, 9.0f);
    c.set_data(whole.data(), whole.size() * 4);
    c.set_commit(true);
    w->Write(c);
    w->WritesDone();
    auto st = w->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("names 1 of the model's"), std::string::npos) << st.error_message();
  }
  EXPECT_EQ(svc.version(), 0);
  EXPECT_TRUE(torch::equal(m->model->norm->weight, before));
}

// The learner's side of a weight group, played by the test: joins as rank 0 while the worker joins through
// its RPC, over a real store and a real Gloo group on loopback.
struct TestSender {
  std::shared_ptr<comm::Store> store;
  std::unique_ptr<comm::WeightGroup> group;
  WeightGroupSpec Spec(int64_t generation, double timeout) const {
    WeightGroupSpec spec;
    spec.set_store_host("127.0.0.1");
    spec.set_store_port(store->port());
    spec.set_generation(generation);
    spec.set_rank(1);
    spec.set_size(2);
    spec.set_timeout_seconds(timeout);
    spec.set_bucket_bytes(2048);
    spec.set_checksum(true);
    spec.set_backend("gloo");
    return spec;
  }
  // Forms `generation` with the worker behind `stub`; returns the worker's answer.
  grpc::Status Form(Rollout::Stub* stub, model::TransformerImpl& learner, int64_t generation, double timeout) {
    grpc::Status st;
    std::thread worker([&] {
      grpc::ClientContext ctx;
      WeightGroupReply reply;
      st = stub->JoinWeightGroup(&ctx, Spec(generation, timeout), &reply);
    });
    auto spec = Spec(generation, timeout);
    spec.set_rank(0);
    auto g = JoinWeightGroup(spec, NamedParameters(learner));
    worker.join();
    EXPECT_TRUE(g.ok()) << g.status();
    if (g.ok()) group = std::move(*g);
    return st;
  }
  // Sends `version` (stopping after `stop_after` buckets when >= 0) while the worker receives it.
  grpc::Status Sync(Rollout::Stub* stub, model::TransformerImpl& learner, int64_t version, int64_t stop_after = -1) {
    grpc::Status st;
    std::thread worker([&] {
      grpc::ClientContext ctx;
      WeightSyncRequest req;
      req.set_version(version);
      req.set_generation(group->generation());
      UpdateWeightsReply reply;
      st = stub->ReceiveWeights(&ctx, req, &reply);
    });
    group->SetStopAfterBucketsForTesting(stop_after);
    (void)group->Send(NamedParameters(learner), version);
    worker.join();
    return st;
  }
};

TEST(RolloutService, WeightsOverAGroupSwapInOnlyWhenEveryBucketIsRight) {
  auto served = Model(1);
  auto v1 = Model(2), v2 = Model(3);
  RolloutService svc(served.get(), nullptr, {}, {{2, 32, true}});
  auto server = RpcServer::Start(Rpc(), {"", "rollout", [&] { return svc.next_version(); }}, {&svc});
  ASSERT_TRUE(server.ok());
  auto stub = Rollout::NewStub((*server)->InProcessChannel());
  TestSender sender;
  auto store = comm::Store::Host("127.0.0.1", 0, 20);
  ASSERT_TRUE(store.ok()) << store.status();
  sender.store = *store;
  auto st = sender.Form(stub.get(), *v1, 1, 20);
  ASSERT_TRUE(st.ok()) << st.error_message();

  // A whole sync: generation uses the new weights.
  st = sender.Sync(stub.get(), *v1, 1);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(svc.version(), 1);
  for (const auto& p : v1->named_parameters(true)) {
    EXPECT_TRUE(torch::equal(served->named_parameters(true)[p.key()], p.value())) << p.key();
  }

  // A bucket corrupted on arrival: DATA_LOSS, nothing swapped in, and the worker has left the group.
  const auto held = served->model->norm->weight.clone();
  svc.SetWeightBucketHookForTesting([](int64_t bucket, torch::Tensor& flat) {
    if (bucket == 1) reinterpret_cast<uint8_t*>(flat.data_ptr())[3] ^= 0x40;
  });
  st = sender.Form(stub.get(), *v2, 2, 20);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = sender.Sync(stub.get(), *v2, 2);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << st.error_message();
  EXPECT_NE(st.error_message().find("checksum"), std::string::npos) << st.error_message();
  EXPECT_EQ(svc.version(), 1);
  EXPECT_EQ(svc.next_version(), 1);
  EXPECT_TRUE(torch::equal(served->model->norm->weight, held));
  {
    grpc::ClientContext ctx;
    WeightSyncRequest req;
    req.set_version(2);
    req.set_generation(2);
    UpdateWeightsReply reply;
    EXPECT_EQ(stub->ReceiveWeights(&ctx, req, &reply).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  svc.SetWeightBucketHookForTesting(nullptr);

  // A sender that stops halfway: the worker's sync ends at the deadline, nothing swapped in.
  st = sender.Form(stub.get(), *v2, 3, 2);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const auto t0 = std::chrono::steady_clock::now();
  st = sender.Sync(stub.get(), *v2, 2, /*stop_after=*/1);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || st.error_code() == grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  EXPECT_LT(took, 8);
  EXPECT_EQ(svc.version(), 1);

  // The next generation brings version 2 whole.
  st = sender.Form(stub.get(), *v2, 4, 20);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = sender.Sync(stub.get(), *v2, 2);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(svc.version(), 2);
  for (const auto& p : v2->named_parameters(true)) {
    EXPECT_TRUE(torch::equal(served->named_parameters(true)[p.key()], p.value())) << p.key();
  }
}

TEST(RolloutService, WeightsFromACheckpointFolder) {
  auto served = Model(1);
  auto v2 = Model(2);
  std::string dir = ::testing::TempDir() + "/rollout_v2";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(model::SaveModel(*v2, dir).ok());
  RolloutService svc(served.get(), nullptr, {}, {{2, 32, true}});
  ASSERT_TRUE(svc.StageFromFolder(dir, 2).ok());
  EXPECT_EQ(svc.version(), 2);  // idle worker: applied at once
  auto server = RpcServer::Start(Rpc(), {"", "rollout", nullptr}, {&svc});
  auto stub = Rollout::NewStub((*server)->InProcessChannel());
  grpc::Status st;
  auto samples = Collect(stub.get(), Request(2, 1, 4), &st);
  ASSERT_TRUE(st.ok());
  for (const auto& s : samples) {
    EXPECT_EQ(s.policy_version(), 2);
    EXPECT_TRUE(torch::allclose(Recompute(*v2, s, 0.9), torch::tensor(std::vector<float>(s.logprobs().begin(), s.logprobs().end())), 1e-4, 1e-5));
  }
  // A folder of another shape is refused and changes nothing.
  auto other = model::testing::Tiny("qwen3", false, 0, 70);
  model::Transformer wrong(other);
  std::string bad = ::testing::TempDir() + "/rollout_wrong";
  std::filesystem::remove_all(bad);
  ASSERT_TRUE(model::SaveModel(*wrong, bad).ok());
  auto s = svc.StageFromFolder(bad, 3);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(svc.version(), 2);
}

TEST(RolloutService, AnswersAPythonGrpcClient) {
  auto m = Model(1);
  RolloutService svc(m.get(), nullptr, {}, {{4, 64, true}});
  auto server = RpcServer::Start(Rpc(), {"127.0.0.1:0", "rollout", nullptr}, {&svc});
  ASSERT_TRUE(server.ok());
  std::string out = ::testing::TempDir() + "/py_rlhf_proto";
  std::filesystem::create_directories(out);
  auto gen = rlhf::testing::RunCommand("protoc --proto_path='" + std::string(RLHF_SOURCE_DIR) + "/proto' --python_out='" +
                                       out + "' rlhf/tensor.proto rlhf/sample.proto rlhf/rollout.proto");
  ASSERT_EQ(gen.code, 0) << gen.out;
  auto run = rlhf::testing::RunCommand(std::string(RLHF_PYTHON3) + " '" + RLHF_SOURCE_DIR +
                                       "/tests/python/rollout_client.py' '" + out + "' 127.0.0.1:" +
                                       std::to_string((*server)->port()));
  EXPECT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("python client OK: 4 samples"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace rlhf::rollout
