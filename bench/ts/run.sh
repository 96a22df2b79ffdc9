#!/bin/sh
# Runs the TypeScript client benchmark from anywhere: bundles bench/ts/bench.ts
# with esbuild (against @parleyrpc/runtime as built by
# `npm run build -w @parleyrpc/runtime`, or against the sources PARLEY_RUNTIME_SRC
# names, e.g. runtime/ts/src/index.ts) and runs it with node. Arguments pass
# through: duration=1000 warmup=300 count=3 c=1,64 payload=16,1024.
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
alias=""
if [ -n "$PARLEY_RUNTIME_SRC" ]; then
  alias="--alias:@parleyrpc/runtime=$PARLEY_RUNTIME_SRC"
fi
node_modules/.bin/esbuild bench/ts/bench.ts --bundle --platform=node --format=esm --target=node20 \
  --external:ws $alias --outfile=bench/ts/dist/bench.mjs --log-level=warning
exec node bench/ts/dist/bench.mjs "$@"
