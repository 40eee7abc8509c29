#!/usr/bin/env bash
# End-to-end load benchmark: Gatehouse against the no-op ext_authz floor,
# measured the same way in the same run (see bench/README.md and
# ../shared/PERFORMANCE.md). `make bench` runs this.
#
# Environment (all optional):
#   BENCH_DURATION=8s  BENCH_WARMUP=2s  BENCH_CONCURRENCY=16
#   BENCH_NOOP_PORT=9391
#   BENCH_GRPC_PORT=9191 BENCH_HTTP_PORT=9192 BENCH_OPS_PORT=8181 (gatehouse)
#   BENCH_READY_TIMEOUT=30 (seconds gatehouse may take to become ready)
#   BENCH_KEEP_AWAKE=1 keeps both CPUs from idling (see bench/README.md)
#   BENCH_TENANCY=0 skips the multi-tenant run (shipped policy, 200k-grant
#   world synced from a control endpoint into the bbolt cache)
#   BENCH_CONTROL_PORT=9382
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-8s}
WARMUP=${BENCH_WARMUP:-2s}
CONC=${BENCH_CONCURRENCY:-16}
NOOP_PORT=${BENCH_NOOP_PORT:-9391}
GRPC_PORT=${BENCH_GRPC_PORT:-9191}
HTTP_PORT=${BENCH_HTTP_PORT:-9192}
OPS_PORT=${BENCH_OPS_PORT:-8181}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-30}
SCENARIO=bench/scenario-simple.json
CONFIG=bench/gatehouse-simple.yaml
KEYS=bench/.keys

TS=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=bench/results/$TS.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
SERVER_PID=""
SPINNERS=()

log() { printf '%s\n' "$*" >&2; }

stop_server() {
	if [[ -n $SERVER_PID ]]; then
		kill -TERM "$SERVER_PID" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$SERVER_PID" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
		SERVER_PID=""
	fi
}

