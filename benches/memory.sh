#!/usr/bin/env bash
# Memory over a long run: is the resident set flat once retention is reached?
#
#   benches/memory.sh [--minutes 12] [--retain 2] [--rate 5000] [--workers 1] [--postgres URL]
#                     [--out [FILE]] [--bin PATH]
#
# Starts `streampulse run` with the built-in generator (scenario cdn-outage) at --rate events/s in
# real time and --retain minutes of windows kept in memory, with the PostgreSQL sink when --postgres
# (or STREAMPULSE_POSTGRES) is given (a fresh schema, dropped at the end). Samples the process's
# VmRSS every 10 s for --minutes. Retention is reached after --retain + 1 minutes (the watermark
# trails the wall clock by the lateness bound, and a window leaves memory once it ends --retain
# before the watermark); the samples after twice that are the steady state. Prints one JSON line
# per sample and a summary line: {"name":"memory_steady", "rss_min_mib", "rss_max_mib",
# "rss_median_mib", "spread" ((max - min) / median), ...}; --out appends the summary to
# benches/results/memory.jsonl (or FILE) and writes the samples beside it (memory-samples.jsonl, or
# FILE's name with -samples). Needs a release build, bc and awk.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin="$root/target/release/streampulse"
minutes=12
retain=2
rate=5000
workers=1
postgres=${STREAMPULSE_POSTGRES:-}
out=""

while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift ;;
        --retain) retain=$2; shift ;;
        --rate) rate=$2; shift ;;
        --workers) workers=$2; shift ;;
        --postgres) postgres=$2; shift ;;
        --bin) bin=$2; shift ;;
        --out)
            if [ $# -ge 2 ] && [ "${2#--}" = "$2" ]; then out=$2; shift; else out="$here/results/memory.jsonl"; fi ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "memory: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

schema="bench_memory_$$"
args=(run --source generator --scenario cdn-outage --rate "$rate" --retain "$retain"
      -w "$workers" --http 127.0.0.1:0 --status-interval 3600)
if [ -n "$postgres" ]; then
    args+=(--postgres "$postgres" --pg-schema "$schema")
fi
# Only the arguments configure the run.
for name in $(env | grep -o '^STREAMPULSE_[A-Z0-9_]*' || true); do unset "$name"; done
RUST_LOG=warn "$bin" "${args[@]}" >/dev/null 2>"/tmp/memory-$$.log" &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ -n "$postgres" ]; then
        psql "$postgres" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
    fi
    rm -f "/tmp/memory-$$.log"
}
trap cleanup EXIT

steady_after=$(( (retain + 1) * 2 * 60 ))
sample_file=/dev/null
if [ -n "$out" ]; then
    sample_file="${out%.jsonl}-samples.jsonl"
    : > "$sample_file"
fi
samples=()
start=$(date +%s)
while :; do
    now=$(date +%s)
    elapsed=$(( now - start ))
    [ "$elapsed" -gt $(( minutes * 60 )) ] && break
    kill -0 "$pid" 2>/dev/null || { echo "memory: streampulse exited:" >&2; cat "/tmp/memory-$$.log" >&2; exit 1; }
    rss_kib=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss_kib" ] || continue # exited just now: the check above reports it
    printf '{"name":"memory_sample","seconds":%d,"rss_mib":%.1f}\n' "$elapsed" "$(echo "$rss_kib/1024" | bc -l)" | tee -a "$sample_file"
    if [ "$elapsed" -ge "$steady_after" ]; then
        samples+=("$rss_kib")
    fi
    sleep 10
done
hwm_kib=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
[ "${#samples[@]}" -ge 2 ] || { echo "memory: run longer than $(( steady_after / 60 )) minutes for steady samples" >&2; exit 1; }
summary=$(printf '%s\n' "${samples[@]}" | sort -n | awk -v rate="$rate" -v retain="$retain" \
    -v workers="$workers" -v minutes="$minutes" -v pg="$([ -n "$postgres" ] && echo true || echo false)" \
    -v hwm="$hwm_kib" -v after="$steady_after" -v date="$(date -u +%FT%TZ)" '
    { v[NR] = $1 }
    END {
        min = v[1]; max = v[NR]; med = v[int((NR + 1) / 2)]
        printf "{\"name\":\"memory_steady\",\"rate\":%s,\"retain_min\":%s,\"workers\":%s,\"postgres\":%s,", rate, retain, workers, pg
        printf "\"minutes\":%s,\"steady_after_s\":%s,\"samples\":%d,\"rss_min_mib\":%.1f,\"rss_max_mib\":%.1f,", minutes, after, NR, min/1024, max/1024
        printf "\"rss_median_mib\":%.1f,\"spread\":%.3f,\"peak_rss_mib\":%.1f,\"date\":\"%s\"}\n", med/1024, (max-min)/med, hwm/1024, date
    }')
echo "$summary"
if [ -n "$out" ]; then
    echo "$summary" >> "$out"
fi
