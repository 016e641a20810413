#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite, full 1.1 profile (sha512,
# referrers, subject, non-distributable layers all enabled), against regwarm.
#
#   e2e/conformance.sh                              build regwarm, start `regwarm serve`, test it
#   CONFORMANCE_TARGET=127.0.0.1:5000 e2e/conformance.sh   test a registry that is already running
#   CONFORMANCE_STORAGE=s3 e2e/conformance.sh       the same on the S3 store: starts versitygw, makes a
#                                                   bucket, runs `regwarm serve` with storage.s3
#
# Environment:
#   REGWARM_BIN          use this regwarm binary instead of building one
#   CONFORMANCE          the conformance binary (default: conformance on PATH)
#   CONFORMANCE_RESULTS  keep junit.xml/report.html/results.yaml in this directory
#   CONFORMANCE_REPO1/2  repositories (default conformance/repo1, conformance/repo2)
#   CONFORMANCE_STORAGE  filesystem (default) or s3
#   VERSITYGW            the versitygw binary for s3 (default: versitygw on PATH, else $(go env GOPATH)/bin)
# Exit status: 0 when every test passed, 1 on any failure, 2 on a setup error.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/regwarm-conformance.XXXXXX")
regwarm_pid=""
s3_pid=""
keep_work=0
storage=${CONFORMANCE_STORAGE:-filesystem}

cleanup() {
	if [[ -n $regwarm_pid ]] && kill -0 "$regwarm_pid" 2>/dev/null; then
		kill -TERM "$regwarm_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$regwarm_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$regwarm_pid" 2>/dev/null || true
	fi
	if [[ -n $s3_pid ]]; then kill -KILL "$s3_pid" 2>/dev/null || true; wait "$s3_pid" 2>/dev/null || true; fi
	if ((keep_work)); then echo "conformance: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

die() { echo "conformance: $*" >&2; exit 2; }

conformance=${CONFORMANCE:-conformance}
command -v "$conformance" >/dev/null || die "$conformance not found on PATH (go install github.com/opencontainers/distribution-spec/conformance@…; see .ci/run)"

# http_status PORT PATH prints the HTTP status of GET http://127.0.0.1:PORT/PATH (no curl needed).
http_status() {
	local line
	{ exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
	printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n' "$2" "$1" >&3
	IFS=' ' read -r _ line _ <&3 || true
	exec 3<&-
	echo "$line"
}

# free_port prints a random port on 127.0.0.1 that nothing listens on.
free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	die "no free port"
}

# start_s3 starts versitygw on a free port over $work/s3 and creates bucket
# "regwarm" (curl signs the request); it sets storage_yaml and the key env.
start_s3() {
	local gw=${VERSITYGW:-}
	if [[ -z $gw ]]; then
		gw=$(command -v versitygw || echo "$(go env GOPATH)/bin/versitygw")
	fi
	[[ -x $gw ]] || die "versitygw not found; install it with: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0"
	command -v curl >/dev/null || die "curl not found (needed to create the bucket)"
	local port status
	port=$(free_port)
	mkdir -p "$work/s3"
	export REGWARM_S3_KEY=conformancekey REGWARM_S3_SECRET=conformancesecret123
	ROOT_ACCESS_KEY=$REGWARM_S3_KEY ROOT_SECRET_KEY=$REGWARM_S3_SECRET \
		"$gw" --port "127.0.0.1:$port" --access "$REGWARM_S3_KEY" --secret "$REGWARM_S3_SECRET" posix "$work/s3" \
		>"$work/versitygw.log" 2>&1 &
	s3_pid=$!
	for _ in $(seq 200); do
		status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" \
			--user "$REGWARM_S3_KEY:$REGWARM_S3_SECRET" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
			"http://127.0.0.1:$port/regwarm" || true)
		if [[ $status == 200 ]]; then
			echo "conformance: versitygw (pid $s3_pid) on 127.0.0.1:$port, bucket regwarm"
			storage_yaml="storage: {s3: {bucket: regwarm, endpoint: \"http://127.0.0.1:$port\", path_style: true, access_key_id_env: REGWARM_S3_KEY, secret_access_key_env: REGWARM_S3_SECRET}}"
			return
		fi
		kill -0 "$s3_pid" 2>/dev/null || break
		sleep 0.1
	done
	tail -n 20 "$work/versitygw.log" >&2 || true
	die "versitygw did not start or the bucket could not be created"
}

storage_yaml=""
case $storage in
filesystem) ;;
s3) [[ -z ${CONFORMANCE_TARGET:-} ]] || die "CONFORMANCE_STORAGE=s3 starts its own regwarm; unset CONFORMANCE_TARGET"; start_s3 ;;
*) die "CONFORMANCE_STORAGE must be filesystem or s3" ;;
esac

