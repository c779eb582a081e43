# Sourced by the multi-process tests, after they set $d (their work directory): background servers put their
# PIDs in `pids` and get SIGTERM on exit (timeout passes it on to the server it runs, and kills it 10 s later
# with -k 10; a SIGKILLed timeout would leave its server running); then $d is removed.
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$d"' EXIT

# free_ports PYTHON3 N: N free loopback ports, separated by spaces.
free_ports() {
  "$1" -c "
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(('127.0.0.1', 0))
print(' '.join(str(s.getsockname()[1]) for s in ss))" "$2"
}

# server_of PID: the process whose parent is PID (the rlhf server under its `timeout`), from /proc (no procps
# on a minimal Debian); fails when there is none.
server_of() {
  local s pid ppid
  for s in /proc/[0-9]*/stat; do
    read -r pid _ _ ppid _ < "$s" 2>/dev/null || continue
    [ "$ppid" = "$1" ] && { echo "$pid"; return 0; }
  done
  return 1
}

# sum_task RLHF PYTHON3 DIR N LONG: N prompts "a+b=" with answers in DIR/prompts.jsonl (with LONG = 1, every
# 8th from the 6th on is 40+ tokens long: too long for a 64-token rollout context), a byte-level tokenizer
# trained on sums (DIR/tok) and a tiny random Llama over it (DIR/m).
sum_task() {
  local rlhf="$1" py="$2" dir="$3" n="$4" long="$5"
  "$py" - "$dir" "$n" "$long" <<'PY'
import json, sys
d, n, long = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
with open(f"{d}/prompts.jsonl", "w") as f, open(f"{d}/corpus.txt", "w") as c:
    for i in range(n):
        a, b = i % 7, i // 7 + 1
        p = "+".join(["1"] * 40) + f"+{a}=" if long and i % 8 == 5 else f"{a}+{b}="
        f.write(json.dumps({"prompt": p, "answer": str(a + b)}) + "\n")
    for i in range(200):
        c.write(f"{i % 13}+{i % 7}={i % 13 + i % 7}\n")
PY
  "$rlhf" train-tokenizer --corpus "$dir/corpus.txt" --merges 20 --out "$dir/tok" --run-dir "$dir/r/tok" --set run.log_level=warn
  "$rlhf" init-model --hidden-size 32 --layers 2 --heads 4 --kv-heads 2 --intermediate-size 64 --vocab-size 300 \
    --tokenizer "$dir/tok" --seed 3 --out "$dir/m" --run-dir "$dir/r/init" --set run.log_level=warn
}

# serve_rollout RLHF DIR INDEX PORT [NAME=VALUE...]: rollout worker INDEX of the model DIR/m on
# 127.0.0.1:PORT (64-token context, one thread; the NAME=VALUE pairs go to its environment: fault seams),
# logging to DIR/worker<INDEX>.log; its pid (of its `timeout`) goes into pids and $served.
serve_rollout() {
  local rlhf="$1" dir="$2" i="$3" port="$4"
  shift 4
  env "$@" timeout -k 10 300 "$rlhf" serve rollout --model "$dir/m" --address "127.0.0.1:$port" --run-dir "$dir/r/w$i" \
    --set rollout.capacity=64 --set run.threads=1 > "$dir/worker$i.log" 2>&1 &
  served=$!
  pids+=($served)
}

# serve_scorer RLHF DIR PORT: an exact-match scorer on 127.0.0.1:PORT, logging to DIR/scorer.log.
serve_scorer() {
  local rlhf="$1" dir="$2" port="$3"
  timeout -k 10 300 "$rlhf" serve scorer --address "127.0.0.1:$port" --run-dir "$dir/r/scorer" \
    --set reward.exact_match_weight=1 --set run.threads=1 > "$dir/scorer.log" 2>&1 &
  served=$!
  pids+=($served)
}

# wait_for_file FILE PID: until FILE exists (at most 120 s) while PID runs; fails when it never appears.
wait_for_file() {
  for _ in $(seq 1 1200); do
    [ -f "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  [ -f "$1" ]
}
