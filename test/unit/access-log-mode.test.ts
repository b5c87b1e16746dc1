// The access log names every app's peers and destinations: the file is created 0640, never world-readable.
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { AccessLog } from '../../src/proxy/access-log.js';

let dir = '';
afterEach(() => rmSync(dir, { recursive: true, force: true }));

it('creates the access log file with mode 0640', async () => {
  dir = mkdtempSync(join(tmpdir(), 'mn-alog-'));
  const path = join(dir, 'logs', 'access.log');
  const log = new AccessLog({ enabled: true, path, sampleRatio: 1, periodicIntervalMs: null });
  // The destination opens asynchronously: wait for the file (bounded), then look at its mode.
  const deadline = Date.now() + 5000;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`${path} was not created within 5 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
  log.close();
  expect(statSync(path).mode & 0o777).toBe(0o640);
});
