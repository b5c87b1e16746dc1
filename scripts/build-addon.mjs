// npm's install script: builds the native addon with node-gyp and shows node-gyp's output only when it fails
// (a successful build is some 50 lines of "gyp info"). Extra arguments go to node-gyp (default: rebuild).
// npm puts its own node-gyp on PATH for lifecycle scripts; outside npm, node-gyp must be on PATH.
import { spawnSync } from 'node:child_process';

const args = process.argv.slice(2);
const started = Date.now();
const result = spawnSync('node-gyp', args.length > 0 ? args : ['rebuild'], {
  encoding: 'utf8',
  stdio: ['ignore', 'pipe', 'pipe'],
});
if (result.error || result.status !== 0) {
  process.stderr.write(`${result.stdout ?? ''}${result.stderr ?? ''}`);
  const missing = ['g++', 'make', 'python3'].filter(
    (tool) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status !== 0,
  );
  const why = result.error
    ? `could not run node-gyp (${result.error.message})`
    : `node-gyp exited with ${result.status ?? result.signal}`;
  process.stderr.write(
    `meshctl: building the native addon failed: ${why}${missing.length > 0 ? `; missing ${missing.join(', ')} (apt-get install ${missing.join(' ')})` : ''}\n`,
  );
  process.exit(1);
}
process.stdout.write(
  `meshctl: built the native addon build/Release/meshctl_native.node (${((Date.now() - started) / 1000).toFixed(1)} s)\n`,
);
