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