cleanup() {
	stop_server
	if ((${#SPINNERS[@]})); then
		kill "${SPINNERS[@]}" 2>/dev/null || true
		wait "${SPINNERS[@]}" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT SECONDS: 0 once something listens, 1 if the server died or
# the time ran out.
wait_port() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		port_open "$1" && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# --- build -------------------------------------------------------------------
mkdir -p bin bench/results
log "building bin/loadgen"
go build -o bin/ ./cmd/loadgen

GATEHOUSE_SKIP=""
log "building bin/gatehouse"
rm -f bin/gatehouse # never measure a stale binary
if ! go build -o bin/ ./cmd/gatehouse 2>"$WORK/gatehouse-build.log"; then
	GATEHOUSE_SKIP="cmd/gatehouse does not build: $(grep -m1 . "$WORK/gatehouse-build.log" || echo unknown error)"
fi

if [[ ! -f $KEYS/signing.pem || ! -f $KEYS/public.pem ]]; then
	bin/loadgen keys --out "$KEYS" >&2
fi

# --- pinning -----------------------------------------------------------------
SERVER_PIN=()
CLIENT_PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]] && taskset -c 1 true 2>/dev/null; then
	SERVER_PIN=(taskset -c 0)
	CLIENT_PIN=(taskset -c 1)
	PINNED=(--pinned)
	NOTE="server pinned to CPU 0, loadgen to CPU 1, GOMAXPROCS=1 each"
else
	PINNED=()
	NOTE="NOT PINNED (taskset missing or fewer than 2 CPUs): server and loadgen share the CPUs, GOMAXPROCS=1 each"
	log "warning: $NOTE"
fi
if [[ ${BENCH_KEEP_AWAKE:-0} == 1 ]]; then
	if ((${#SERVER_PIN[@]})) && command -v chrt >/dev/null; then
		# SCHED_IDLE busy loops: they run only when a CPU would otherwise
		# idle, so the CPU never halts and wakes up in microseconds.
		for cpu in 0 1; do
			chrt -i 0 taskset -c "$cpu" sh -c 'while :; do :; done' >/dev/null 2>&1 &
			SPINNERS+=($!)
		done
		NOTE="$NOTE; CPUs kept awake by SCHED_IDLE spinners (BENCH_KEEP_AWAKE=1)"
	else
		log "warning: BENCH_KEEP_AWAKE needs taskset, chrt and 2 CPUs: ignored"
	fi
fi
NOTE="$NOTE; $(go env GOVERSION); $(nproc) CPUs; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# --- one server ----------------------------------------------------------------

# measure NAME ADDR [run flags...]: the three runs against the server in
# $SERVER_PID; results go to $WORK/servers/NAME.
measure() {
	local name=$1 addr=$2
	shift 2
	local dir=$WORK/servers/$name
	local common=(--addr "$addr" --scenario "${MEASURE_SCENARIO:-$SCENARIO}" --signing-key "$KEYS/signing.pem" --pid "$SERVER_PID" "$@")
	run() { # run FILE LABEL [flags...]
		local file=$1 label=$2 rc=0
		shift 2
		log "$name $label"
		GOMAXPROCS=1 "${CLIENT_PIN[@]}" bin/loadgen run "${common[@]}" --out "$dir/$file" "$@" \
			>"$dir/$file.txt" 2>"$dir/$file.err" || rc=$?
		sed 's/^/    /' "$dir/$file.txt" >&2
		if ((rc >= 2)) || [[ ! -s $dir/$file ]]; then
			{ echo -n "$label: "; grep -m1 . "$dir/$file.err" || echo "loadgen exited with status $rc"; } >"$dir/failed"
			log "    FAILED: $(cat "$dir/failed")"
			return 1
		fi
		return 0 # mismatches (rc 1) are recorded in the JSON and fail the report
	}
	run c16.json "closed loop c=$CONC" --concurrency "$CONC" --warmup "$WARMUP" --duration "$DURATION" || return 0
	run c1.json "closed loop c=1" --concurrency 1 --warmup 1s --duration "$DURATION" || return 0
	local peak half
	peak=$(sed -n 's/.*"checks_per_sec":\([0-9.eE+]*\).*/\1/p' "$dir/c16.json")
	half=$(awk -v p="$peak" 'BEGIN { printf "%.0f", p / 2 }')
	if ((half < 1)); then
		echo "no throughput at c=$CONC to take half of" >"$dir/failed"
		return 0
	fi
	run half_peak.json "open loop at $half/s (half of peak)" --concurrency "$CONC" --rate "$half" --warmup 1s --duration "$DURATION" || return 0
}

# --- the floor: no-op ext_authz --------------------------------------------------
mkdir -p "$WORK/servers/noop"
touch "$WORK/servers/noop/floor"
if port_open "$NOOP_PORT"; then
	log "port $NOOP_PORT is already in use (set BENCH_NOOP_PORT): cannot measure the floor"
	exit 2
fi
GOMAXPROCS=1 "${SERVER_PIN[@]}" bin/loadgen noop --addr "127.0.0.1:$NOOP_PORT" >"$WORK/noop.log" 2>&1 &
SERVER_PID=$!
if ! wait_port "$NOOP_PORT" 10; then
	log "the no-op server did not start:"
	cat "$WORK/noop.log" >&2
	exit 2
fi
# The floor allows everything, but is sent the very same requests.
measure noop "127.0.0.1:$NOOP_PORT" --expect-all allow
stop_server

# --- gatehouse -----------------------------------------------------------------
mkdir -p "$WORK/servers/gatehouse"
GH_ARGS=(serve --config "$CONFIG")
[[ $GRPC_PORT == 9191 ]] || GH_ARGS+=(--grpc-addr "127.0.0.1:$GRPC_PORT")
[[ $HTTP_PORT == 9192 ]] || GH_ARGS+=(--http-addr "127.0.0.1:$HTTP_PORT")
[[ $OPS_PORT == 8181 ]] || GH_ARGS+=(--ops-addr "127.0.0.1:$OPS_PORT")
if [[ -z $GATEHOUSE_SKIP ]]; then
	for p in "$GRPC_PORT" "$HTTP_PORT" "$OPS_PORT"; do
		if port_open "$p"; then
			GATEHOUSE_SKIP="port $p is already in use (see BENCH_*_PORT)"
			break
		fi
	done
fi
if [[ -z $GATEHOUSE_SKIP ]]; then
	log "starting gatehouse ${GH_ARGS[*]}"
	GOMAXPROCS=1 "${SERVER_PIN[@]}" bin/gatehouse "${GH_ARGS[@]}" >"$WORK/gatehouse.log" 2>&1 &
	SERVER_PID=$!
	ready=""
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			rc=0
			wait "$SERVER_PID" || rc=$?
			SERVER_PID=""
			GATEHOUSE_SKIP="gatehouse serve exited with status $rc before it was ready: $(tail -n 1 "$WORK/gatehouse.log")"
			break
		fi
		if port_open "$GRPC_PORT" && curl -sf -o /dev/null "http://127.0.0.1:$OPS_PORT/readyz"; then
			ready=1
			break
		fi
		sleep 0.1
	done
	if [[ -z $ready && -z $GATEHOUSE_SKIP ]]; then
		GATEHOUSE_SKIP="not ready (grpc :$GRPC_PORT, /readyz on :$OPS_PORT) within ${READY_TIMEOUT}s"
	fi
	if [[ -n $ready ]]; then
		measure gatehouse "127.0.0.1:$GRPC_PORT"
	else
		log "gatehouse log (last lines):"
		tail -n 5 "$WORK/gatehouse.log" | sed 's/^/    /' >&2
	fi
	stop_server
fi
if [[ -n $GATEHOUSE_SKIP ]]; then
	log "gatehouse: skipped ($GATEHOUSE_SKIP)"
	printf '%s\n' "$GATEHOUSE_SKIP" >"$WORK/servers/gatehouse/skipped"
fi

# --- gatehouse, multi-tenant: shipped policy over 200k grants from bbolt ---------
TENANCY_SKIP=""
mkdir -p "$WORK/servers/gatehouse-tenancy"
if [[ ${BENCH_TENANCY:-1} == 1 && -z $GATEHOUSE_SKIP ]]; then
	CONTROL_PORT=${BENCH_CONTROL_PORT:-9382}
	WORLD=bench/.var/world-200k
	go build -o bin/ ./cmd/benchworld
	if [[ ! -f $WORLD/control/control.db || ! -f $WORLD/scenario.json ]]; then
		log "building the 200k world (once; kept in $WORLD)"
		rm -rf "$WORLD.tmp" && bin/benchworld build --size 200k --dir "$WORLD.tmp" >&2 && rm -rf "$WORLD" && mv "$WORLD.tmp" "$WORLD"
	fi
	# the control endpoint works on a copy: the world file stays pristine
	mkdir -p "$WORK/control"
	cp "$WORLD/control/control.db" "$WORK/control/control.db"
	echo bench-admin >"$WORK/admin.token"
	echo bench-sync >"$WORK/sync.token"
	cat >"$WORK/tenancy.yaml" <<YAML
listen: {grpc: 127.0.0.1:$GRPC_PORT, http: 127.0.0.1:$HTTP_PORT, ops: 127.0.0.1:$OPS_PORT}
policies: {dir: $PWD/policies}
data: {dir: $WORK/sidecar, control_url: "http://127.0.0.1:$CONTROL_PORT", token_file: $WORK/sync.token}
issuers:
  - {issuer: "https://bench.gatehouse.test/", audiences: [api], algorithms: [RS256], public_key_file: $PWD/$KEYS/public.pem}
YAML
	bin/gatehouse control --addr "127.0.0.1:$CONTROL_PORT" --data-dir "$WORK/control" \
		--admin-token-file "$WORK/admin.token" --sync-token-file "$WORK/sync.token" >"$WORK/control.log" 2>&1 &
	CONTROL_PID=$!
	SPINNERS+=("$CONTROL_PID") # stopped with the spinners at exit
	log "starting gatehouse serve (shipped policy, 200k world synced from the control endpoint)"
	start_ns=$(date +%s%N)
	GOMAXPROCS=1 "${SERVER_PIN[@]}" bin/gatehouse serve --config "$WORK/tenancy.yaml" >"$WORK/tenancy.log" 2>&1 &
	SERVER_PID=$!
	ready=""
	for ((i = 0; i < 120 * 10; i++)); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		if curl -sf -o /dev/null "http://127.0.0.1:$OPS_PORT/readyz"; then
			ready=1
			break
		fi
		sleep 0.1
	done
	if [[ -n $ready ]]; then
		log "    ready after $(((($(date +%s%N) - start_ns)) / 1000000)) ms (snapshot of the 200k world into the cache)"
		MEASURE_SCENARIO=$WORLD/scenario.json measure gatehouse-tenancy "127.0.0.1:$GRPC_PORT"
		log "    write -> changed decision: $(bin/benchworld latency --size 200k --control "http://127.0.0.1:$CONTROL_PORT" \
			--admin-token-file "$WORK/admin.token" --grpc "127.0.0.1:$GRPC_PORT" --signing-key "$KEYS/signing.pem" --n 100 2>&1)"
	else
		TENANCY_SKIP="not ready within 120s: $(tail -n 1 "$WORK/tenancy.log")"
	fi
	stop_server
	kill "$CONTROL_PID" 2>/dev/null || true
else
	TENANCY_SKIP="BENCH_TENANCY=0 or gatehouse skipped"
fi
[[ -z $TENANCY_SKIP ]] || printf '%s\n' "$TENANCY_SKIP" >"$WORK/servers/gatehouse-tenancy/skipped"

# --- report ----------------------------------------------------------------------
echo
rc=0
bin/loadgen report --check "${PINNED[@]}" --note "$NOTE" --out "$RESULTS" \
	"$WORK/servers/noop" "$WORK/servers/gatehouse" "$WORK/servers/gatehouse-tenancy" || rc=$?
echo
echo "raw results: $RESULTS"
exit "$rc"
