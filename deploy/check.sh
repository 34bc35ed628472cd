#!/usr/bin/env bash
# Checks the deployment files with the tools operators use: promtool (rules, rule unit tests,
# Prometheus config), yamllint, shellcheck, and the Grafana dashboard as JSON. Whether the
# dashboard's metrics exist and the example config validates is checked by the relay's tests
# against a running relay (relay/tests/operations.rs).
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
echo "== dashboard JSON"
python3 -m json.tool grafana/dashboards/sealpost.json > /dev/null
echo "deploy files: ok"
