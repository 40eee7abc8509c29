#!/usr/bin/env bash
# Bootstrap and fan-out at scale (issue 11): for each world size, a new
# sidecar's bootstrap from a control endpoint (a Syncer into a fresh cache
# folder, until its first snapshot is in: time, peak RSS, cache bytes per
# entity), then one control endpoint with 2,000 change streams (write ->
# receipt at the last follower, control RSS). `make bench-boot` runs this.
#
# Environment (all optional):
#   BENCH_BOOT_SIZES="200k 1m"   worlds (built once into bench/.var/world-SIZE; 10m by hand)
#   BENCH_FOLLOWERS=2000  BENCH_FOLLOWER_WRITES=100
#   BENCH_CONTROL_PORT=9382
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=${BENCH_BOOT_SIZES:-200k 1m}
FOLLOWERS=${BENCH_FOLLOWERS:-2000}
WRITES=${BENCH_FOLLOWER_WRITES:-100}
PORT=${BENCH_CONTROL_PORT:-9382}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-boot.XXXXXX")
CONTROL_PID=""
cleanup() {
	[[ -z $CONTROL_PID ]] || kill "$CONTROL_PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "$*" >&2; }

go build -o bin/ ./cmd/gatehouse ./cmd/benchworld
echo bench-admin >"$WORK/admin.token"
echo bench-sync >"$WORK/sync.token"

# start_control DIR: a control endpoint on DIR, waits for its port.
start_control() {
	bin/gatehouse control --addr "127.0.0.1:$PORT" --data-dir "$1" \
		--admin-token-file "$WORK/admin.token" --sync-token-file "$WORK/sync.token" >"$WORK/control.log" 2>&1 &
	CONTROL_PID=$!
	for _ in $(seq 300); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
		kill -0 "$CONTROL_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "the control endpoint did not start: $(tail -n 1 "$WORK/control.log")"
	return 1
}
stop_control() {
	kill "$CONTROL_PID" 2>/dev/null || true
	wait "$CONTROL_PID" 2>/dev/null || true
	CONTROL_PID=""
}

for size in $SIZES; do
	dir=bench/.var/world-$size
	if [[ ! -f $dir/control/control.db ]]; then
		log "building the $size world (once; kept in $dir)"
		rm -rf "$dir.tmp"
		bin/benchworld build --size "$size" --dir "$dir.tmp" --cold-requests 0 >&2
		rm -rf "$dir" && mv "$dir.tmp" "$dir"
	fi
	mkdir -p "$WORK/control-$size"
	cp "$dir/control/control.db" "$WORK/control-$size/"
	start_control "$WORK/control-$size"
	echo "$size: $(bin/benchworld bootstrap --control "http://127.0.0.1:$PORT" --token-file "$WORK/sync.token" --dir "$WORK/sidecar-$size")"
	stop_control
	rm -rf "$WORK/control-$size" "$WORK/sidecar-$size"
done

mkdir -p "$WORK/control-fanout"
start_control "$WORK/control-fanout"
echo "fan-out: $(bin/benchworld followers --control "http://127.0.0.1:$PORT" --admin-token-file "$WORK/admin.token" \
	--sync-token-file "$WORK/sync.token" --n "$FOLLOWERS" --writes "$WRITES" --control-pid "$CONTROL_PID")"
stop_control
