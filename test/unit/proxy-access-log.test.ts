// The access log writes one JSON line per connection to its file, samples only successful ones, and can move to
// another file on reload.
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AccessLog, type AccessRecord } from '../../src/proxy/access-log.js';
import { waitUntil } from '../helpers/wait.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempFile(name = 'access.log'): string {
  const dir = mkdtempSync(join(tmpdir(), 'mp-alog-'));
  dirs.push(dir);
  return join(dir, name);
}

const record = (over: Partial<AccessRecord>): AccessRecord => ({
  id: '0.1',
  direction: 'outbound',
  source: '10.0.0.1:40000',
  originalDst: '10.0.0.2:80',
  upstream: '10.0.0.2:80',
  upstreamLocal: '10.0.0.1:40001',
  bytesFromClient: 10,
  bytesFromUpstream: 20,
  durationMs: 3.5,
  connectMs: 0.4,
  result: 'FIN',
  detail: 'client-first',
  ...over,
});

/**
 * Closes the log and returns its lines once all are on disk. The destination opens and writes asynchronously, so
 * a last record that is always kept (an RST, never sampled out) marks the end: wait for it, then drop it.
 */
async function lines(file: string, log: AccessLog): Promise<Record<string, unknown>[]> {
  log.closed(record({ id: 'end-marker', result: 'RST', detail: 'end-marker' }));
  log.close();
  const read = () =>
    readFileSync(file, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const all = await waitUntil(
    `the end marker as the last line of ${file}`,
    () => (read().at(-1)?.id === 'end-marker' ? read() : null),
    10_000,
    {
      seen: () => (existsSync(file) ? readFileSync(file, 'utf8').slice(-500) : 'no file yet'),
    },
  );
  return all.slice(0, -1);
}

describe('AccessLog', () => {
  it('writes one JSON line per closed connection with every field', async () => {
    const file = tempFile();
    const log = new AccessLog({ enabled: true, path: file, sampleRatio: 1, periodicIntervalMs: null }, { worker: 3 });
    log.closed(record({}));
    const [line] = await lines(file, log);
    expect(line).toMatchObject({ ...record({}), worker: 3, msg: 'connection closed' });
    expect(typeof line!.time).toBe('string');
  });

  it('drops sampled-out successful connections but always keeps errors', async () => {
    const file = tempFile();
    const log = new AccessLog({ enabled: true, path: file, sampleRatio: 0, periodicIntervalMs: null });
    for (let i = 0; i < 20; i++) log.closed(record({ id: `0.${i}` }));
    for (const result of ['RST', 'timeout', 'refused', 'connect-failed', 'drain'] as const)
      log.closed(record({ result, detail: 'x' }));
    const all = await lines(file, log);
    expect(all.map((l) => l.result)).toEqual(['RST', 'timeout', 'refused', 'connect-failed', 'drain']);
  });

  it('keeps about the configured share of successful connections', async () => {
    const file = tempFile();
    const log = new AccessLog({ enabled: true, path: file, sampleRatio: 0.5, periodicIntervalMs: null });
    for (let i = 0; i < 2000; i++) log.closed(record({}));
    const n = (await lines(file, log)).length;
    expect(n).toBeGreaterThan(800);
    expect(n).toBeLessThan(1200);
  });

  it('writes nothing when disabled, and moves to a new file on reconfigure', async () => {
    const first = tempFile('first.log');
    const second = join(first, '..', 'second.log');
    const log = new AccessLog({ enabled: false, path: first, sampleRatio: 1, periodicIntervalMs: null });
    log.closed(record({ id: 'lost' }));
    log.reconfigure({ enabled: true, path: second, sampleRatio: 1, periodicIntervalMs: 1000 });
    expect(log.periodicIntervalMs).toBe(1000);
    log.closed(record({ id: 'kept' }));
    const all = await lines(second, log);
    expect(all.map((l) => l.id)).toEqual(['kept']);
    expect(existsSync(first)).toBe(false);
  });
});
