#!/usr/bin/env bash
# S3 store benchmark: regwarm on S3 (versitygw) vs regwarm on the
# filesystem vs the S3 server itself, in one run (bench/s3bench). Run by
# hand from the repository root, on an otherwise idle machine:
#
#   bench/s3.sh                       # about a minute on 2 cores
#   bench/s3.sh -rounds 9 -cold-runs 5
#
# Needs: go, docker-registry (apt-get install docker-registry) and versitygw
# (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/regwarm-s3bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
go build -o "$work/regwarm" ./cmd/regwarm
go build -o "$work/s3bench" ./bench/s3bench
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$work/s3bench" -regwarm "$work/regwarm" -work "$work" "$@"
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
