#!/usr/bin/env bash
# Pull benchmark: regwarm vs Debian docker-registry in proxy mode vs direct
# from the upstream, measured in one run; rewrites the generated section of
# docs/benchmarks.md. Run by hand from the repository root (not in CI):
#
#   bench/pull.sh                 # about 4 minutes on 2 cores
#   bench/pull.sh -runs 3         # extra flags go to bench/pullbench
#   PULLBENCH_DOC= bench/pull.sh  # print the section instead of writing the doc
#   PULLBENCH_GOBENCH=0 bench/pull.sh   # skip the registryapi Go benchmarks
#   REGWARM_BIN=/path/to/regwarm bench/pull.sh   # measure that binary instead of building ./cmd/regwarm
#   PULLBENCH_WAIT_IDLE=600 bench/pull.sh        # first wait up to 600 s for a quiet machine
#   bench/pull.sh -only multi -runs 3            # only the multi-platform cold pulls with warming
#   bench/pull.sh -only multi -targets direct,regwarm-serve,regwarm   # also the same pull with warming off
#   bench/pull.sh -only wan -wan-rtt 40ms -wan-mbps 100   # only the pulls over the shaped WAN link
#
# The numbers are only worth something on an otherwise idle machine: the
# report records the load average before and after the run.
#
# Needs: go, docker-registry and skopeo (apt-get install docker-registry skopeo);
# taskset (util-linux) for the pinned pulls.
# Every server listens on a free loopback port from the kernel's ephemeral
# range (never 15000-15099) and is stopped, by pid, when the run ends.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
doc=${PULLBENCH_DOC-docs/benchmarks.md}

for tool in go docker-registry skopeo; do
	command -v "$tool" >/dev/null || { echo "pull.sh: $tool is not installed" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/regwarm-pullbench.XXXXXX")
bench_pid=""
cleanup() {
	local rc=$?
	if [[ -n $bench_pid ]] && kill -0 "$bench_pid" 2>/dev/null; then
		kill -TERM "$bench_pid" 2>/dev/null || true # pullbench stops its servers
		wait "$bench_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$work/bin"
if [[ -n ${REGWARM_BIN:-} ]]; then
	cp "$REGWARM_BIN" "$work/bin/regwarm"
else
	version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
	echo "pull.sh: building regwarm ($version)" >&2
	go build -ldflags "-X main.version=$version" -o "$work/bin/regwarm" ./cmd/regwarm
fi
echo "pull.sh: building pullbench, servefile and relay" >&2
go build -o "$work/bin/pullbench" ./bench/pullbench
go build -o "$work/bin/servefile" ./bench/servefile
go build -o "$work/bin/relay" ./bench/relay

# busy: whether the 1-minute load average exceeds half the CPUs.
busy() { awk -v n="$(nproc)" '{ exit !($1 > n / 2) }' /proc/loadavg; }
wait_idle=${PULLBENCH_WAIT_IDLE:-0}
while busy && ((wait_idle > 0)); do
	echo "pull.sh: load average $(cut -d' ' -f1-3 /proc/loadavg); waiting for a quiet machine (${wait_idle}s left)" >&2
	sleep 10
	wait_idle=$((wait_idle - 10))
done
if busy; then
	echo "pull.sh: warning: the machine is busy (load average $(cut -d' ' -f1-3 /proc/loadavg)); expect noisy numbers" >&2
fi

gobench=()
if [[ ${PULLBENCH_GOBENCH:-1} != 0 ]]; then
	echo "pull.sh: go test -run '^\$' -bench . ./registryapi" >&2
	go test -run '^$' -bench . ./registryapi | grep -E '^(Benchmark|cpu:)' >"$work/gobench.txt"
	gobench=(-gobench "$work/gobench.txt")
fi

mkdir -p "$work/run"
"$work/bin/pullbench" -regwarm "$work/bin/regwarm" -servefile "$work/bin/servefile" -relay "$work/bin/relay" -work "$work/run" \
	-doc "${doc:+$root/$doc}" -command "bench/pull.sh${*:+ $*}" "${gobench[@]}" "$@" &
bench_pid=$!
wait "$bench_pid"
bench_pid=""