# start_regwarm builds (unless REGWARM_BIN) and starts regwarm serve; sets target.
start_regwarm() {
	local bin=${REGWARM_BIN:-}
	if [[ -z $bin ]]; then
		bin=$work/regwarm
		echo "conformance: building regwarm"
		(cd "$root" && go build -o "$bin" ./cmd/regwarm) || die "go build ./cmd/regwarm failed"
	fi
	local port mport status
	for attempt in 1 2 3; do
		port=$(free_port); mport=$(free_port)
		rm -rf "$work/data"
		cat >"$work/regwarm.yaml" <<-EOF
			version: 1
			data_dir: $work/data
			log: {level: info, format: text}
			serve: {listen: "127.0.0.1:$port"}
			metrics: {listen: "127.0.0.1:$mport"}
			registries:
			  - {name: local, default: true, push: true}
			  - {name: conformance, push: true}
			$storage_yaml
		EOF
		"$bin" serve --config "$work/regwarm.yaml" >"$work/regwarm.log" 2>&1 &
		regwarm_pid=$!
		for _ in $(seq 300); do
			kill -0 "$regwarm_pid" 2>/dev/null || break
			status=$(http_status "$port" /v2/ || true)
			if [[ $status == 200 || $status == 401 ]]; then
				target=127.0.0.1:$port
				echo "conformance: regwarm serve (pid $regwarm_pid) on $target, $(grep -o 'store=[^ ]*' "$work/regwarm.log" | head -n 1)"
				return
			fi
			sleep 0.1
		done
		echo "conformance: regwarm did not start (attempt $attempt); log tail:" >&2
		tail -n 20 "$work/regwarm.log" >&2 || true
		kill -KILL "$regwarm_pid" 2>/dev/null || true
		wait "$regwarm_pid" 2>/dev/null || true
		regwarm_pid=""
	done
	die "regwarm serve did not become ready"
}

target=${CONFORMANCE_TARGET:-}
if [[ -z $target ]]; then start_regwarm; else echo "conformance: testing $target"; fi

results=${CONFORMANCE_RESULTS:-$work/results}
mkdir -p "$results"
# Only our settings: drop every OCI_* variable (legacy names included) first.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^OCI_' || true)
export OCI_VERSION=1.1 OCI_REGISTRY=$target OCI_TLS=disabled OCI_LOG=warn OCI_RESULTS_DIR=$results \
	OCI_REPO1=${CONFORMANCE_REPO1:-conformance/repo1} OCI_REPO2=${CONFORMANCE_REPO2:-conformance/repo2} \
	OCI_API_PULL=true OCI_API_PUSH=true OCI_API_REFERRER=true \
	OCI_API_BLOBS_DELETE=true OCI_API_MANIFESTS_DELETE=true OCI_API_TAGS_DELETE=true OCI_API_TAGS_LIST=true \
	OCI_DATA_SHA512=true OCI_DATA_SUBJECT=true OCI_DATA_SUBJECT_MISSING=true OCI_DATA_SUBJECT_LIST=true \
	OCI_DATA_NONDISTRIBUTABLE=true OCI_DATA_ARTIFACT=true OCI_DATA_ARTIFACT_LIST=true OCI_DATA_INDEX=true \
	OCI_DATA_INDEX_LIST=true OCI_DATA_DATA_FIELD=true OCI_DATA_CUSTOM_FIELDS=true OCI_DATA_NO_LAYERS=true \
	OCI_DATA_EMPTY_BLOB=true

start=$SECONDS
rc=0
(cd "$work" && timeout 600 "$conformance" >"$work/out.txt" 2>"$work/err.txt") || rc=$?
echo "conformance: suite ran in $((SECONDS - start))s (exit $rc)"

junit=$results/junit.xml
if [[ ! -s $junit ]]; then
	keep_work=1
	tail -n 30 "$work/out.txt" "$work/err.txt" >&2 || true
	die "no junit.xml written"
fi
attr() { grep -o '<testsuites[^>]*>' "$junit" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]\+' || echo 0; }
tests=$(attr tests) failures=$(attr failures) errors=$(attr errors) skipped=$(attr skipped) disabled=$(attr disabled)
echo "conformance: storage=$storage tests=$tests failures=$failures errors=$errors skipped=$skipped disabled=$disabled"

if ((failures + errors > 0 || rc != 0)); then
	sed -n '/^API conformance:/,$p' "$work/out.txt" | grep -E 'conformance:$|FAIL' || true
	echo "conformance: failing tests (with the first error logged for each):"
	grep -o '<testcase name="[^"]*" classname="[^"]*" time="[^"]*" status="\(failure\|error\)"' "$junit" |
		sed -e 's/^<testcase name="//' -e 's/" classname=.*//' \
			-e 's/&#34;/"/g; s/&#39;/'"'"'/g; s/&lt;/</g; s/&gt;/>/g; s/&amp;/\&/g' |
		awk -v errfile="$work/err.txt" '
			BEGIN {
				while ((getline line < errfile) > 0) {
					if (match(line, /name="[^"]*"/)) {
						n = substr(line, RSTART + 6, RLENGTH - 7)
						e = line; sub(/.* error=/, "", e)
						if (!(n in err)) err[n] = substr(e, 1, 220)
					}
				}
			}
			{ printf "  FAIL %s%s\n", $0, ($0 in err ? "  -- " err[$0] : "") }'
	[[ -n ${CONFORMANCE_RESULTS:-} ]] || keep_work=1
	echo "conformance: full report: $results/report.html"
	exit 1
fi
echo "conformance: PASS"
