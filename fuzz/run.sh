#!/usr/bin/env bash
# Runs sealpost's fuzz targets with cargo fuzz (libFuzzer) on the stable toolchain, one after
# another, and prints for each the executions, the coverage and whether it crashed.
#
#   fuzz/run.sh [--minutes N | --seconds N] [--no-merge] [--dev] [target...]
#
# Defaults: 10 minutes per target, every target (`cargo fuzz list`). Inputs the fuzzer finds
# go to a scratch directory first; afterwards only those that add coverage are merged into
# fuzz/corpus/<target> (--no-merge skips that, as CI does). --dev builds with the dev profile
# (sealpost-core and the crypto crates stay optimised, as the workspace sets): about half the
# build time, fewer executions a second; CI's short run uses it. A crash stops that target,
# leaves the input in fuzz/artifacts/<target>/, and makes the script exit 1 after the others
# ran.
# Logs: $CARGO_TARGET_DIR/fuzz-logs/<date-time>/ (target/ by default). See docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=600
merge=1
dev=0
targets=()
while (($#)); do
    case "$1" in
    --minutes)
        seconds=$(($2 * 60))
        shift 2
        ;;
    --seconds)
        seconds=$2
        shift 2
        ;;
    --no-merge)
        merge=0
        shift
        ;;
    --dev)
        dev=1
        shift
        ;;
    -h | --help)
        awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
    -*)
        echo "unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *)
        targets+=("$1")
        shift
        ;;
    esac
done

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# -s none: no sanitizer, so no -Z flag and no nightly. The coverage instrumentation cargo fuzz
# adds (-C passes=sancov-module and -C llvm-args) is stable; so is -C debug-assertions, which
# it turns on, so integer overflow panics here.
fuzz=(cargo fuzz)
build_opts=(-s none --features libfuzzer)
if ((dev)); then
    build_opts+=(--dev)
fi

if ((${#targets[@]} == 0)); then
    mapfile -t targets < <("${fuzz[@]}" list)
fi

logs="${CARGO_TARGET_DIR:-target}/fuzz-logs/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$logs"

echo "== building the fuzz targets"
"${fuzz[@]}" build "${build_opts[@]}"

# The value after `key: ` in the last line of a log that has it.
stat() {
    grep -o "$1: *[0-9]*" "$2" | tail -n 1 | grep -o '[0-9]*$' || echo "-"
}

failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    found=$(mktemp -d)
    log="$logs/$t.log"
    echo "== $t: ${seconds}s (log: $log)"
    status=0
    "${fuzz[@]}" run "${build_opts[@]}" "$t" "$found" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(stat "stat::number_of_executed_units" "$log")
    rate=$(stat "stat::average_exec_per_sec" "$log")
    cov=$(stat "cov" "$log")
    ft=$(stat "ft" "$log")
    crashes=0
    if ((status != 0)); then
        crashes=1
        failed=1
        echo "!! $t crashed or failed (exit $status); the end of its log:"
        tail -n 40 "$log"
    fi
    added="-"
    if ((merge && status == 0)); then
        before=$(find "$corpus" -type f | wc -l)
        "${fuzz[@]}" run "${build_opts[@]}" "$t" "$corpus" "$found" -- -merge=1 \
            >"$logs/$t.merge.log" 2>&1
        added=$(($(find "$corpus" -type f | wc -l) - before))
    fi
    rm -rf "$found"
    summary+=("$(printf '%-14s %6ss %12s %8s %6s %7s %6s %7s' \
        "$t" "$seconds" "$execs" "$rate" "$cov" "$ft" "$added" "$crashes")")
done

echo "== summary"
printf '%-14s %7s %12s %8s %6s %7s %6s %7s\n' \
    target time execs exec/s cov ft merged crashes
printf '%s\n' "${summary[@]}"
exit "$failed"
