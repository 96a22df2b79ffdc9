# Parley's build. The two commands a newcomer needs:
#   make example   generate code and run the chat example on the in-process
#                  broker; it prints the URL to open
#   make test      every test: Go (with -race), generators' goldens,
#                  TypeScript (Node and a real Chromium)
# .ci/run runs `make check-generated test` on a clean clone.

BUF := go tool -modfile=tools/go.mod buf

.PHONY: example hello generate check-generated test test-go test-ts lint bench fuzz

example: generate
	go run ./examples/chat/cmd/chat-server

## hello: the smallest program: a server and a client in one process.
hello: generate
	go run ./examples/hello

## generate: regenerate gen/, the e2e service and every example.
generate: node_modules
	$(BUF) generate
	$(BUF) generate --template internal/e2e/buf.gen.yaml
	$(BUF) generate --template examples/hello/buf.gen.yaml
	$(BUF) generate --template examples/chat/buf.gen.yaml
	$(BUF) generate --template examples/echo-web/buf.gen.yaml
	node examples/chat/web/build.mjs
	npm run --silent generate:test -w @parleyrpc/runtime

## check-generated: fail when checked-in generated code is stale: when
## `make generate` changes any file (on a clean clone, as CI runs it, that
## is any difference from the last commit). The working tree is
## snapshotted as a tree object through a scratch index, so untracked files
## that generate does not touch (notes, profiles) neither fail the check nor
## end up in the real index.
check-generated: node_modules
	@snapshot() { idx=$$(mktemp) && cp "$$(git rev-parse --git-dir)/index" "$$idx" && \
		GIT_INDEX_FILE="$$idx" git add -A -- . ':!package-lock.json' && \
		tree=$$(GIT_INDEX_FILE="$$idx" git write-tree); st=$$?; rm -f "$$idx"; echo "$$tree"; return $$st; }; \
	before=$$(snapshot) && $(MAKE) --no-print-directory generate && after=$$(snapshot) && \
	if [ "$$before" != "$$after" ]; then \
		git diff --stat "$$before" "$$after"; \
		echo "generated code is stale: 'make generate' changed the files above; commit them"; exit 1; \
	fi

test: test-go test-ts

test-go: lint
	go test -race -count=1 ./...

lint: node_modules
	go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go') && exit 1)

test-ts: node_modules
	npm run --silent build -w @parleyrpc/runtime
	npx tsc -p runtime/ts/tsconfig.test.json --noEmit
	npx tsc -p bench/ts --noEmit
	npm test -w @parleyrpc/runtime
	node --test --test-concurrency=1 examples/echo-web/test/echo-web.test.mjs examples/chat/web/test/chat.test.mjs

node_modules: package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

## bench: the unary benchmark, Parley beside raw gorilla and grpc-go.
bench:
	cd bench && go run ./cmd/parley-bench

## fuzz: run the fuzz targets for a while each (CI runs their seed corpora).
fuzz:
	go test -run '^$$' -fuzz FuzzDecodeFrame -fuzztime 60s ./runtime/parley
	go test -run '^$$' -fuzz FuzzDispatch -fuzztime 60s ./runtime/parley
	go test -run '^$$' -fuzz FuzzWebSocketFrames -fuzztime 60s ./runtime/parley
