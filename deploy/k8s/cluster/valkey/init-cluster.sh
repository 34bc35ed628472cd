#!/usr/bin/env bash
# Joins six Valkey nodes into a cluster of 3 primaries with one replica each the first time,
# and on every run waits until every node reports cluster_state:ok with all 16384 slots and
# every replica is in sync, so that relays started after it find a usable cluster. It is the
# one-shot `valkey-init` service of deploy/cluster/docker-compose.yml and the Job of the trial
# StatefulSet in this directory (kept here because kustomize loads files only from below its
# kustomization).
#
# Environment: VALKEY_NODES, the nodes as HOST:PORT separated by spaces or newlines (names are
# resolved to addresses, which is what valkey-cli's cluster create wants); INIT_TIMEOUT,
# seconds for each wait (default 60).
set -euo pipefail

say() { echo "valkey-init: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}
read -r -d '' -a names <<<"${VALKEY_NODES:?VALKEY_NODES must list the nodes as HOST:PORT}" || true
timeout_s=${INIT_TIMEOUT:-60}

# HOST:PORT with HOST's IPv4 address, waiting for a name that is not resolvable yet (a pod's
# DNS record appears shortly after the pod).
resolve() {
    local host=${1%:*} port=${1##*:} deadline=$((SECONDS + timeout_s)) ip
    while :; do
        ip=$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')
        [ -n "$ip" ] && break
        [ "$SECONDS" -lt "$deadline" ] || die "$host does not resolve within ${timeout_s} s"
        sleep 0.5
    done
    echo "$ip:$port"
}
nodes=()
for name in "${names[@]}"; do nodes+=("$(resolve "$name")"); done

cli() {
    local addr=$1
    shift
    valkey-cli -h "${addr%:*}" -p "${addr##*:}" "$@" 2>/dev/null | tr -d '\r'
}
field() { sed -n "s/^$1://p"; }

# Polls CHECK for every node until all pass; on the deadline names the node that did not.
wait_all() {
    local what=$1 check=$2 deadline=$((SECONDS + timeout_s)) addr pending
    while :; do
        pending=""
        for addr in "${nodes[@]}"; do
            "$check" "$addr" || {
                pending=$addr
                break
            }
        done
        [ -z "$pending" ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || die "node $pending: $what not reached within ${timeout_s} s; see its log (docker compose logs)"
        sleep 0.5
    done
}
is_up() { [ "$(cli "$1" ping)" = PONG ]; }
is_ok() {
    local info
    info=$(cli "$1" cluster info) || return 1
    [ "$(field cluster_state <<<"$info")" = ok ] &&
        [ "$(field cluster_known_nodes <<<"$info")" = "${#nodes[@]}" ] &&
        [ "$(field cluster_slots_ok <<<"$info")" = 16384 ]
}
is_in_sync() {
    local info
    info=$(cli "$1" info replication) || return 1
    if [ "$(field role <<<"$info")" = slave ]; then
        [ "$(field master_link_status <<<"$info")" = up ] &&
            [ "$(field master_sync_in_progress <<<"$info")" = 0 ]
    else
        [ "$(field connected_slaves <<<"$info")" -ge 1 ] 2>/dev/null
    fi
}

wait_all "answering PING" is_up
fresh=0
for addr in "${nodes[@]}"; do
    [ "$(cli "$addr" cluster info | field cluster_known_nodes)" = 1 ] && fresh=$((fresh + 1))
done
if [ "$fresh" -eq "${#nodes[@]}" ]; then
    say "creating the cluster: ${nodes[*]} (3 primaries, 1 replica each)"
    valkey-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes ||
        die "valkey-cli --cluster create failed (output above)"
elif [ "$fresh" -ne 0 ]; then
    die "$fresh of ${#nodes[@]} nodes belong to no cluster while the others do (a node's volume was removed?): add it back by hand (valkey-cli --cluster add-node), or 'docker compose down -v' for a fresh cluster"
fi
wait_all "cluster_state:ok with all ${#nodes[@]} nodes and 16384 slots" is_ok
wait_all "replication in sync" is_in_sync
say "cluster ok"
