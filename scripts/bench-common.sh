#!/usr/bin/env bash
# Helpers the protocol benchmarks share. Sourced by scripts/bench-pg.sh and scripts/bench-mongo.sh,
# which set WORK (a scratch folder) and PIDS (processes to stop) first.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.5)" 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# utime + stime of a process and its threads, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# haproxy as a plain TCP passthrough from 127.0.0.1:LISTEN to 127.0.0.1:TARGET (any TLS stays
# end to end); sets HAPROXY_PID. Every server runs in its own session, as a service would:
# the kernel's autogroup scheduler shares CPU between sessions first, so a proxy left in the
# script's session would share one scheduling group with the load generator.
start_haproxy() { # NAME LISTEN TARGET
    cat > "$WORK/haproxy.cfg" <<CONF
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
listen $1
    bind 127.0.0.1:$2
    server $1 127.0.0.1:$3
CONF
    setsid haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=($HAPROXY_PID)
}
