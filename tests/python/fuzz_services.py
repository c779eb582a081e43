#!/usr/bin/python3
"""A fuzzer of rlhf's gRPC servers (python3-grpcio; protoc's Python output only to build seeds).
  fuzz_services.py GENERATED_PY_DIR TOKEN_FILE N ROLE=HOST:PORT:PID...
For every server (ROLE: rollout, scorer, learner) and every service it serves (rlhf.Health and the
role's own, each method), N messages in all per service, drawn from five kinds:
  random      random bytes (0 to 2 KiB)
  mutated     a well-formed seed with bytes flipped, inserted or deleted
  truncated   a well-formed seed cut short
  wild        well-formed messages whose fields hold extreme values (huge counts, negative sizes, long strings)
  oversized   a message just over the servers' rpc.max_message_bytes (given as env FUZZ_MAX_BYTES)
plus 1% of calls without the token. Every call must end with a gRPC status within its deadline (no hang, no
dropped connection; a JoinWeightGroup may wait for its group until its 3 s deadline), every server must stay up (its pid alive, Health answering) and its resident memory
must stay flat (VmRSS after 10% and 55% of the calls and at the end, printed; at most 25% + 32 MiB more at
the end than after 10%). Streaming-request methods
(UpdateWeights) get 1 to 4 such messages. Learner/Finish is left out (a well-formed Finish ends the stage, as
it should). Prints one line per service and, last, one JSON line of the figures."""
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from google.protobuf import descriptor  # noqa: E402
from rlhf import health_pb2, learner_pb2, rollout_pb2, sample_pb2, scoring_pb2  # noqa: E402,F401

token = open(sys.argv[2]).read().strip()
N = int(sys.argv[3])
servers = []
for a in sys.argv[4:]:
    role, rest = a.split("=", 1)
    host, port, pid = rest.rsplit(":", 2)
    servers.append((role, f"{host}:{port}", int(pid)))
MAX_BYTES = int(os.environ.get("FUZZ_MAX_BYTES", str(1 << 20)))
DEADLINE = float(os.environ.get("FUZZ_DEADLINE", "20"))
rng = random.Random(int(os.environ.get("FUZZ_SEED", "1")))
lock = threading.Lock()

# (service, method, request class, request streaming, response streaming)
METHODS = {
    "health": [("rlhf.Health", "Check", health_pb2.HealthRequest, False, False)],
    "rollout": [("rlhf.Rollout", "Generate", rollout_pb2.GenerateRequest, False, True),
                ("rlhf.Rollout", "UpdateWeights", rollout_pb2.WeightChunk, True, False),
                ("rlhf.Rollout", "JoinWeightGroup", rollout_pb2.WeightGroupSpec, False, False),
                ("rlhf.Rollout", "ReceiveWeights", rollout_pb2.WeightSyncRequest, False, False),
                ("rlhf.Rollout", "LeaveWeightGroup", rollout_pb2.WeightSyncRequest, False, False)],
    "scorer": [("rlhf.Scorer", "Score", scoring_pb2.ScoreRequest, False, False)],
    "learner": [("rlhf.Learner", "State", learner_pb2.LearnerStateRequest, False, False),
                ("rlhf.Learner", "Train", learner_pb2.TrainRequest, False, False),
                ("rlhf.Learner", "Weights", learner_pb2.WeightsRequest, False, True),
                ("rlhf.Learner", "Checkpoint", learner_pb2.LearnerCheckpointRequest, False, False),
                ("rlhf.Learner", "JoinWeightGroup", rollout_pb2.WeightGroupSpec, False, False),
                ("rlhf.Learner", "BroadcastWeights", rollout_pb2.WeightSyncRequest, False, False),
                ("rlhf.Learner", "LeaveWeightGroup", rollout_pb2.WeightSyncRequest, False, False)],
}

INTS = [0, 1, -1, 2, 7, 64, 4096, 2 ** 31 - 1, -2 ** 31, 2 ** 63 - 1, -2 ** 63]


def wild_value(f, r, depth):
    t = f.type
    if t in (f.TYPE_INT32, f.TYPE_SINT32, f.TYPE_SFIXED32):
        return r.choice([v for v in INTS if -2 ** 31 <= v < 2 ** 31] + [r.randint(-1000, 1000)])
    if t in (f.TYPE_INT64, f.TYPE_SINT64, f.TYPE_SFIXED64):
        return r.choice(INTS + [r.randint(-10 ** 6, 10 ** 6)])
    if t in (f.TYPE_UINT32, f.TYPE_FIXED32):
        return r.choice([0, 1, 2 ** 32 - 1, r.randint(0, 1000)])
    if t in (f.TYPE_UINT64, f.TYPE_FIXED64):
        return r.choice([0, 1, 2 ** 64 - 1, r.randint(0, 10 ** 6)])
    if t in (f.TYPE_FLOAT, f.TYPE_DOUBLE):
        return r.choice([0.0, -1.0, 1e30, -1e30, float("nan"), float("inf"), r.uniform(-10, 10)])
    if t == f.TYPE_BOOL:
        return r.random() < 0.5
    if t == f.TYPE_STRING:
        return r.choice(["", "x" * r.randint(1, 300), "../../etc/passwd", "127.0.0.1", "gloo", "nccl", "é\u0000☃",
                         "model.layers.0.self_attn.q_proj.weight", "{\"a\": [1, 2", "%s%n"])
    if t == f.TYPE_BYTES:
        return os.urandom(r.choice([0, 1, 7, 64, 1000]))
    if t == f.TYPE_ENUM:
        return r.choice([v.number for v in f.enum_type.values] + [99, -5])
    raise ValueError(t)


