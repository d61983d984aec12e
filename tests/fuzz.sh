#!/usr/bin/env bash
# Builds the cargo-fuzz targets (fuzz/) and runs each one, or the ones named, for FUZZ_SECONDS (default
# 60) of coverage-guided fuzzing, starting from its committed seed corpus. New inputs libFuzzer finds go
# to fuzz/target/corpus-work/<target> (never into the committed corpus); a crash or failed check leaves
# its input in fuzz/artifacts/<target>/ and the script exits non-zero.
#
#   tests/fuzz.sh                       # every target, 60 s each
#   FUZZ_SECONDS=600 tests/fuzz.sh dns  # one target, 10 minutes
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install --locked cargo-fuzz`).
# FUZZ_RSS_MB (default 2048) and FUZZ_TIMEOUT (seconds per input, default 10) bound each run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }

seconds=${FUZZ_SECONDS:-60}
rss=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

say "building ${#targets[@]} targets"
CARGO_INCREMENTAL=0 cargo +nightly fuzz build

failed=()
for t in "${targets[@]}"; do
    [[ -d corpus/$t ]] || { say "$t: no seed corpus in fuzz/corpus/$t"; exit 1; }
    work=target/corpus-work/$t
    mkdir -p "$work" "artifacts/$t"
    say "$t: ${seconds}s"
    if ! CARGO_INCREMENTAL=0 cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss" -timeout="$timeout" -max_len=65536 \
        -print_final_stats=1 2> "target/$t.log"; then
        tail -n 40 "target/$t.log" >&2
        failed+=("$t")
        continue
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "target/$t.log" | tr '\n' ' ' >&2 || true
    echo >&2
done

if ((${#failed[@]})); then
    say "FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/; docs/fuzzing.md says how to make each a test)"
    exit 1
fi
say "all ${#targets[@]} targets ran ${seconds}s without a failure"
