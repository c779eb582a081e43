#!/usr/bin/env bash
# One config file for every role: `rlhf serve scorer` and `rlhf serve rollout` take the main example's run
# config (examples/grpo_arithmetic.yaml, with train.*, sft.*, rl.* ... sections they do not read) and serve,
# while a misspelt key is still refused by name. Bounded: each server has a timeout and is stopped by pid.
#   run_config_roles_test.sh RLHF PYTHON3 SOURCE_DIR
set -euo pipefail
rlhf="$1"
py="$2"
src="$3"
d="$(mktemp -d)"
source "$(dirname "$0")/../processes.sh"
sum_task "$rlhf" "$py" "$d" 8 0
ports=($(free_ports "$py" 2))
cfg="$src/examples/grpo_arithmetic.yaml"

serves() {  # serves NAME LINE COMMAND...: the server starts with the run config, logs LINE, stops on SIGTERM
  local name="$1" line="$2"
  shift 2
  timeout -k 10 120 "$@" > "$d/$name.log" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 1 600); do grep -q "$line" "$d/$name.log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  grep -q "$line" "$d/$name.log" || { echo "$name did not serve with the run config"; cat "$d/$name.log"; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || { echo "$name did not stop cleanly"; cat "$d/$name.log"; exit 1; }
  echo "$name: serves with the run config"
}
serves scorer "scorer serving" "$rlhf" serve scorer --config "$cfg" --address "127.0.0.1:${ports[0]}" \
  --run-dir "$d/r/scorer" --set run.log_level=info
serves rollout "rollout worker serving" "$rlhf" serve rollout --config "$cfg" --model "$d/m" \
  --address "127.0.0.1:${ports[1]}" --run-dir "$d/r/rollout" --set run.log_level=info --set rollout.capacity=64

# A misspelt key of any section is refused, by name, before anything is served.
for role in scorer rollout; do
  if timeout 60 "$rlhf" serve "$role" --config "$cfg" --set rollout.model="$d/m" --set reward.exact_matc_weight=1 \
       --run-dir "$d/r/bad-$role" > "$d/bad-$role.log" 2>&1; then
    echo "serve $role took a misspelt key"; exit 1
  fi
  grep -q "reward.exact_matc_weight" "$d/bad-$role.log" || { cat "$d/bad-$role.log"; exit 1; }
done
echo "misspelt keys refused by name"
