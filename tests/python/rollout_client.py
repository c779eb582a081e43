#!/usr/bin/python3
"""An independent client of rlhf.Rollout (python3-grpcio + protoc's Python output, no C++ involved).
  rollout_client.py GENERATED_PY_DIR HOST:PORT
Checks a streaming Generate (every sample carries ids, log-probs and a version) and that a bad request gets
INVALID_ARGUMENT."""
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from rlhf import rollout_pb2  # noqa: E402

channel = grpc.insecure_channel(sys.argv[2])
generate = channel.unary_stream("/rlhf.Rollout/Generate", request_serializer=rollout_pb2.GenerateRequest.SerializeToString,
                                response_deserializer=rollout_pb2.GenerateResponse.FromString)
req = rollout_pb2.GenerateRequest(n=2)
for i, ids in enumerate([[3, 4, 5], [7, 8]]):
    p = req.prompts.add(prompt_id=f"py{i}", prompt_index=100 + i, ids=ids)
    p.extra["answer"] = '"42"'
req.params.temperature = 0.9
req.params.top_p = 0.95
req.params.max_new_tokens = 5
req.params.seed = 7
samples = [s for resp in generate(req, timeout=60) for s in resp.samples]
assert len(samples) == 4, f"{len(samples)} samples"
for s in samples:
    assert s.prompt_index in (100, 101)
    assert 1 <= len(s.completion_ids) <= 5 and len(s.logprobs) == len(s.completion_ids)
    assert all(lp <= 0 for lp in s.logprobs)
    assert s.extra["answer"] == '"42"'
    assert s.policy_version == 0
bad = rollout_pb2.GenerateRequest(n=1)
bad.prompts.add(ids=[10 ** 6])
bad.params.max_new_tokens = 3
try:
    list(generate(bad, timeout=30))
    raise SystemExit("a bad token id was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    print("INVALID_ARGUMENT:", e.details())
print(f"python client OK: {len(samples)} samples")
