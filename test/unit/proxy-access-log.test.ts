// The access log writes one JSON line per connection to its file, samples only successful ones, and can move to
// another file on reload; its lines are the ones pino wrote (golden, and compared with pino itself), and hostile
// strings stay inside their JSON value.
import { mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ACCESS_RECORD_KEYS,
  AccessLog,
  isoNow,
  quote,
  serializeFields,
  serializeRecord,
  type AccessRecord,
} from '../../src/proxy/access-log.js';
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

/** Whether this process still has `file` open (the writer closes it once its last write has completed). */
function stillOpen(file: string): boolean {
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === file) return true;
    } catch {
      // closed meanwhile
    }
  }
  return false;
}

/**
 * Closes the log and returns its lines once all are on disk. The destination opens and writes asynchronously: a
 * last record that is always kept (an RST, never sampled out) marks the end, and the writer closes the file only
 * after a write still in flight at close() has completed. That write may land after the rest, which close() writes
 * at once, so the marker need not be the last line: wait for both, then drop the marker wherever it is.
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
    `the end marker in ${file} and the file closed by the writer`,
    () => (!stillOpen(file) && existsSync(file) && read().some((l) => l.id === 'end-marker') ? read() : null),
    10_000,
    {
      seen: () => (existsSync(file) ? readFileSync(file, 'utf8').slice(-500) : 'no file yet'),
    },
  );
  return all.filter((l) => l.id !== 'end-marker');
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

  it('lets a caller sample before building the record (sampled, then writeClosed)', async () => {
    const file = tempFile();
    const log = new AccessLog({ enabled: true, path: file, sampleRatio: 0, periodicIntervalMs: null });
    let built = 0;
    const build = (result: AccessRecord['result']) => (built++, record({ id: result, result }));
    for (const result of ['FIN', 'FIN', 'RST', 'FIN', 'timeout'] as const)
      if (log.sampled(result)) log.writeClosed(build(result));
    expect(built).toBe(2);
    expect((await lines(file, log)).map((l) => l.id)).toEqual(['RST', 'timeout']);
    expect(new AccessLog({ enabled: false, path: file, sampleRatio: 1, periodicIntervalMs: null }).sampled('RST')).toBe(
      false,
    );
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

describe('access-log lines', () => {
  // The lines pino wrote before (same options as the old AccessLog), at a frozen clock: the format must not move.
  function pinoLine(base: Record<string, unknown>, record: object, msg: string): string {
    let out = '';
    const logger = pino(
      { base, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'msg' },
      { write: (s: string) => (out += s) },
    );
    logger.info(record, msg);
    return out;
  }
  const at = new Date('2026-12-05T00:25:42.007Z');
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(at);
  });
  afterEach(() => vi.useRealTimers());

  const full = record({
    service: 'payments',
    attempts: 2,
    tls: 'mtls',
    peerIdentity: 'spiffe://mesh.example/ns/a/sa/b',
    handshakeMs: 1.25,
  });
  const cases: { name: string; record: AccessRecord }[] = [
    { name: 'a plain FIN', record: record({}) },
    { name: 'a mesh service over mTLS', record: full },
    {
      name: 'a refusal that never connected',
      record: record({ result: 'refused', detail: 'denied', upstream: null, upstreamLocal: null, connectMs: null }),
    },
    { name: 'no original destination', record: record({ originalDst: null, service: undefined, attempts: undefined }) },
    { name: 'plaintext with mTLS configured', record: record({ tls: 'plaintext' }) },
    { name: 'a non-finite number', record: record({ durationMs: Number.NaN, bytesFromClient: Infinity }) },
  ];

  it.each(cases)('writes $name as pino wrote it', ({ record: r }) => {
    expect(serializeRecord(serializeFields({ worker: 3 }), r, null, ',"msg":"connection closed"}\n')).toBe(
      pinoLine({ worker: 3 }, r, 'connection closed'),
    );
  });

  it('writes the golden line of a closed connection', () => {
    expect(serializeRecord(serializeFields({ worker: 1 }), full, null, ',"msg":"connection closed"}\n')).toBe(
      '{"level":30,"time":"2026-12-05T00:25:42.007Z","worker":1,"id":"0.1","direction":"outbound",' +
        '"source":"10.0.0.1:40000","originalDst":"10.0.0.2:80","upstream":"10.0.0.2:80",' +
        '"upstreamLocal":"10.0.0.1:40001","bytesFromClient":10,"bytesFromUpstream":20,"durationMs":3.5,' +
        '"connectMs":0.4,"result":"FIN","detail":"client-first","service":"payments","attempts":2,"tls":"mtls",' +
        '"peerIdentity":"spiffe://mesh.example/ns/a/sa/b","handshakeMs":1.25,"msg":"connection closed"}\n',
    );
  });

  it('writes progress lines with the state after the record, as the worker spread them', () => {
    const { result: _r, detail: _d, ...open } = record({ service: 'payments', attempts: 1 });
    const progress = { ...open, state: 'relaying' };
    expect(serializeRecord(serializeFields({ worker: 0 }), progress, 'relaying', ',"msg":"connection open"}\n')).toBe(
      pinoLine({ worker: 0 }, progress, 'connection open'),
    );
  });

  it('writes DNS query records (any fields, nested answers) as pino wrote them', () => {
    const q = {
      transport: 'udp',
      source: '127.0.0.1:5353',
      id: 4242,
      name: 'payments.mesh.',
      type: 'A',
      rcode: 'NOERROR',
      answeredFrom: 'mesh',
      answers: ['10.96.0.10', { ttl: 5 }],
      truncated: false,
      upstream: null,
      durationMs: 0.25,
      detail: undefined,
    };
    const line = `{"level":30,"time":"${isoNow()}"${serializeFields({ component: 'dns' })}${serializeFields(q)},"msg":"dns query"}\n`;
    expect(line).toBe(pinoLine({ component: 'dns' }, q, 'dns query'));
  });

  const hostile = [
    'quote " and backslash \\ and both \\"',
    'newline \n tab \t carriage \r nul \u0000 escape \u001b del \u007f',
    'non-ASCII: grüße, 日本語, emoji 🚀, line separator \u2028',
    'lone high surrogate \ud800 then text',
    'lone low surrogate \udc00',
    'reversed pair \udc00\ud800',
    '"}\n{"level":60,"msg":"forged"',
  ];

  it.each(hostile)('keeps a hostile string one valid JSON value: %j', (s) => {
    const r = record({ detail: s, service: s, peerIdentity: s, tls: 'mtls' });
    const line = serializeRecord('', r, null, ',"msg":"connection closed"}\n');
    expect(line.indexOf('\n')).toBe(line.length - 1);
    // bytes on disk are UTF-8: a lone surrogate must be an escape, not a raw code unit (written as U+FFFD)
    const parsed = JSON.parse(Buffer.from(line, 'utf8').toString('utf8')) as Record<string, unknown>;
    expect(parsed).toMatchObject({ detail: s, service: s, peerIdentity: s, msg: 'connection closed' });
    expect(parsed.level).toBe(30); // the forged line's level stayed inside detail
  });

  it('escapes lone surrogates as \\uXXXX and passes other non-ASCII through as UTF-8', () => {
    expect(quote('a\ud800b')).toBe('"a\\ud800b"');
    expect(quote('🚀é')).toBe('"🚀é"');
    expect(quote('plain')).toBe('"plain"');
  });

  it('formats the time as toISOString does, across seconds and when the clock steps back', () => {
    const base = Date.UTC(2026, 11, 31, 23, 59, 58, 990);
    for (const t of [base, base + 9, base + 10, base + 1010, base + 2000, base - 5000, base + 123_456_789, 0, 999])
      expect(isoNow(t)).toBe(new Date(t).toISOString());
  });

  it('lists every AccessRecord field in the order of the line', () => {
    const line = JSON.parse(serializeRecord('', full, null, ',"msg":"m"}\n')) as Record<string, unknown>;
    expect(Object.keys(line).filter((k) => k !== 'level' && k !== 'time' && k !== 'msg')).toEqual([
      ...ACCESS_RECORD_KEYS,
    ]);
  });
});
