#!/usr/bin/env bash
# The Kafka Streams peer of StreamPulse's job (SPEC §9, issue #9), run on a topic that
# `streampulse generate` wrote. Every figure in the README's Performance section comes from ONE
# command, run from the repository root once the broker is up (.ci/services up):
#
#   benches/kstreams/run.sh --suite
#
# It writes the topic kstreams-3m unless it exists (3 partitions, 3,000,000 events), with
#   target/release/streampulse generate --topic kstreams-3m --partitions 3 --count 3000000 \
#     --rate 2000 --start-ms 1700000000000 --seed 7
# then runs, 1 stream thread each, interleaved, 3 times each: at_least_once and exactly_once_v2, each
# with grace 5 s (the job's lateness) and with grace 1 day (drops nothing on this topic). Each run's
# JSON line goes to stdout and is appended to benches/results/kstreams.jsonl; the medians follow, one
# JSON line per setting. About 25 minutes on the 2-core machine.
#
# One run (builds if needed, reads TOPIC from its beginning until every record has been aggregated,
# prints one JSON line):
#
#   benches/kstreams/run.sh TOPIC [--threads N] [--guarantee at_least_once|exactly_once_v2]
#                                 [--grace-ms MS] [--app-id ID] [--keep-topics]
#
# A run deletes its topics ("<app id>-…") and consumer group when it ends, also on SIGTERM or ^C;
# after a SIGKILL: benches/kstreams/run.sh --cleanup APP_ID
#
# Environment: STREAMPULSE_BROKERS (127.0.0.1:9092); STREAMPULSE_BIN, the binary --suite generates
# with (target/release/streampulse); KSTREAMS_HEAP (-Xms512m -Xmx1g); MAVEN_REPO, Maven's local
# repository (${STREAMPULSE_HOME:-~/.cache/streampulse}/m2, shared with .ci/services);
# SUITE_TOPIC (kstreams-3m), SUITE_RUNS (3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BROKERS=${STREAMPULSE_BROKERS:-127.0.0.1:9092}
HEAP=${KSTREAMS_HEAP:--Xms512m -Xmx1g}
STREAMPULSE_HOME=${STREAMPULSE_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/streampulse}
MAVEN_REPO=${MAVEN_REPO:-$STREAMPULSE_HOME/m2}
JAR=$HERE/target/kstreams-bench.jar

log() { printf 'kstreams: %s\n' "$*" >&2; }
die() { printf 'kstreams: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# Build (mvn -B -q into benches/kstreams/target) when the jar is missing or older than its inputs.
build() {
  if [[ -f $JAR && -d $HERE/target/lib ]] &&
     [[ -z $(find "$HERE/pom.xml" "$HERE/src" "$ROOT/schemas/event.avsc" -newer "$JAR" -print -quit) ]]; then
    return
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  log "building $JAR"
  rm -f "$JAR" # so that a failed build cannot leave an older jar to be run
  # Debian's Maven 3.8 prints colour resets even in batch mode; drop those lines.
  mvn -B -q -f "$HERE/pom.xml" -Dmaven.repo.local="$MAVEN_REPO" package 2>&1 \
    | { grep -v $'^\e\\[0m\\(\e\\[0m\\)*$' || true; } >&2
  [[ -f $JAR ]] || die "the build did not produce $JAR"
}

# One run: stdout is the app's JSON line.
run_one() {
  local topic=$1; shift
  local state
  state=$(mktemp -d "${TMPDIR:-/tmp}/kstreams-state.XXXXXX")
  # shellcheck disable=SC2086  # HEAP holds several JVM flags
  java $HEAP -cp "$JAR:$HERE/target/lib/*" streampulse.kstreams.App \
    --bootstrap "$BROKERS" --topic "$topic" --state-dir "$state" "$@" \
    || { rm -rf "$state"; return 1; }
  rm -rf "$state"
}

# Records in a topic, or nothing when it does not exist.
topic_size() {
  java -cp "$JAR:$HERE/target/lib/*" streampulse.kstreams.TopicSize \
    --bootstrap "$BROKERS" --topic "$1" 2>/dev/null || true
}

suite() {
  local topic=${SUITE_TOPIC:-kstreams-3m} runs=${SUITE_RUNS:-3}
  local out=$ROOT/benches/results/kstreams.jsonl bin=${STREAMPULSE_BIN:-$ROOT/target/release/streampulse}
  local lines
  lines=$(mktemp)
  mkdir -p "$(dirname "$out")"
  local size
  size=$(topic_size "$topic")
  if [[ -n $size ]]; then
    [[ $size == 3000000 ]] || die "topic $topic holds $size records, not 3000000: delete it and run again"
    log "topic $topic exists with its 3000000 records; not generating it again"
  else
    [[ -x $bin ]] || die "$bin not found: cargo build --release -p streampulse (or set STREAMPULSE_BIN)"
    log "generating $topic"
    "$bin" generate --brokers "$BROKERS" --topic "$topic" --partitions 3 --count 3000000 \
      --rate 2000 --start-ms 1700000000000 --seed 7 >&2
  fi
  log "load before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
  local i g grace line
  for ((i = 1; i <= runs; i++)); do
    for grace in 5000 86400000; do
      for g in at_least_once exactly_once_v2; do
        line=$(run_one "$topic" --guarantee "$g" --grace-ms "$grace")
        echo "$line" | tee -a "$out" "$lines"
        log "load: $(cut -d' ' -f1-3 /proc/loadavg)"
      done
    done
  done
  # Medians per (guarantee, grace).
  python3 - "$lines" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in runs:
    groups.setdefault((r["guarantee"], r["grace_ms"], r["threads"]), []).append(r)
for (g, grace, threads), rs in groups.items():
    print(json.dumps({
        "name": "kafka_streams_median", "threads": threads, "guarantee": g, "grace_ms": grace,
        "runs": len(rs), "events": rs[0]["events"],
        "seconds": statistics.median(r["seconds"] for r in rs),
        "events_per_sec": round(statistics.median(r["events_per_sec"] for r in rs)),
        "dropped_late": statistics.median(r["dropped_late"] for r in rs),
        "dropped_late_runs": [r["dropped_late"] for r in rs],
        "late_by_partition_rule": rs[0]["late_by_partition_rule"],
    }, separators=(",", ":")))
PY
  rm -f "$lines"
}

[[ $# -ge 1 ]] || usage
case $1 in
  -h|--help) usage ;;
  --suite) build; suite ;;
  --cleanup)
    [[ $# -eq 2 ]] || usage
    build
    java -cp "$JAR:$HERE/target/lib/*" streampulse.kstreams.App --bootstrap "$BROKERS" --cleanup "$2" ;;
  -*) usage ;;
  *) build; run_one "$@" ;;
esac
