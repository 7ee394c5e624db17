#!/usr/bin/env bash
# Side-by-side throughput of the runtime bindings, with real processes on loopback.
#
# For each runtime (tokio, mio, async-std) and each client, starts fresh servers on that runtime
# and sends MESSAGES messages of SIZE bytes over CONCURRENCY parallel sessions to:
#   sink: `xshadow sink --runtime R` (one Maildir file per message, fsynced before the 250);
#   edge: `xshadow edge --runtime R` (spool on disk, default delayed acknowledgement, so a
#         client without XSHADOW gets its 250 once the next hop took the message), relaying to
#         `xshadow sink --runtime R`.
# Clients: Postfix's smtp-source with a new connection per message, smtp-source -d (one
# connection per session for the whole run) and `xshadow send` (100 messages per connection).
# Every row checks that all messages arrived in the Maildir, and prints one table line:
# runtime, client, target, messages, seconds, msg/s, CPU time (user + system, all threads,
# from /proc/PID/stat) of each server process per message, and the 1-minute load average when
# the row started.
#
# Usage: bash scripts/bench-bindings.sh            (needs smtp-source: scripts/test-deps.sh)
# Environment: MESSAGES (20000), SIZE (1024), CONCURRENCY (20), RUNTIMES ("tokio mio
# async-std"), CLIENTS ("smtp-source smtp-source-d send"), TARGETS ("sink edge"), SPOOL_DIR
# (on disk; default target/bench-bindings), MAILDIR_DIR (default /dev/shm when it exists: the
# sink's fsynced files, kept off the disk the edge's spool syncs to), SKIP_BUILD=1, REVISION
# (what the header names as the source).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-1024}
CONCURRENCY=${CONCURRENCY:-20}
RUNTIMES=${RUNTIMES:-"tokio mio async-std"}
CLIENTS=${CLIENTS:-"smtp-source smtp-source-d send"}
TARGETS=${TARGETS:-"sink edge"}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
XSHADOW=$TARGET_DIR/release/xshadow

if [[ ! -x $SMTP_SOURCE ]]; then
    echo "bench-bindings: $SMTP_SOURCE missing (bash scripts/test-deps.sh installs it)" >&2
    exit 1
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --all-features >&2
fi

SPOOL_BASE=$(mkdir -p "${SPOOL_DIR:-$TARGET_DIR/bench-bindings}" && cd "${SPOOL_DIR:-$TARGET_DIR/bench-bindings}" && pwd)
WORK=$(mktemp -d "$SPOOL_BASE/run.XXXXXX")
if [[ -n ${MAILDIR_DIR:-} ]]; then
    MAILS=$(mktemp -d "$MAILDIR_DIR/xshadow-bench-mail.XXXXXX")
elif [[ -d /dev/shm ]]; then
    MAILS=$(mktemp -d /dev/shm/xshadow-bench-mail.XXXXXX)
else
    MAILS=$(mktemp -d "$WORK/mail.XXXXXX")
fi
TICKS=$(getconf CLK_TCK)

# Every process this script starts, stopped on any exit: SIGTERM, and SIGKILL for one that
# still runs 10 s later (said on stderr).
PIDS=()
running() {
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $state != Z ]]
}
stop_all() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 1 100); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            echo "bench-bindings: $(tr '\0' ' ' <"/proc/$pid/cmdline") still runs 10 s after SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    rm -rf "$WORK" "$MAILS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# cpu_ticks PID: user + system clock ticks of the process, all threads (fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name).
cpu_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$rest"
}

# wait_listening LOG PID: until the log says it listens (the process binds first).
wait_listening() {
    local i
    for i in $(seq 1 300); do
        if grep -q "listening" "$1" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$2" 2>/dev/null; then
            echo "bench-bindings: server exited; its log:" >&2
            cat "$1" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "bench-bindings: no \"listening\" in $1 after 15 s" >&2
    return 1
}

# start_sink RUNTIME DIR: sets SINK_PID and SINK_PORT.
start_sink() {
    SINK_PORT=$(free_port)
    "$XSHADOW" sink --runtime "$1" --listen "127.0.0.1:$SINK_PORT" --maildir "$2/maildir" \
        >"$2/sink.log" 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_listening "$2/sink.log" "$SINK_PID"
}

# start_edge RUNTIME DIR RELAY_PORT: sets EDGE_PID and EDGE_PORT.
start_edge() {
    EDGE_PORT=$(free_port)
    "$XSHADOW" edge --runtime "$1" --name edge.bench.test --listen "127.0.0.1:$EDGE_PORT" \
        --spool "$2/spool" --relay "127.0.0.1:$3" >"$2/edge.log" 2>&1 &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    wait_listening "$2/edge.log" "$EDGE_PID"
}

