#!/usr/bin/python3
"""An independent client (python3-grpcio + protoc's Python output) of secured rlhf servers.
  auth_client.py GENERATED_PY_DIR CA_PEM TOKEN_FILE WRONG_TOKEN_FILE ROLE=HOST:PORT...
For every server (ROLE one of rollout, scorer, learner) and every service it serves (rlhf.Health and the
role's own), one call with no token, one with a wrong token and one with the right token, over TLS: they must
get UNAUTHENTICATED, UNAUTHENTICATED and OK. A plaintext channel to the same server must fail (UNAVAILABLE).
Waits (bounded) for the servers to come up."""
import sys
import time

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from rlhf import health_pb2, learner_pb2, rollout_pb2, scoring_pb2  # noqa: E402

ca = open(sys.argv[2], "rb").read()
token = open(sys.argv[3]).read().strip()
wrong = open(sys.argv[4]).read().strip()
servers = [a.split("=", 1) for a in sys.argv[5:]]


def generate_request():
    r = rollout_pb2.GenerateRequest(n=1)
    r.prompts.add(prompt_id="auth", ids=[3, 4, 5])
    r.params.max_new_tokens = 2
    r.params.temperature = 1.0
    return r


# (service, method, request, response type, streaming response)
CALLS = {
    "health": [("rlhf.Health", "Check", health_pb2.HealthRequest(), health_pb2.HealthReply, False)],
    "rollout": [("rlhf.Rollout", "Generate", generate_request(), rollout_pb2.GenerateResponse, True)],
    "scorer": [("rlhf.Scorer", "Score", scoring_pb2.ScoreRequest(), scoring_pb2.ScoreReply, False)],
    "learner": [("rlhf.Learner", "State", learner_pb2.LearnerStateRequest(), learner_pb2.LearnerStateReply, False)],
}


def call(channel, service, method, req, resp, stream, metadata):
    path = f"/{service}/{method}"
    if stream:
        fn = channel.unary_stream(path, request_serializer=type(req).SerializeToString, response_deserializer=resp.FromString)
        list(fn(req, timeout=30, metadata=metadata))
    else:
        fn = channel.unary_unary(path, request_serializer=type(req).SerializeToString, response_deserializer=resp.FromString)
        fn(req, timeout=30, metadata=metadata)
    return grpc.StatusCode.OK


def code_of(*args):
    try:
        return call(*args)
    except grpc.RpcError as e:
        return e.code()


creds = grpc.ssl_channel_credentials(root_certificates=ca)
checked = 0
for role, address in servers:
    channel = grpc.secure_channel(address, creds)
    # Up yet? (the right token; bounded)
    for _ in range(240):
        if code_of(channel, *CALLS["health"][0], [("authorization", f"Bearer {token}")]) == grpc.StatusCode.OK:
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"{role} at {address} never answered")
    for service, method, req, resp, stream in CALLS["health"] + CALLS[role]:
        got = [code_of(channel, service, method, req, resp, stream, md)
               for md in ([], [("authorization", f"Bearer {wrong}")], [("authorization", f"Bearer {token}")])]
        want = [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK]
        assert got == want, f"{role} {service}/{method}: {got}"
        print(f"{role:8s} {service}/{method}: no token {got[0].name}, wrong token {got[1].name}, right token {got[2].name}")
        checked += 1
    plain = grpc.insecure_channel(address)
    got = code_of(plain, *CALLS["health"][0], [("authorization", f"Bearer {token}")])
    assert got == grpc.StatusCode.UNAVAILABLE, f"plaintext to {role}: {got}"
    print(f"{role:8s} plaintext client: {got.name}")
print(f"auth client OK: {checked} services on {len(servers)} servers")
