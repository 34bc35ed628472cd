#!/usr/bin/env bash
# Checks the deployment files with the tools operators use: promtool (rules, rule unit tests,
# Prometheus config), yamllint, shellcheck, kustomize and compose (when installed), and the
# Grafana dashboard as JSON. Whether the dashboard's metrics exist and the example config
# validates is checked by the relay's tests against a running relay (relay/tests/operations.rs).
set -euo pipefail
cd "$(dirname "$0")"

echo "== promtool check rules"
promtool check rules prometheus/alerts.yml
echo "== promtool test rules"
(cd prometheus && promtool test rules alerts_test.yml)
echo "== promtool check config"
promtool check config prometheus/prometheus.yml
echo "== yamllint"
yamllint -c .yamllint.yml .
echo "== shellcheck"
find .. -name '*.sh' -not -path '../target/*' -print0 | xargs -0 shellcheck
shellcheck ../.ci/run
if command -v kubectl >/dev/null; then
    echo "== kubectl kustomize"
    kubectl kustomize k8s > /dev/null
    kubectl kustomize k8s/cluster > /dev/null
    kubectl kustomize k8s/cluster/valkey > /dev/null
fi
# The cluster compose file needs what deploy/cluster/secrets.sh writes to .env; stand-ins here
# (the environment wins over .env).
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
fi
if ((${#compose[@]})); then
    echo "== ${compose[*]} config"
    "${compose[@]}" -f docker-compose.yml config -q
    SEALPOST_KEY_PIN=$(printf '%064d' 0) SEALPOST_UID=65532 SEALPOST_GID=65532 \
        "${compose[@]}" -f cluster/docker-compose.yml config -q
fi
if command -v systemd-analyze >/dev/null; then
    echo "== systemd-analyze verify and security"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # The binary is not installed here; verify the unit with a stand-in for it.
    sed 's|/usr/local/bin/sealpost-relay|/bin/true|' systemd/sealpost-relay.service \
        > "$tmp/sealpost-relay.service"
    systemd-analyze verify "$tmp/sealpost-relay.service"
    # Exposure on systemd's 0-10 scale, times ten: fail above 2.0.
    # --threshold is the exposure (0-10) times ten: fail above 2.0.
    systemd-analyze security --offline=yes --threshold=20 "$tmp/sealpost-relay.service" | tail -1
fi
echo "== dashboard JSON"
python3 -m json.tool grafana/dashboards/sealpost.json > /dev/null
echo "deploy files: ok"