def fill(msg, r, depth=0):
    for f in msg.DESCRIPTOR.fields:
        if r.random() < 0.35:
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            field = getattr(msg, f.name)
            kf, vf = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            for _ in range(r.choice([1, 2, 5])):
                k = wild_value(kf, r, depth)
                if vf.message_type is not None:
                    if depth < 3:
                        fill(field[k], r, depth + 1)
                else:
                    try:
                        field[k] = wild_value(vf, r, depth)
                    except (ValueError, TypeError):
                        pass
            continue
        count = r.choice([1, 1, 2, 3, 50]) if f.label == f.LABEL_REPEATED else 1
        for _ in range(count):
            try:
                if f.message_type is not None:
                    if depth >= 3:
                        break
                    sub = getattr(msg, f.name).add() if f.label == f.LABEL_REPEATED else getattr(msg, f.name)
                    fill(sub, r, depth + 1)
                    if f.label != f.LABEL_REPEATED:
                        sub.SetInParent()
                elif f.label == f.LABEL_REPEATED:
                    getattr(msg, f.name).append(wild_value(f, r, depth))
                else:
                    setattr(msg, f.name, wild_value(f, r, depth))
            except (ValueError, TypeError):
                pass
    return msg


def seed_of(cls, r):
    m = cls()
    fill(m, r)
    return m.SerializeToString()


def message(cls, kind, r):
    if kind == "random":
        return os.urandom(r.randint(0, 2048))
    if kind == "oversized":
        return os.urandom(MAX_BYTES + r.randint(1, 4096))
    b = bytearray(seed_of(cls, r))
    if kind == "truncated":
        return bytes(b[:r.randint(0, max(0, len(b) - 1))]) if b else b"\x0a"
    if kind == "mutated":
        for _ in range(r.randint(1, 8)):
            op = r.random()
            if op < 0.4 and b:
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            elif op < 0.7:
                b.insert(r.randint(0, len(b)), r.randrange(256))
            elif b:
                del b[r.randrange(len(b))]
        return bytes(b)
    return bytes(b)  # wild


KINDS = ["random", "mutated", "truncated", "wild"]


def one_call(channel, svc, method, cls, req_stream, resp_stream, r):
    kind = "oversized" if r.random() < 0.005 else r.choice(KINDS)
    md = [] if r.random() < 0.01 else [("authorization", f"Bearer {token}")]
    path = f"/{svc}/{method}"
    # A join waits for its group (up to the caller's deadline, which the server honours): a short one here.
    deadline = 3.0 if method == "JoinWeightGroup" else DEADLINE
    try:
        if req_stream:
            msgs = [message(cls, kind, r) for _ in range(r.randint(1, 4))]
            channel.stream_unary(path)(iter(msgs), timeout=deadline, metadata=md)
        elif resp_stream:
            for _ in channel.unary_stream(path)(message(cls, kind, r), timeout=deadline, metadata=md):
                pass
        else:
            channel.unary_unary(path)(message(cls, kind, r), timeout=deadline, metadata=md)
        return method, kind, "OK", ""
    except grpc.RpcError as e:
        return method, kind, e.code().name, e.details() or ""


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def healthy(channel):
    try:
        channel.unary_unary("/rlhf.Health/Check")(b"", timeout=10, metadata=[("authorization", f"Bearer {token}")])
        return True
    except grpc.RpcError:
        return False


figures = {"per_service": N, "services": {}, "failures": []}
opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
for role, address, pid in servers:
    channel = grpc.insecure_channel(address, options=opts)
    for svc in sorted({m[0] for m in METHODS["health"] + METHODS[role]}):
        methods = [m for m in METHODS["health"] + METHODS[role] if m[0] == svc]
        codes, kinds = {}, {}
        start = time.time()
        rss0 = rss_mid = None
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = []
            for i in range(N):
                m = methods[i % len(methods)]
                futures.append(pool.submit(one_call, channel, m[0], m[1], m[2], m[3], m[4], random.Random(rng.random())))
            for i, fu in enumerate(futures):
                method, kind, code, details = fu.result()
                codes[code] = codes.get(code, 0) + 1
                kinds[kind] = kinds.get(kind, 0) + 1
                waited = method == "JoinWeightGroup" and code in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
                broken = code in ("UNKNOWN", "CANCELLED", "DEADLINE_EXCEEDED") or (
                    code == "UNAVAILABLE" and any(w in details for w in ("Socket closed", "Connection reset",
                                                                          "failed to connect", "Broken pipe")))
                if broken and not waited:
                    figures["failures"].append(f"{role} {svc}/{method}: {kind} -> {code} {details[:120]}")
                if i == N // 10:
                    rss0 = rss_kib(pid)
                if i == N * 55 // 100:
                    rss_mid = rss_kib(pid)
        rss1 = rss_kib(pid)
        alive = os.path.exists(f"/proc/{pid}") and healthy(channel)
        took = time.time() - start
        key = f"{role}:{svc}"
        figures["services"][key] = {"calls": N, "codes": codes, "kinds": kinds, "rss_kib_after_10pct": rss0,
                                    "rss_kib_after_55pct": rss_mid, "rss_kib_end": rss1, "alive": alive, "seconds": round(took, 1)}
        print(f"{key:22s} {N} calls in {took:6.1f} s  codes {json.dumps(codes, sort_keys=True)}  "
              f"RSS {rss0 / 1024:.1f} -> {rss_mid / 1024:.1f} -> {rss1 / 1024:.1f} MiB  {'alive' if alive else 'DEAD'}", flush=True)
        if not alive:
            figures["failures"].append(f"{key}: the server died or stopped answering")
        if rss1 > rss0 * 1.25 + 32 * 1024:
            figures["failures"].append(f"{key}: resident memory grew {rss0} -> {rss1} KiB")
print(json.dumps(figures))
sys.exit(1 if figures["failures"] else 0)
