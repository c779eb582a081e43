#!/usr/bin/python3
"""Runs a command on a machine where the kernel refuses new user namespaces, as hardened hosts and many
Kubernetes nodes do, without changing the machine:
  without_user_namespaces.py COMMAND [ARGS...]
The command runs in a user namespace of its own (ids mapped to themselves: as root 0-65535, so that uid
65534 stays mapped; otherwise the caller's uid alone) whose user.max_user_namespaces is 0, so every
unshare(CLONE_NEWUSER) inside fails with ENOSPC: a real refusal by the kernel, not a simulation. Where
the machine refuses user namespaces already, the command runs as it is (the refusal is there). Exits with
the command's status; SIGTERM / SIGINT are passed on to it; 77 when the machine lets no refusal be made
(the limit cannot be written)."""
import ctypes
import os
import signal
import sys

CLONE_NEWUSER = 0x10000000
CANNOT = 77  # the exit status when no refusal can be made here (CTest's SKIP_RETURN_CODE)
libc = ctypes.CDLL(None, use_errno=True)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        if libc.unshare(CLONE_NEWUSER) != 0:
            err = ctypes.get_errno()
            print(f"without_user_namespaces: this machine refuses user namespaces already "
                  f"({os.strerror(err)}); running the command as it is", file=sys.stderr)
            os.write(ready_w, b"n")
        else:
            os.write(ready_w, b"y")
            if os.read(go_r, 1) != b"g":
                os._exit(125)
            try:
                write("/proc/sys/user/max_user_namespaces", "0\n")
            except OSError as e:
                print(f"without_user_namespaces: cannot make this machine refuse user namespaces ({e})",
                      file=sys.stderr)
                os._exit(CANNOT)
        os.execvp(sys.argv[1], sys.argv[1:])
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"y":
        uid, gid = os.getuid(), os.getgid()
        uid_map = "0 0 65536\n" if uid == 0 else f"{uid} {uid} 1\n"
        gid_map = "0 0 65536\n" if uid == 0 else f"{gid} {gid} 1\n"
        try:
            if uid != 0:
                write(f"/proc/{pid}/setgroups", "deny")
            write(f"/proc/{pid}/uid_map", uid_map)
            write(f"/proc/{pid}/gid_map", gid_map)
            os.write(go_w, b"g")
        except OSError as e:
            print(f"without_user_namespaces: cannot map the ids: {e}", file=sys.stderr)
            os.write(go_w, b"x")
    os.close(go_w)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda sig, _: os.kill(pid, sig))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    sys.exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
