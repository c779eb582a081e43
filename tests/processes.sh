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
