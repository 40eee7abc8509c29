#!/usr/bin/env bash
# End-to-end load benchmark: Gatehouse, hot and cold, against the no-op
# ext_authz floor, measured the same way in the same run (see
# bench/README.md and ../shared/PERFORMANCE.md). `make bench` runs this.
#
# Environment (all optional):
#   BENCH_DURATION=8s  BENCH_WARMUP=2s  BENCH_CONCURRENCY=16  BENCH_CONNS=2
#   BENCH_NOOP_PORT=9391
#   BENCH_GRPC_PORT=9191 BENCH_HTTP_PORT=9192 BENCH_OPS_PORT=8181 (gatehouse)
#   BENCH_READY_TIMEOUT=30 (seconds gatehouse may take to become ready)
#   BENCH_KEEP_AWAKE=1 keeps both CPUs from idling (see bench/README.md)
#   BENCH_TENANCY=0 skips the multi-tenant rows (shipped policy, 200k-grant
#   world synced from a control endpoint into the bbolt cache; hot and cold)
#   BENCH_1M=1 adds the cold row at 1,000,000 grants (first time: ~1.5 min
#   to build the world, then ~1 min per run for the sidecar's snapshot)
#   BENCH_SNAPSHOT_TIMEOUT=600 (seconds a sidecar may take to snapshot a world)
#   BENCH_PEER=1 adds opa-envoy-plugin rows (hot and cold; built once, a few
#   minutes) with bench/peer/policy.rego and HS256 tokens
#   BENCH_CONTROL_PORT=9382
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${BENCH_DURATION:-8s}
WARMUP=${BENCH_WARMUP:-2s}
CONC=${BENCH_CONCURRENCY:-16}
CONNS=${BENCH_CONNS:-2}
NOOP_PORT=${BENCH_NOOP_PORT:-9391}
GRPC_PORT=${BENCH_GRPC_PORT:-9191}
HTTP_PORT=${BENCH_HTTP_PORT:-9192}
OPS_PORT=${BENCH_OPS_PORT:-8181}
CONTROL_PORT=${BENCH_CONTROL_PORT:-9382}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-30}
SNAPSHOT_TIMEOUT=${BENCH_SNAPSHOT_TIMEOUT:-600}
SCENARIO=bench/scenario-simple.json
CONFIG=bench/gatehouse-simple.yaml
KEYS=bench/.keys
TOKENS=bench/.var/tokens.json # minted tokens, reused across runs (12 h)
METRICS=http://127.0.0.1:$OPS_PORT/metrics

BENCH_START=$(date +%s)
TS=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=bench/results/$TS.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
SERVER_PID=""
CONTROL_PID=""
SPINNERS=()
ROWS=() # server folders, in table order

log() { printf '%s\n' "$*" >&2; }
elapsed() { echo "[$(($(date +%s) - BENCH_START)) s]"; }

# stop PID: SIGTERM, then SIGKILL after 5 s.
stop() {
	[[ -n $1 ]] || return 0
	kill -TERM "$1" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}
stop_server() {
	stop "$SERVER_PID"
	SERVER_PID=""
}
stop_control() {
	stop "$CONTROL_PID"
	CONTROL_PID=""
}

