// Stands in for a systemd socket unit with Transparent=yes (systemd-socket-activate has no such option): makes
// IP_TRANSPARENT listeners with meshctl's own addon, then runs the command with them as fds 3, 4, ... and
// LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID set as systemd would (LISTEN_PID is the command's pid: `sh` exports
// its own pid and execs). Forwards SIGTERM/SIGINT/SIGHUP and exits with the command's status.
// Usage: node transparent-activate.mjs NAME=HOST:PORT|NAME=[HOST6]:PORT... -- COMMAND [ARGS...]  (inbound6=[::]:15006)
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';

const { transparentListen } = await import(new URL('../../dist/native/addon.js', import.meta.url));

const separator = process.argv.indexOf('--');
if (separator < 0 || separator === process.argv.length - 1) {
  console.error('usage: transparent-activate.mjs NAME=HOST:PORT|NAME=[HOST6]:PORT... -- COMMAND [ARGS...]');
  process.exit(2);
}
const names = [];
const fds = [];
for (const spec of process.argv.slice(2, separator)) {
  const m = /^([\w-]+)=(?:\[([^\]]+)\]|([^:\]]+)):(\d+)$/.exec(spec);
  if (!m) {
    console.error(`transparent-activate.mjs: ${spec} is not NAME=HOST:PORT or NAME=[HOST6]:PORT`);
    process.exit(2);
  }
  names.push(m[1]);
  fds.push(
    m[2] !== undefined
      ? transparentListen(6, m[2], Number(m[4]), 4096)
      : transparentListen(4, m[3], Number(m[4]), 4096),
  );
}

const child = spawn('sh', ['-c', 'export LISTEN_PID=$$; exec "$@"', 'sh', ...process.argv.slice(separator + 1)], {
  stdio: ['ignore', 'inherit', 'inherit', ...fds],
  env: { ...process.env, LISTEN_FDS: String(fds.length), LISTEN_FDNAMES: names.join(':') },
});
// The command holds the sockets now; when it exits they close.
for (const fd of fds) closeSync(fd);
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
