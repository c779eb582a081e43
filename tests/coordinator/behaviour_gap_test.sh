#!/usr/bin/env bash
# Samples that do not match the policy are not trained (rl.max_behaviour_gap). An outside client (Python
# grpcio, no credentials) pushes the weights of another random model (scaled up) to rollout worker 1, stamped with the
# version the run is about to sync, while the run is paused just before that sync (RLHF_FAULT_PAUSE_*): the
# coordinator finds the version it expects there and sends nothing, so worker 1 generates the next step's
# samples with the wrong weights. The learner refuses exactly those groups, the log names the worker, the
# ledger records them as dropped with the worker, and the run completes. Bounded: every process has a
# timeout and is stopped by pid.
#   behaviour_gap_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"
py="$2"
src="$3"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 40 0
"$rlhf" init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 --vocab-size 300 \
  --tokenizer "$d/tok" --seed 99 --out "$d/other" --run-dir "$d/r/other" --set run.log_level=warn
protoc --proto_path="$src/proto" --python_out="$d" rlhf/rollout.proto rlhf/sample.proto rlhf/tensor.proto
ports=($(free_ports "$py" 3))
serve_rollout "$rlhf" "$d" 0 "${ports[0]}"
serve_rollout "$rlhf" "$d" 1 "${ports[1]}"
serve_scorer "$rlhf" "$d" "${ports[2]}"
mkdir -p "$d/pause"
RLHF_FAULT_PAUSE_DIR="$d/pause" RLHF_FAULT_PAUSE_BEFORE_SYNC=2 timeout -k 10 300 "$rlhf" train --model "$d/m" \
  --stages grpo --seed 7 --set run.threads=1 --run-dir "$d/run" \
  --set rl.data.path="$d/prompts.jsonl" --set rl.data.heldout_fraction=0.2 --set rl.steps=4 \
  --set rl.rollout_batch_size=4 --set rl.group_size=4 --set rl.max_new_tokens=4 --set rl.micro_batch_size=8 \
  --set rl.kl_coef=0 --set rl.max_behaviour_gap=0.5 --set eval.max_new_tokens=4 --set eval.max_prompts=4 \
  --set rollout.capacity=64 --set roles.lease_prompts=1 \
  --set "roles.rollout_addresses=[127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}]" \
  --set "roles.scorer_address=127.0.0.1:${ports[2]}" --set weights.transport=grpc > "$d/train.log" 2>&1 &
train=$!
pids+=($train)
wait_for_file "$d/pause/paused-2" "$train" || { echo "the run never paused"; cat "$d/train.log"; exit 1; }
"$py" - "$d" "127.0.0.1:${ports[1]}" <<'PY'
import array, json, struct, sys
sys.path.insert(0, sys.argv[1])
import grpc
from rlhf import rollout_pb2, tensor_pb2
with open(f"{sys.argv[1]}/other/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
dtypes = {"F32": tensor_pb2.DTYPE_F32, "BF16": tensor_pb2.DTYPE_BF16, "F16": tensor_pb2.DTYPE_F16}
names = [k for k in header if k != "__metadata__"]
def chunks():
    for i, name in enumerate(names):
        h = header[name]
        lo, hi = h["data_offsets"]
        raw = data[lo:hi]
        if h["dtype"] == "F32":  # another random model, scaled up so that its distributions are peaked
            a = array.array("f", raw)
            raw = array.array("f", (4.0 * x for x in a)).tobytes()
        yield rollout_pb2.WeightChunk(version=2, name=name, dtype=dtypes[h["dtype"]], shape=h["shape"], offset=0,
                                      data=raw, commit=i == len(names) - 1)
push = grpc.insecure_channel(sys.argv[2]).stream_unary(
    "/rlhf.Rollout/UpdateWeights", request_serializer=rollout_pb2.WeightChunk.SerializeToString,
    response_deserializer=rollout_pb2.UpdateWeightsReply.FromString)
r = push(chunks(), timeout=30)
print("outside push: worker 1 now reports version", r.version, "with", r.tensors, "tensors of another model")
PY
touch "$d/pause/resume-2"
if ! wait "$train"; then echo "the run failed"; tail -30 "$d/train.log"; exit 1; fi
grep -c "REFUSED" "$d/train.log" | sed 's/^/refusals logged: /'
grep -q "REFUSED prompt .* from rollout worker 1 (127.0.0.1:${ports[1]})" "$d/train.log" || {
  echo "no refusal naming worker 1"; cat "$d/train.log"; exit 1; }
if grep -q "REFUSED prompt .* from rollout worker 0" "$d/train.log"; then echo "worker 0 was refused"; exit 1; fi
"$py" - "$d/run" <<'PY'
import json, sys
run = sys.argv[1]
s = json.load(open(f"{run}/summary.json"))
assert s["duplicates"] == 0 and s["missing"] == 0 and s["steps"] == 4, s
refused = s["reasons"].get("behaviour gap (rollout worker 1)", 0)
assert refused >= 1 and s["prompts_dropped"] == refused, s
assert s["prompts_trained"] == 16 - refused, s
m = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
by_step = {x["step"]: x for x in m if x.get("stage") == "grpo"}
assert by_step[3]["refused_groups"] == refused, by_step[3]  # the step after the tampered sync
assert all(by_step[k]["refused_groups"] == 0 for k in (1, 2, 4)), by_step
print("behaviour gap: ok;", refused, "group(s) of worker 1 refused;", {k: s[k] for k in ("prompts_trained", "prompts_dropped", "duplicates", "missing")})
PY
