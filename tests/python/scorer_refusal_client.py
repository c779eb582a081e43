#!/usr/bin/python3
"""An independent client (python3-grpcio) of a scorer whose machine cannot isolate generated code:
  scorer_refusal_client.py GENERATED_PY_DIR HOST:PORT
The server has the code reward and exact match on. Checks that it answers Health, that every sample gets
FAILED_PRECONDITION from the code source with the sandbox's reason and no reward, and that it keeps
answering (the refusal never takes the process down)."""
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from rlhf import health_pb2, scoring_pb2  # noqa: E402

channel = grpc.insecure_channel(sys.argv[2])
check = channel.unary_unary("/rlhf.Health/Check", request_serializer=health_pb2.HealthRequest.SerializeToString,
                            response_deserializer=health_pb2.HealthReply.FromString)
score = channel.unary_unary("/rlhf.Scorer/Score", request_serializer=scoring_pb2.ScoreRequest.SerializeToString,
                            response_deserializer=scoring_pb2.ScoreReply.FromString)
for call in range(5):
    health = check(health_pb2.HealthRequest(), timeout=30)
    assert health.role == "scorer", health
    req = scoring_pb2.ScoreRequest()
    for i, completion in enumerate(["```python\nprint(7)\n```", "7"]):
        s = req.samples.add(prompt_id=f"py{call}-{i}", prompt="3+4=", completion=completion)
        s.extra["answer"] = '"7"'
    reply = score(req, timeout=60)
    assert len(reply.results) == 2
    for r in reply.results:
        assert r.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], r.error
        assert "code: the code sandbox cannot isolate" in r.error.message, r.error.message
        assert "refusing to run it unconfined" in r.error.message, r.error.message
        assert "code" not in r.sample.reward_parts, "a made-up code reward"
print("refused:", reply.results[0].error.message)
print("python client OK: the scorer refused the code reward 10 times and kept serving")
