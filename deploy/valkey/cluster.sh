#!/usr/bin/env bash
# A Valkey cluster on loopback for the cluster store (issue 12): 3 primaries and 3 replicas, the
# same way for the tests, CI, the load generator and an operator trying it out.
#
# Usage: deploy/valkey/cluster.sh up|down|status [--dir DIR] [--base-port P] [--timeout S]
#
#   up      starts the nodes on 127.0.0.1:P..P+5 (cluster bus on P+10000..P+10005), each in
#           DIR/node-PORT with its own valkey.conf, pidfile, log, AOF and nodes.conf; creates the
#           cluster on first start; waits until every node reports cluster_state:ok and every
#           replica is in sync; prints the node addresses on one line, comma-separated, on
#           standard output (progress goes to standard error), so `nodes=$(cluster.sh up)`
#           works. On a cluster already running in DIR it only checks it and prints the
#           addresses; nodes stopped earlier (by `down` or a crash) are started again with their
#           data and rejoin. Exits 3 when a port is taken by something other than DIR's nodes.
#   down    stops DIR's nodes by the pids in their pidfiles: SIGTERM, then SIGKILL for those
#           still running after the deadline. Their data stays in DIR (remove DIR for a fresh
#           cluster next time).
#   status  prints each node's role and cluster state; exits 0 only if every node is running
#           and reports cluster_state:ok.
#
# Defaults: --base-port 7000, --dir ${TMPDIR:-/tmp}/sealpost-valkey-<base port>, --timeout 30
# (seconds, for each wait). Needs valkey-server and valkey-cli (deploy/valkey/install.sh).
set -euo pipefail

