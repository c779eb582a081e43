# Sourced by the serve_*_test.sh scripts: one rlhf server as its own process on loopback, answered to a
# python3-grpcio client (protoc's Python output, no C++ involved), then stopped with SIGTERM. Bounded:
# every step has a timeout and the server is killed on any exit.
#   serve_python_client PYTHON3 SOURCE_DIR WORK_DIR CLIENT_PY "PROTOS" STOP_LINE SERVER_COMMAND...
# SERVER_COMMAND's argument @ADDRESS@ becomes a free 127.0.0.1 port; the client gets WORK_DIR (with the
# generated modules) and that address. Source it after setting $d (the work directory): on exit the
# server is killed and $d removed, also when a step before the server fails.
source "$(dirname "${BASH_SOURCE[0]}")/processes.sh"
server_pid=""

serve_python_client() {
  local py="$1" src="$2" d="$3" client="$4" protos="$5" stop_line="$6"
  shift 6
  local port args=() a
  port=$(free_ports "$py" 1)
  for a in "$@"; do args+=("${a//@ADDRESS@/127.0.0.1:$port}"); done
  timeout -k 10 120 "${args[@]}" > "$d/server.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  # shellcheck disable=SC2086
  protoc --proto_path="$src/proto" --python_out="$d" $protos
  local ok=0 i
  for i in $(seq 1 60); do
    if timeout 30 "$py" "$client" "$d" "127.0.0.1:$port" > "$d/client.log" 2>&1; then ok=1; break; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  cat "$d/client.log"
  [ "$ok" = 1 ] || { echo "client never succeeded"; cat "$d/server.log"; exit 1; }
  kill -TERM "$server_pid"
  for i in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$server_pid" 2>/dev/null; then echo "server ignored SIGTERM"; exit 1; fi
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  grep -q "$stop_line" "$d/server.log" || { cat "$d/server.log"; exit 1; }
  echo "${args[1]} ${args[2]}: answered a python client and stopped cleanly (exit $rc)"
  return $rc
}
