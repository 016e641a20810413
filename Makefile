# regwarm: make build | test | lint | fuzz | e2e | conformance | conformance-s3 | ci | run | bench
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Unit tests: everything except the e2e package itself (e2e/harness has fast unit tests).
UNIT    = $(shell $(GO) list ./... | grep -v '/e2e$$')
CONFIG  ?= config.example.yaml

.PHONY: build test lint fuzz e2e conformance conformance-s3 ci run bench clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/regwarm ./cmd/regwarm

test:
	$(GO) test -race $(UNIT)

# errcheck checks tests too. .ci/errcheck-excludes.txt lets go, on purpose:
# fmt.Fprint* (messages to stderr, a terminal or an http.ResponseWriter whose
# write failure the next write or the caller sees anyway); (net.Conn).Close
# (nothing left to flush or report once a connection is given up);
# (*os.File).Close, meant for read-only files: a file written to must have
# its Close (or Sync) checked explicitly, which errcheck cannot tell apart,
# so reviewers do; (io.ReadCloser).Close, response bodies and blob readers
# (a reader's Close loses nothing). Elsewhere: handle or log the error, or
# `_ =` with a short reason.
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -l:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff
	$(GO) vet ./...
	staticcheck ./...
	errcheck -exclude .ci/errcheck-excludes.txt ./...

# fuzz runs every fuzz target (a `func FuzzXxx` in any *_test.go, found
# anew each run) for FUZZTIME; go test -fuzz takes one target per run. A
# failure leaves its input under the package's testdata/fuzz/<target>/:
# commit it with the fix, it is then a regression test of `make test`.
FUZZTIME ?= 5s
fuzz:
	@rc=0; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
		dir=./$$(dirname $${f#./}); \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$dir $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$dir >/tmp/regwarm-fuzz.$$$$ 2>&1 \
				|| { cat /tmp/regwarm-fuzz.$$$$; rc=1; }; \
		done; \
	done; rm -f /tmp/regwarm-fuzz.$$$$; exit $$rc

e2e:
	$(GO) test -count=1 -timeout 20m ./e2e/...

conformance: build
	REGWARM_BIN=$(CURDIR)/bin/regwarm e2e/conformance.sh

# conformance-s3 runs the same suite against regwarm serve on the S3 store
# (a versitygw started by the script).
conformance-s3: build
	CONFORMANCE_STORAGE=s3 REGWARM_BIN=$(CURDIR)/bin/regwarm e2e/conformance.sh

# ci runs every step even after a failure, with timings, and fails if any failed.
CI_STEPS ?= lint test fuzz e2e conformance conformance-s3
ci:
	@rc=0; for step in $(CI_STEPS); do \
		start=$$(date +%s); echo "--- make $$step"; \
		if $(MAKE) --no-print-directory $$step; then res=ok; else res=FAILED; rc=1; fi; \
		echo "--- make $$step: $$res in $$(( $$(date +%s) - start ))s"; \
	done; exit $$rc

run:
	$(GO) run ./cmd/regwarm run --config $(CONFIG)

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(UNIT)

clean:
	rm -rf bin