# run_client CLIENT PORT LOG: sends MESSAGES, fails unless every one was accepted.
run_client() {
    case $1 in
        smtp-source)
            "$SMTP_SOURCE" -s "$CONCURRENCY" -m "$MESSAGES" -l "$SIZE" \
                -f load@example.org -t sink@example.net "127.0.0.1:$2" >"$3" 2>&1
            ;;
        smtp-source-d)
            "$SMTP_SOURCE" -d -s "$CONCURRENCY" -m "$MESSAGES" -l "$SIZE" \
                -f load@example.org -t sink@example.net "127.0.0.1:$2" >"$3" 2>&1
            ;;
        send)
            "$XSHADOW" send --server "127.0.0.1:$2" --count "$MESSAGES" --size "$SIZE" \
                --concurrency "$CONCURRENCY" --from load@example.org --to sink@example.net \
                >"$3" 2>&1
            ;;
        *)
            echo "bench-bindings: unknown client $1" >&2
            return 1
            ;;
    esac
}

# wait_delivered MAILDIR: until MESSAGES files are in new/ (60 s at most).
wait_delivered() {
    local i n=0
    for i in $(seq 1 600); do
        n=$(find "$1/new" -maxdepth 1 -type f 2>/dev/null | wc -l)
        if ((n >= MESSAGES)); then
            if ((n > MESSAGES)); then
                echo "bench-bindings: $n messages in $1, expected $MESSAGES" >&2
                return 1
            fi
            return 0
        fi
        sleep 0.1
    done
    echo "bench-bindings: only $n of $MESSAGES messages in $1 after 60 s" >&2
    return 1
}

us_per_message() {
    awk -v t="$1" -v hz="$TICKS" -v n="$MESSAGES" 'BEGIN { printf "%.0f", t / hz / n * 1e6 }'
}

client_name() {
    case $1 in
        smtp-source) echo "smtp-source" ;;
        smtp-source-d) echo "smtp-source -d" ;;
        send) echo "xshadow send" ;;
    esac
}

# What was built: this checkout's commit, unless REVISION says (e.g. for a copy of a commit
# made with `git archive`, which is no checkout of its own).
revision() {
    if [[ -n ${REVISION:-} ]]; then
        echo "$REVISION"
    elif [[ $(git rev-parse --show-toplevel 2>/dev/null) == "$PWD" ]]; then
        echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo ' with uncommitted changes')"
    else
        echo "$PWD (not a git checkout)"
    fi
}

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), source $(revision), $(nproc) cores"
echo "# uptime at start: $(uptime)"
echo "# $MESSAGES messages of $SIZE bytes, $CONCURRENCY parallel sessions; spool in $SPOOL_BASE, Maildir in $(dirname "$MAILS")"
echo
echo "| runtime | client | target | messages | seconds | msg/s | server CPU per message | load |"
echo "|---|---|---|---|---|---|---|---|"
for runtime in $RUNTIMES; do
    for client in $CLIENTS; do
        for target in $TARGETS; do
            dir="$WORK/$runtime-$client-$target"
            mkdir -p "$dir"
            load=$(cut -d' ' -f1 /proc/loadavg)
            start_sink "$runtime" "$MAILS"
            port=$SINK_PORT
            if [[ $target == edge ]]; then
                start_edge "$runtime" "$dir" "$SINK_PORT"
                port=$EDGE_PORT
            fi
            sink_before=$(cpu_ticks "$SINK_PID")
            edge_before=0
            [[ $target == edge ]] && edge_before=$(cpu_ticks "$EDGE_PID")
            t0=$(date +%s.%N)
            if ! run_client "$client" "$port" "$dir/client.log"; then
                echo "bench-bindings: $client to the $target on $runtime failed:" >&2
                tail -20 "$dir/client.log" >&2
                exit 1
            fi
            t1=$(date +%s.%N)
            wait_delivered "$MAILS/maildir"
            sink_cpu=$(($(cpu_ticks "$SINK_PID") - sink_before))
            if [[ $target == edge ]]; then
                edge_cpu=$(($(cpu_ticks "$EDGE_PID") - edge_before))
                cpu="edge $(us_per_message "$edge_cpu") µs + sink $(us_per_message "$sink_cpu") µs"
            else
                cpu="sink $(us_per_message "$sink_cpu") µs"
            fi
            seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
            rate=$(awk -v s="$seconds" -v n="$MESSAGES" 'BEGIN { printf "%.0f", n / s }')
            echo "| $runtime | $(client_name "$client") | $target | $MESSAGES | $seconds | $rate | $cpu | $load |"
            stop_all
            rm -rf "$dir" "$MAILS/maildir"
        done
    done
done
echo
echo "# uptime at end: $(uptime)"
