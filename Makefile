# regwarm: make build | test | lint | e2e | conformance | ci | run | bench
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Unit tests: everything except the e2e package itself (e2e/harness has fast unit tests).
UNIT    = $(shell $(GO) list ./... | grep -v '/e2e$$')
CONFIG  ?= config.example.yaml

.PHONY: build test lint e2e conformance ci run bench clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/regwarm ./cmd/regwarm

test:
	$(GO) test -race $(UNIT)

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -l:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

e2e:
	$(GO) test -count=1 -timeout 20m ./e2e/...

conformance: build
	REGWARM_BIN=$(CURDIR)/bin/regwarm e2e/conformance.sh

# ci runs every step even after a failure, with timings, and fails if any failed.
CI_STEPS ?= lint test e2e conformance
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
