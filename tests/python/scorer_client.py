#!/usr/bin/python3
"""An independent client of rlhf.Scorer (python3-grpcio + protoc's Python output, no C++ involved).
  scorer_client.py GENERATED_PY_DIR HOST:PORT
The server runs the exact-match verifier and the process (arithmetic step) checker. Checks rewards, parts
and step rewards of right and wrong multi-step solutions, and that bad requests get INVALID_ARGUMENT /
FAILED_PRECONDITION."""
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from rlhf import scoring_pb2  # noqa: E402

channel = grpc.insecure_channel(sys.argv[2])
score = channel.unary_unary("/rlhf.Scorer/Score", request_serializer=scoring_pb2.ScoreRequest.SerializeToString,
                            response_deserializer=scoring_pb2.ScoreReply.FromString)
req = scoring_pb2.ScoreRequest()
cases = [("16*4+36=", "16*4=64\n64+36=100\nanswer 100", "100", [1, 1], 1.0),
         ("16*4+36=", "16*4=54\n54+36=90\nanswer 90", "100", [0, 1], 0.0),
         ("5-33-65=", "5-33=-28\n-28-65=-93\nanswer -93", "-93", [1, 1], 1.0)]
for i, (prompt, completion, answer, _, _) in enumerate(cases):
    s = req.samples.add(prompt_id=f"py{i}", prompt=prompt, completion=completion)
    s.extra["answer"] = f'"{answer}"'
reply = score(req, timeout=60)
assert len(reply.results) == len(cases)
for r, (_, _, _, steps, exact) in zip(reply.results, cases):
    assert not r.HasField("error") or r.error.code == 0, r.error.message
    assert list(r.sample.step_rewards) == steps, (list(r.sample.step_rewards), steps)
    assert r.sample.reward_parts["exact_match"] == exact
    assert abs(r.sample.reward_parts["process"] - sum(steps) / len(steps)) < 1e-6
    assert abs(r.sample.reward - (exact + 0.5 * sum(steps) / len(steps))) < 1e-6, r.sample.reward
for bad, code in [(scoring_pb2.ScoreRequest(samples=[dict(completion_ids=[1, 2], logprobs=[-1.0])]),
                   grpc.StatusCode.INVALID_ARGUMENT),
                  (scoring_pb2.ScoreRequest(samples=[dict(completion="1")], want_ref_logprobs=True),
                   grpc.StatusCode.FAILED_PRECONDITION)]:
    try:
        score(bad, timeout=30)
        raise SystemExit("a bad request was accepted")
    except grpc.RpcError as e:
        assert e.code() == code, e.code()
        print(code.name, ":", e.details())
print(f"python client OK: {len(reply.results)} samples scored")
