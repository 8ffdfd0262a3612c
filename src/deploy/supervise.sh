#!/bin/sh
# recur's plain supervisor, for devices without systemd (written into every deploy bundle as
# bin/supervise). Usage: supervise ROOT start|stop|restart|status
#   start    runs ROOT/current/bin/recur serve --config ROOT/current/recur.toml in the
#            background (detached, log in ROOT/run/recur.log, pid in ROOT/run/recur.pid)
#   stop     SIGTERM (recur serve drains and exits 0), SIGKILL after 20 s
# ROOT/supervise.env, when present, is sourced first; it may set RECUR_LAUNCHER to a command
# that runs the binary (e.g. "qemu-aarch64 -L /usr/aarch64-linux-gnu" on an emulated device).
set -eu
ROOT=$1
ACTION=$2
RUN="$ROOT/run"
PIDFILE="$RUN/recur.pid"
mkdir -p "$RUN"
if [ -f "$ROOT/supervise.env" ]; then . "$ROOT/supervise.env"; fi
LAUNCHER=${RECUR_LAUNCHER:-}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

stop() {
    if running; then
        pid=$(cat "$PIDFILE")
        kill -TERM "$pid" 2>/dev/null || true
        i=0
        while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do
            sleep 0.2
            i=$((i + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
}

start() {
    if running; then return 0; fi
    # The release is resolved now: the process keeps running it even when current moves.
    release=$(cd "$ROOT/current" && pwd -P)
    echo "== $(date -u '+%Y-%m-%dT%H:%M:%SZ') start $release" >>"$RUN/recur.log"
    # shellcheck disable=SC2086
    setsid $LAUNCHER "$release/bin/recur" serve --config "$release/recur.toml" \
        >>"$RUN/recur.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
}

case "$ACTION" in
start) start ;;
stop) stop ;;
restart)
    stop
    start
    ;;
status)
    if running; then echo "running $(cat "$PIDFILE")"; else echo "stopped"; exit 3; fi
    ;;
*)
    echo "usage: supervise ROOT start|stop|restart|status" >&2
    exit 2
    ;;
esac