prog=$(basename "$0")
say() { echo "$prog: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
usage() {
    echo "usage: $prog up|down|status [--dir DIR] [--base-port P] [--timeout SECONDS]" >&2
    exit 2
}

# Nodes per cluster: 3 primaries, each with one replica.
nodes=6
# Exit status of `up` when a port is taken by a process that is not one of DIR's nodes, so a
# caller that picked the ports itself can pick others and try again.
exit_port_taken=3

[ $# -ge 1 ] || usage
cmd=$1
shift
base=7000
dir=""
timeout_s=30
while [ $# -gt 0 ]; do
    case $1 in
    --dir)
        [ $# -ge 2 ] || usage
        dir=$2
        shift 2
        ;;
    --base-port)
        [ $# -ge 2 ] || usage
        base=$2
        shift 2
        ;;
    --timeout)
        [ $# -ge 2 ] || usage
        timeout_s=$2
        shift 2
        ;;
    *) usage ;;
    esac
done
case $cmd in up | down | status) ;; *) usage ;; esac
if ! [[ $base =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ "$base" -gt 55530 ]; then
    die "--base-port must be a number from 1024 to 55530 (the nodes use P..P+5 and P+10000..P+10005), not '$base'"
fi
if ! [[ $timeout_s =~ ^[0-9]+$ ]] || [ "$timeout_s" -lt 1 ]; then
    die "--timeout must be a whole number of seconds, not '$timeout_s'"
fi
dir=${dir:-${TMPDIR:-/tmp}/sealpost-valkey-$base}

for tool in valkey-server valkey-cli; do
    command -v "$tool" >/dev/null ||
        die "$tool is not installed: run deploy/valkey/install.sh (Valkey 8 from Debian's bookworm-backports)"
done

ports=()
for ((i = 0; i < nodes; i++)); do ports+=($((base + i))); done

node_dir() { echo "$dir/node-$1"; }

# valkey-cli against one node, bounded in time so a stuck node cannot hang the script.
cli() {
    local port=$1
    shift
    timeout 5 valkey-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

# One field of a node's INFO section or CLUSTER INFO ("key:value" lines), or nothing.
field() {
    tr -d '\r' | sed -n "s/^$1://p"
}

# The pid of DIR's node on PORT if it is running, else nothing. A pid is only trusted when the
# process is a valkey-server listening on that port (Valkey puts the address in its title), so
# a stale pidfile whose pid was reused never leads to signalling someone else's process.
node_pid() {
    local port=$1 pidfile pid
    pidfile="$(node_dir "$port")/valkey.pid"
    [ -r "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "valkey-server.*:$port\b"; then
        echo "$pid"
    fi
}

# Whether anything accepts TCP connections on 127.0.0.1:PORT.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_config() {
    local port=$1 d
    d=$(node_dir "$port")
    # Why each setting: see deploy/README.md, "Valkey cluster".
    cat >"$d/valkey.conf" <<EOF
# Written by deploy/valkey/cluster.sh; rewritten on every start.
port $port
bind 127.0.0.1
protected-mode yes
daemonize yes
pidfile $d/valkey.pid
logfile $d/valkey.log
dir $d
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
appendonly yes
appendfsync always
appenddirname appendonly
save ""
maxmemory-policy noeviction
repl-diskless-sync-delay 0
EOF
}

start_node() {
    local port=$1 d
    d=$(node_dir "$port")
    mkdir -p "$d"
    write_config "$port"
    rm -f "$d/valkey.pid"
    # 9>&-: the node must not inherit the lock on DIR, or it would hold it as long as it runs.
    valkey-server "$d/valkey.conf" >>"$d/valkey.log" 2>&1 9>&- ||
        die "valkey-server on port $port did not start; see $d/valkey.log"
}

# Polls CHECK (a function taking a port) for every node until all pass or the deadline passes;
# on the deadline names the first failing node, what it last said and where its log is.
wait_all() {
    local what=$1 check=$2 deadline port pending
    deadline=$((SECONDS + timeout_s))
    while :; do
        pending=""
        for port in "${ports[@]}"; do
            if ! "$check" "$port"; then
                pending=$port
                break
            fi
        done
        [ -z "$pending" ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "node 127.0.0.1:$pending: $what not reached within ${timeout_s} s (it says: ${last:-no answer}); see $(node_dir "$pending")/valkey.log; the nodes are left running for a look, '$prog down --dir $dir --base-port $base' stops them"
        fi
        sleep 0.1
    done
}

# Checks used with wait_all; each leaves what the node said in `last`.
last=""
is_up() {
    last=$(cli "$1" ping)
    [ "$last" = PONG ]
}
is_ok() {
    local info
    info=$(cli "$1" cluster info) || {
        last=""
        return 1
    }
    last="cluster_state:$(field cluster_state <<<"$info"), known nodes $(field cluster_known_nodes <<<"$info"), slots ok $(field cluster_slots_ok <<<"$info")"
    [ "$(field cluster_state <<<"$info")" = ok ] &&
        [ "$(field cluster_known_nodes <<<"$info")" = "$nodes" ] &&
        [ "$(field cluster_slots_ok <<<"$info")" = 16384 ]
}
# A primary has its replica attached; a replica's link to its primary is up and not syncing.
is_in_sync() {
    local info role
    info=$(cli "$1" info replication) || {
        last=""
        return 1
    }
    role=$(field role <<<"$info")
    if [ "$role" = slave ]; then
        last="replica, link $(field master_link_status <<<"$info"), sync in progress $(field master_sync_in_progress <<<"$info")"
        [ "$(field master_link_status <<<"$info")" = up ] && [ "$(field master_sync_in_progress <<<"$info")" = 0 ]
    else
        last="primary with $(field connected_slaves <<<"$info") replica(s)"
        [ "$(field connected_slaves <<<"$info")" -ge 1 ] 2>/dev/null
    fi
}

addresses() {
    local out="" port
    for port in "${ports[@]}"; do out+="${out:+,}127.0.0.1:$port"; done
    echo "$out"
}

up() {
    local port pid started=() known fresh=0 joined=0 t0=$SECONDS
    # Refuse before starting anything if a port is held by something that is not DIR's node.
    for port in "${ports[@]}"; do
        [ -n "$(node_pid "$port")" ] && continue
        for p in "$port" $((port + 10000)); do
            if port_busy "$p"; then
                say "error: 127.0.0.1:$p is taken by another process (not the node recorded in $(node_dir "$port")/valkey.pid); stop it or choose another --base-port"
                exit "$exit_port_taken"
            fi
        done
    done
    for port in "${ports[@]}"; do
        if [ -z "$(node_pid "$port")" ]; then
            start_node "$port"
            started+=("$port")
        fi
    done
    if ((${#started[@]})); then
        say "started nodes on ports ${started[*]} in $dir"
    else
        say "all $nodes nodes already running in $dir"
    fi
    wait_all "answering PING" is_up
    # A node that has never been in a cluster knows only itself.
    for port in "${ports[@]}"; do
        known=$(cli "$port" cluster info | field cluster_known_nodes)
        if [ "$known" = 1 ]; then fresh=$((fresh + 1)); else joined=$((joined + 1)); fi
    done
    if [ "$fresh" -eq "$nodes" ]; then
        say "creating the cluster (3 primaries, 1 replica each)"
        local addrs=()
        for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
        # Its colour codes are taken out: this output ends up in CI logs and test failures.
        valkey-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes 2>&1 |
            sed 's/\x1b\[[0-9;]*m//g' >&2 ||
            die "valkey-cli --cluster create failed (output above); run '$prog down --dir $dir --base-port $base', remove $dir and try again"
    elif [ "$fresh" -ne 0 ]; then
        die "$dir is inconsistent: $joined node(s) belong to a cluster and $fresh do not (a node directory was removed?); run '$prog down --dir $dir --base-port $base' and remove $dir for a fresh cluster"
    fi
    wait_all "cluster_state:ok with all $nodes nodes and 16384 slots" is_ok
    wait_all "replication in sync" is_in_sync
    say "cluster ok in $((SECONDS - t0)) s"
    addresses
}

down() {
    local port pid pids=() deadline
    for port in "${ports[@]}"; do
        pid=$(node_pid "$port")
        if [ -n "$pid" ]; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    if ((${#pids[@]} == 0)); then
        say "no node running in $dir"
        return 0
    fi
    deadline=$((SECONDS + timeout_s))
    while :; do
        local alive=()
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
        done
        ((${#alive[@]} == 0)) && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "nodes ${alive[*]} still running ${timeout_s} s after SIGTERM: SIGKILL"
            kill -KILL "${alive[@]}" 2>/dev/null || true
            break
        fi
        pids=("${alive[@]}")
        sleep 0.1
    done
    say "stopped the nodes in $dir"
}

status() {
    local port pid info repl role state all_ok=0
    for port in "${ports[@]}"; do
        pid=$(node_pid "$port")
        if [ -z "$pid" ]; then
            echo "127.0.0.1:$port not running"
            all_ok=1
            continue
        fi
        info=$(cli "$port" cluster info) || info=""
        repl=$(cli "$port" info replication) || repl=""
        state=$(field cluster_state <<<"$info")
        role=$(field role <<<"$repl")
        case $role in
        master) role="primary, $(field connected_slaves <<<"$repl") replica(s)" ;;
        slave) role="replica of $(field master_host <<<"$repl"):$(field master_port <<<"$repl"), link $(field master_link_status <<<"$repl")" ;;
        *) role="not answering" ;;
        esac
        echo "127.0.0.1:$port pid $pid cluster_state:${state:-unknown} $role"
        [ "$state" = ok ] || all_ok=1
    done
    return "$all_ok"
}

mkdir -p "$dir"
# One command at a time per DIR: two `up`s racing would start nodes twice.
exec 9>"$dir/.lock"
flock -w "$timeout_s" 9 || die "another $prog is working on $dir (lock $dir/.lock held for ${timeout_s} s)"
"$cmd"