cleanup() {
	stop_server
	stop_control
	if ((${#SPINNERS[@]})); then
		kill "${SPINNERS[@]}" 2>/dev/null || true
		wait "${SPINNERS[@]}" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

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

# row NAME LABEL WORKLOAD: a server folder for the table.
row() {
	mkdir -p "$WORK/servers/$1"
	printf '%s\n' "$2" >"$WORK/servers/$1/label"
	printf '%s\n' "$3" >"$WORK/servers/$1/workload"
	ROWS+=("$WORK/servers/$1")
}
note() { printf '%s\n' "$2" >>"$WORK/servers/$1/notes"; }
skip() {
	log "$1: skipped ($2)"
	printf '%s\n' "$2" >"$WORK/servers/$1/skipped"
}

# --- build -------------------------------------------------------------------
mkdir -p bin bench/results bench/.var
log "building bin/loadgen, bin/benchworld"
go build -o bin/ ./cmd/loadgen ./cmd/benchworld

GATEHOUSE_SKIP=""
log "building bin/gatehouse"
rm -f bin/gatehouse # never measure a stale binary
if ! go build -o bin/ ./cmd/gatehouse 2>"$WORK/gatehouse-build.log"; then
	GATEHOUSE_SKIP="cmd/gatehouse does not build: $(grep -m1 . "$WORK/gatehouse-build.log" || echo unknown error)"
fi

if [[ ! -f $KEYS/signing.pem || ! -f $KEYS/public.pem ]]; then
	bin/loadgen keys --out "$KEYS" >&2
fi

# --- worlds --------------------------------------------------------------------

# world SIZE: bench/.var/world-SIZE with its control file and both
# scenarios, built once and kept (bench/.var is not committed).
world() {
	local dir=bench/.var/world-$1 start
	if [[ ! -f $dir/control/control.db || ! -f $dir/scenario.json ]]; then
		log "building the $1 world (once; kept in $dir)"
		start=$(date +%s)
		rm -rf "$dir.tmp"
		bin/benchworld build --size "$1" --dir "$dir.tmp" >&2
		rm -rf "$dir" && mv "$dir.tmp" "$dir"
		log "    built in $(($(date +%s) - start)) s"
	fi
	if [[ ! -f $dir/scenario-cold.json ]]; then # a world built before cold scenarios
		bin/benchworld scenario --size "$1" --kind cold --out "$dir/scenario-cold.json"
	fi
}
WORLDS=${BENCH_TENANCY:-1}
TENANCY=$WORLDS # the Gatehouse multi-tenant rows
[[ -z $GATEHOUSE_SKIP ]] || TENANCY=0
if [[ $WORLDS == 1 ]]; then
	world 200k
	[[ ${BENCH_1M:-0} != 1 ]] || world 1m
fi

# --- the peer (BENCH_PEER=1) -------------------------------------------------------
# opa-envoy-plugin, built once into bin/ from the Go module proxy. The proxy
# here serves only v1.0.0-envoy of it (OPA v1.0.0); `go install pkg@version`
# fails on its deprecation check (the proxy refuses the version list), so it
# is built from a scratch module that requires it.
PEER_VERSION=${BENCH_PEER_VERSION:-v1.0.0-envoy}
PEER_SKIP=""
if [[ ${BENCH_PEER:-0} == 1 ]]; then
	if [[ $WORLDS != 1 ]]; then
		PEER_SKIP="the peer rows need the worlds (BENCH_TENANCY=0)"
	elif [[ ! -x bin/opa-envoy-plugin || $(cat bin/opa-envoy-plugin.version 2>/dev/null) != "$PEER_VERSION" ]]; then
		log "building bin/opa-envoy-plugin $PEER_VERSION (once; a few minutes)"
		mod=bench/.var/peer-build
		rm -rf "$mod" && mkdir -p "$mod"
		if (cd "$mod" && go mod init peer >/dev/null 2>&1 &&
			go get "github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin@$PEER_VERSION" &&
			CGO_ENABLED=0 go build -o ../../../bin/opa-envoy-plugin github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin) \
			>"$WORK/peer-build.log" 2>&1; then
			echo "$PEER_VERSION" >bin/opa-envoy-plugin.version
		else
			PEER_SKIP="opa-envoy-plugin $PEER_VERSION does not build: $(grep -m1 -i 'error\|forbidden\|cannot' "$WORK/peer-build.log" || tail -n 1 "$WORK/peer-build.log")"
		fi
	fi
	if [[ -z $PEER_SKIP && ! -f $KEYS/hs256.secret ]]; then
		(umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n/+=' >"$KEYS/hs256.secret")
	fi
fi

# --- pinning -----------------------------------------------------------------
SERVER_PIN=()
CLIENT_PIN=()
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]] && taskset -c 1 true 2>/dev/null; then
	SERVER_PIN=(taskset -c 0)
	CLIENT_PIN=(taskset -c 1)
	PINNED=(--pinned)
	NOTE="server pinned to CPU 0, loadgen to CPU 1, GOMAXPROCS=1 each; c=$CONC over $CONNS connections"
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
NOTE="$NOTE; $(go env GOVERSION); $(nproc) CPUs; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')"

# --- one server ----------------------------------------------------------------

# measure NAME ADDR [run flags...]: the three runs against the server in
# $SERVER_PID with $MEASURE_SCENARIO (default scenario-simple.json), reading
# its cache counters from $MEASURE_METRICS if set; results go to
# $WORK/servers/NAME. With $MEASURE_FRESH set (a command), that command
# starts a fresh server before each run (cold rows: a decision cache that
# kept the last run's answers would make the next run's start hot).
measure() {
	local name=$1 addr=$2
	shift 2
	local dir=$WORK/servers/$name
	local common=(--addr "$addr" --scenario "${MEASURE_SCENARIO:-$SCENARIO}" --signing-key "$KEYS/signing.pem"
		--token-cache "$TOKENS" --conns "$CONNS" "$@")
	[[ -z ${MEASURE_METRICS:-} ]] || common+=(--metrics "$MEASURE_METRICS")
	run() { # run FILE LABEL [flags...]
		local file=$1 label=$2 rc=0
		shift 2
		if [[ -n ${MEASURE_FRESH:-} ]] && ! $MEASURE_FRESH; then
			echo "$label: could not start a fresh server: $START_ERR" >"$dir/failed"
			log "    FAILED: $(cat "$dir/failed")"
			return 1
		fi
		log "$(elapsed) $name $label"
		GOMAXPROCS=1 "${CLIENT_PIN[@]}" bin/loadgen run "${common[@]}" --pid "$SERVER_PID" --out "$dir/$file" "$@" \
			>"$dir/$file.txt" 2>"$dir/$file.err" || rc=$?
		sed 's/^/    /' "$dir/$file.txt" >&2
		if ((rc >= 2)) || [[ ! -s $dir/$file ]]; then
			{ echo -n "$label: "; grep '^loadgen:' "$dir/$file.err" | tail -n 1 | grep . || echo "loadgen exited with status $rc"; } >"$dir/failed"
			log "    FAILED: $(cat "$dir/failed")"
			return 1
		fi
		return 0 # mismatches (rc 1) are recorded in the JSON and fail the report
	}
	run c16.json "closed loop c=$CONC" --concurrency "$CONC" --warmup "$WARMUP" --duration "$DURATION" || return 0
	sed -n 's/^plan: /    plan: /p' "$dir/c16.json.err" >&2
	run c1.json "closed loop c=1" --concurrency 1 --conns 1 --warmup 1s --duration "$DURATION" || return 0
	local peak half
	peak=$(sed -n 's/.*"checks_per_sec":\([0-9.eE+]*\).*/\1/p' "$dir/c16.json")
	half=$(awk -v p="$peak" 'BEGIN { printf "%.0f", p / 2 }')
	if ((half < 1)); then
		echo "no throughput at c=$CONC to take half of" >"$dir/failed"
		return 0
	fi
	run half_peak.json "open loop at $half/s (half of peak)" --concurrency "$CONC" --rate "$half" --warmup 1s --duration "$DURATION" || return 0
}

# peak_mib PID: the process's largest RSS so far (VmHWM), in MiB.
peak_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# start_server NAME TIMEOUT READY_URL CMD...: starts CMD pinned with
# GOMAXPROCS=1 and waits for the gRPC port and READY_URL; sets SERVER_PID
# and READY_MS. On failure it sets START_ERR and returns 1.
start_server() {
	local name=$1 timeout=$2 url=$3 logf=$WORK/$1.log start i
	shift 3
	START_ERR=""
	for p in "$GRPC_PORT" "$HTTP_PORT" "$OPS_PORT"; do
		if port_open "$p"; then
			START_ERR="port $p is already in use (see BENCH_*_PORT)"
			return 1
		fi
	done
	log "$(elapsed) starting $*"
	start=$(now_ms)
	GOMAXPROCS=1 "${SERVER_PIN[@]}" "$@" >>"$logf" 2>&1 &
	SERVER_PID=$!
	for ((i = 0; i < timeout * 10; i++)); do
		if ! kill -0 "$SERVER_PID" 2>/dev/null; then
			local rc=0
			wait "$SERVER_PID" || rc=$?
			SERVER_PID=""
			START_ERR="$(basename "$1") exited with status $rc before it was ready: $(tail -n 1 "$logf")"
			return 1
		fi
		if port_open "$GRPC_PORT" && curl -sf -o /dev/null "$url"; then
			READY_MS=$(($(now_ms) - start))
			log "    ready after $READY_MS ms"
			return 0
		fi
		sleep 0.1
	done
	log "log (last lines):"
	tail -n 5 "$logf" | sed 's/^/    /' >&2
	stop_server
	START_ERR="not ready (grpc :$GRPC_PORT, $url) within ${timeout}s"
	return 1
}
READYZ=http://127.0.0.1:$OPS_PORT/readyz

# start_control SIZE: a control endpoint serving a copy of the world's file
# (the world stays pristine).
start_control() {
	local dir=$WORK/control-$1
	mkdir -p "$dir"
	cp "bench/.var/world-$1/control/control.db" "$dir/control.db"
	echo bench-admin >"$WORK/admin.token"
	echo bench-sync >"$WORK/sync.token"
	if port_open "$CONTROL_PORT"; then
		log "port $CONTROL_PORT is already in use (set BENCH_CONTROL_PORT)"
		return 1
	fi
	bin/gatehouse control --addr "127.0.0.1:$CONTROL_PORT" --data-dir "$dir" \
		--admin-token-file "$WORK/admin.token" --sync-token-file "$WORK/sync.token" >"$WORK/control-$1.log" 2>&1 &
	CONTROL_PID=$!
	local i
	for ((i = 0; i < 300; i++)); do
		port_open "$CONTROL_PORT" && return 0
		kill -0 "$CONTROL_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "the control endpoint did not start: $(tail -n 1 "$WORK/control-$1.log")"
	stop_control
	return 1
}

# sidecar_config SIZE: a serve config for the shipped policy over the world
# synced from the control endpoint, its cache file in $WORK/sidecar-SIZE.
# verify_on_start is off: a cold row's fresh processes open a file the last
# one closed cleanly, and the background consistency check a restart
# otherwise runs (files up to 1 GiB) would take the measured core for
# seconds (at 1M grants: the whole window, and the RSS of the whole file).
sidecar_config() {
	serve_config "$WORK/sidecar-$1.yaml" "$PWD/policies" \
		"{dir: $WORK/sidecar-$1, control_url: \"http://127.0.0.1:$CONTROL_PORT\", token_file: $WORK/sync.token, verify_on_start: false}"
	echo "$WORK/sidecar-$1.yaml"
}

# serve_config FILE POLICY_DIR DATA: writes a serve config on the bench's
# ports and RS256 issuer, its policies from POLICY_DIR, DATA its data
# section (a YAML flow mapping).
serve_config() {
	cat >"$1" <<YAML
listen: {grpc: 127.0.0.1:$GRPC_PORT, http: 127.0.0.1:$HTTP_PORT, ops: 127.0.0.1:$OPS_PORT}
policies: {dir: $2}
data: $3
issuers:
  - {issuer: "https://bench.gatehouse.test/", audiences: [api], algorithms: [RS256], public_key_file: $PWD/$KEYS/public.pem}
YAML
}

# --- rows, in table order ---------------------------------------------------------
PEER=${BENCH_PEER:-0}
ONE_M=${BENCH_1M:-0}
PEER_LABEL="opa-envoy-plugin $PEER_VERSION, same policy in Rego, HS256"
row noop "no-op ext_authz (grpc-go)" ""
touch "$WORK/servers/noop/floor"
row gatehouse-simple "Gatehouse, simple policy (bench/policies/simple)" hot
row gatehouse-200k-hot "Gatehouse, shipped policy, 200k grants" hot
[[ $PEER != 1 ]] || row peer-200k-hot "$PEER_LABEL, 200k grants" hot
row gatehouse-200k-cold "Gatehouse, shipped policy, 200k grants" cold
[[ $WORLDS != 1 ]] || row gatehouse-token-cold "Gatehouse, token check only (bench/policies/token), the 200k cold requests" cold
[[ $PEER != 1 ]] || row peer-200k-cold "$PEER_LABEL, 200k grants" cold
[[ $PEER != 1 ]] || row gatehouse-peerpolicy-200k-cold "Gatehouse, the peer's policy and data.json (HS256 in Rego), 200k grants" cold
if [[ $ONE_M == 1 ]]; then
	row gatehouse-1m-cold "Gatehouse, shipped policy, 1M grants" cold
	[[ $PEER != 1 ]] || row peer-1m-cold "$PEER_LABEL, 1M grants" cold
fi

# --- the floor: no-op ext_authz --------------------------------------------------
# The floor allows everything, but is sent the very same bytes as a real
# server: the cold 200k scenario when the tenancy rows run (the largest
# requests, the most distinct), else scenario-simple.json.
FLOOR_SCENARIO=$SCENARIO
[[ $WORLDS != 1 ]] || FLOOR_SCENARIO=bench/.var/world-200k/scenario-cold.json
note noop "the floor is sent $FLOOR_SCENARIO with every expectation set to allow"
if port_open "$NOOP_PORT"; then
	log "port $NOOP_PORT is already in use (set BENCH_NOOP_PORT): cannot measure the floor"
	exit 2
fi
# floor NAME: the no-op server measured as row NAME.
floor() {
	GOMAXPROCS=1 "${SERVER_PIN[@]}" bin/loadgen noop --addr "127.0.0.1:$NOOP_PORT" >"$WORK/noop.log" 2>&1 &
	SERVER_PID=$!
	if ! wait_port "$NOOP_PORT" 10; then
		log "the no-op server did not start:"
		cat "$WORK/noop.log" >&2
		exit 2
	fi
	MEASURE_SCENARIO=$FLOOR_SCENARIO measure "$1" "127.0.0.1:$NOOP_PORT" --expect-all allow
	stop_server
}
floor noop

# --- gatehouse, simple policy ----------------------------------------------------
GH_ARGS=(bin/gatehouse serve --config "$CONFIG")
[[ $GRPC_PORT == 9191 ]] || GH_ARGS+=(--grpc-addr "127.0.0.1:$GRPC_PORT")
[[ $HTTP_PORT == 9192 ]] || GH_ARGS+=(--http-addr "127.0.0.1:$HTTP_PORT")
[[ $OPS_PORT == 8181 ]] || GH_ARGS+=(--ops-addr "127.0.0.1:$OPS_PORT")
if [[ -n $GATEHOUSE_SKIP ]]; then
	skip gatehouse-simple "$GATEHOUSE_SKIP"
elif start_server gatehouse-simple "$READY_TIMEOUT" "$READYZ" "${GH_ARGS[@]}"; then
	MEASURE_METRICS=$METRICS measure gatehouse-simple "127.0.0.1:$GRPC_PORT" --prime
	stop_server
else
	skip gatehouse-simple "$START_ERR"
fi

# --- the multi-tenant rows: 200k grants hot and cold, 1M grants cold ---------------
# Gatehouse: one control endpoint per world. The first sidecar takes a
# snapshot into a new cache file. Hot runs are primed (every distinct
# request sent once before the warm-up, so their windows measure the hot
# path however slowly the first pass went). Every cold run is made against
# a fresh process (a Gatehouse sidecar on that cache file, ready from it in
# milliseconds; the peer loading its data again), so that no run starts
# with the answers of the one before in its caches.

# fresh: stops the server and starts "${FRESH_CMD[@]}" for row $FRESH_ROW.
fresh() {
	stop_server
	start_server "$FRESH_ROW" "$FRESH_TIMEOUT" "$FRESH_URL" "${FRESH_CMD[@]}" || return 1
	FRESH_READY+=("$READY_MS")
}

# cold NAME SIZE TIMEOUT READY_URL CMD...: a cold row, each run against a
# fresh server.
cold() {
	FRESH_ROW=$1 FRESH_TIMEOUT=$3 FRESH_URL=$4 FRESH_READY=()
	local size=$2
	shift 4
	FRESH_CMD=("$@")
	MEASURE_FRESH=fresh MEASURE_SCENARIO=bench/.var/world-$size/scenario-cold.json \
		measure "$FRESH_ROW" "127.0.0.1:$GRPC_PORT" "${COLD_FLAGS[@]}"
	stop_server
	if ((${#FRESH_READY[@]})); then
		note "$FRESH_ROW" "each run against a fresh process (ready after ${FRESH_READY[*]} ms)"
	fi
}

# gatehouse_world SIZE: the Gatehouse rows of a world.
gatehouse_world() {
	local size=$1 hot=gatehouse-$1-hot cold=gatehouse-$1-cold
	[[ -d $WORK/servers/$hot ]] || hot=""
	if [[ $TENANCY != 1 ]]; then
		local why=${GATEHOUSE_SKIP:-BENCH_TENANCY=0}
		[[ -z $hot ]] || skip "$hot" "$why"
		skip "$cold" "$why"
		return 0
	fi
	if ! start_control "$size"; then
		[[ -z $hot ]] || skip "$hot" "no control endpoint"
		skip "$cold" "no control endpoint"
		return 0
	fi
	local cfg first=${hot:-$cold}
	cfg=$(sidecar_config "$size")
	if ! start_server "$first" "$SNAPSHOT_TIMEOUT" "$READYZ" bin/gatehouse serve --config "$cfg"; then
		[[ -z $hot ]] || skip "$hot" "$START_ERR"
		skip "$cold" "the first sidecar was not ready: $START_ERR"
		stop_control
		return 0
	fi
	note "$first" "ready after $READY_MS ms: snapshot of the $size world into a new cache file (peak RSS $(peak_mib "$SERVER_PID") MiB)"
	if [[ -n $hot ]]; then
		MEASURE_SCENARIO=bench/.var/world-$size/scenario.json MEASURE_METRICS=$METRICS measure "$hot" "127.0.0.1:$GRPC_PORT" --prime
		local lat
		lat=$(bin/benchworld latency --size "$size" --control "http://127.0.0.1:$CONTROL_PORT" \
			--admin-token-file "$WORK/admin.token" --grpc "127.0.0.1:$GRPC_PORT" --signing-key "$KEYS/signing.pem" --n 100 2>&1) || true
		log "    $lat"
		note "$hot" "$lat"
	fi
	COLD_FLAGS=(--metrics "$METRICS")
	cold "$cold" "$size" "$READY_TIMEOUT" "$READYZ" bin/gatehouse serve --config "$cfg"
	stop_control
}

# peer_world SIZE: the peer's rows of a world: opa-envoy-plugin serving
# bench/peer/policy.rego over the world as data.json, HS256 tokens.
peer_world() {
	local size=$1 hot=peer-$1-hot cold=peer-$1-cold
	[[ -d $WORK/servers/$hot ]] || hot=""
	if [[ -n $PEER_SKIP ]]; then
		[[ -z $hot ]] || skip "$hot" "$PEER_SKIP"
		skip "$cold" "$PEER_SKIP"
		return 0
	fi
	local data=bench/.var/world-$size/opa
	if [[ ! -f $data/tenancy/data.json ]]; then
		log "writing the $size world as data.json for the peer (once)"
		bin/benchworld opadata --size "$size" --out "$data/tenancy/data.json"
	fi
	mkdir -p "$data/bench"
	printf '{"hs256_secret": "%s"}\n' "$(cat "$KEYS/hs256.secret")" >"$data/bench/data.json"
	local cmd=(bin/opa-envoy-plugin run --server --addr "127.0.0.1:$OPS_PORT" --config-file bench/peer/config.yaml
		--set "plugins.envoy_ext_authz_grpc.addr=127.0.0.1:$GRPC_PORT" --log-level error bench/peer/policy.rego "$data")
	local url="http://127.0.0.1:$OPS_PORT/health?plugins"
	if [[ -n $hot ]]; then
		if start_server "$hot" "$SNAPSHOT_TIMEOUT" "$url" "${cmd[@]}"; then
			note "$hot" "ready after $READY_MS ms (loading data.json)"
			MEASURE_SCENARIO=bench/.var/world-$size/scenario.json \
				measure "$hot" "127.0.0.1:$GRPC_PORT" --prime --hs256-secret "$KEYS/hs256.secret"
			stop_server
		else
			skip "$hot" "$START_ERR"
		fi
	fi
	COLD_FLAGS=(--hs256-secret "$KEYS/hs256.secret")
	cold "$cold" "$size" "$SNAPSHOT_TIMEOUT" "$url" "${cmd[@]}"
}

# gatehouse_peer_policy SIZE: Gatehouse serving the peer's own policy and
# data (the general Rego path, SPEC §12 not involved): bench/peer/policy.rego
# with data.tenancy renamed data.peer (Gatehouse serves data.tenancy from its
# cache file; nothing else changes) and the world's data.json at data.peer,
# loaded from the policy directory; HS256 tokens verified in Rego, as the
# peer does (Gatehouse's own verifier rejects them: input.token is unused).
gatehouse_peer_policy() {
	local size=$1 name=gatehouse-peerpolicy-$1-cold
	[[ -d $WORK/servers/$name ]] || return 0
	if [[ -n $PEER_SKIP ]]; then
		skip "$name" "$PEER_SKIP"
		return 0
	fi
	local dir=$WORK/peerpolicy-$size
	mkdir -p "$dir/peer" "$dir/bench" "$WORK/peerpolicy-data-$size"
	sed 's/data\.tenancy\./data.peer./g' bench/peer/policy.rego >"$dir/policy.rego"
	ln "bench/.var/world-$size/opa/tenancy/data.json" "$dir/peer/data.json" 2>/dev/null ||
		cp "bench/.var/world-$size/opa/tenancy/data.json" "$dir/peer/data.json"
	cp "bench/.var/world-$size/opa/bench/data.json" "$dir/bench/data.json"
	serve_config "$WORK/peerpolicy-$size.yaml" "$dir" "{dir: $WORK/peerpolicy-data-$size}"
	COLD_FLAGS=(--hs256-secret "$KEYS/hs256.secret" --metrics "$METRICS")
	cold "$name" "$size" "$SNAPSHOT_TIMEOUT" "$READYZ" bin/gatehouse serve --config "$WORK/peerpolicy-$size.yaml"
}

# gatehouse_token_only: the breakdown row. Gatehouse with
# bench/policies/token (allow a verified token) and no tenancy data, sent
# the cold 200k requests, every one expected allowed (all carry valid
# tokens): what a first-seen check costs before any policy rule.
gatehouse_token_only() {
	local name=gatehouse-token-cold
	[[ -d $WORK/servers/$name ]] || return 0
	if [[ -n $GATEHOUSE_SKIP ]]; then
		skip "$name" "$GATEHOUSE_SKIP"
		return 0
	fi
	mkdir -p "$WORK/token-data"
	serve_config "$WORK/token.yaml" "$PWD/bench/policies/token" "{dir: $WORK/token-data}"
	COLD_FLAGS=(--expect-all allow --metrics "$METRICS")
	cold "$name" 200k "$READY_TIMEOUT" "$READYZ" bin/gatehouse serve --config "$WORK/token.yaml"
}

world_rows() {
	gatehouse_world "$1"
	[[ $1 != 200k ]] || gatehouse_token_only
	[[ $PEER != 1 ]] || peer_world "$1"
	[[ $PEER != 1 ]] || gatehouse_peer_policy "$1"
}
world_rows 200k
[[ $ONE_M != 1 ]] || world_rows 1m

# --- the floor again: how far the machine moved while the rows ran ---------------
# Every ratio above divides by the first floor; this one, measured last,
# shows whether that divisor still held (its "CPU vs floor" should be ~1.00×).
row noop-end "no-op ext_authz (grpc-go), again at the end" ""
note noop-end "the floor measured again after every other row: its ratios to the first floor show how much the machine moved during the bench"
floor noop-end

# --- report ----------------------------------------------------------------------
echo
rc=0
NOTE="$NOTE; bench took $(($(date +%s) - BENCH_START)) s"
bin/loadgen report --check "${PINNED[@]}" --note "$NOTE" --out "$RESULTS" "${ROWS[@]}" || rc=$?
echo
echo "raw results: $RESULTS"
exit "$rc"
