// The ledger file and the state lock: atomic replacement, modes, corrupt input, stale-lock takeover.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import {
  ensureStateDir,
  LEDGER_FORMAT,
  ledgerPath,
  readLedger,
  removeLedger,
  scopeDir,
  writeLedger,
  type Ledger,
} from '../../src/netfilter/transaction/ledger.js';
import { acquireStateLock, processStartTime } from '../../src/netfilter/transaction/lock.js';
import { planCapture } from '../../src/capture/plan.js';
import { loadCase } from '../cases.js';

const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mn-unit-'));
  dirs.push(dir);
  return dir;
}
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function sampleLedger(installId = 'id-1'): Ledger {
  const config = loadCase('ledger', { proxy: { user: 'meshproxy' } });
  return {
    format: LEDGER_FORMAT,
    installId,
    state: 'installed',
    operation: 'install',
    backend: 'iptables-nft',
    netns: 'x',
    toolVersion: '0.1.0',
    createdAt: '2026-01-01T00:00:00Z',
    updatedAt: '2026-01-01T00:00:00Z',
    current: {
      configHash: config.hash,
      configFile: null,
      config,
      plan: planCapture(config),
      objects: { kind: 'xtables', families: [] },
      extras: { routes: [], loopbackAddresses: [] },
    },
    previous: null,
    before: { kind: 'xtables', families: [] },
    snapshot: { kind: 'xtables', families: [] },
    confirm: null,
  };
}

describe('ledger', () => {
  it('creates the state directories with mode 0700 and tightens a loose one', () => {
    const root = tempDir();
    chmodSync(root, 0o755);
    const dir = scopeDir(root, 'ns1');
    ensureStateDir(dir, root);
    expect(dir).toBe(join(root, 'netns', 'ns1'));
    for (const d of [root, join(root, 'netns'), dir]) expect(statSync(d).mode & 0o777).toBe(0o700);
  });

  it('round-trips through an atomic write, mode 0600, leaving no temp file', () => {
    const root = tempDir();
    const dir = scopeDir(root, null);
    ensureStateDir(dir, root);
    writeLedger(dir, sampleLedger('a'));
    writeLedger(dir, sampleLedger('b'));
    expect(readLedger(dir)?.installId).toBe('b');
    expect(statSync(ledgerPath(dir)).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['ledger.json']);
    removeLedger(dir);
    expect(readLedger(dir)).toBeNull();
  });

  it('reports a torn or foreign file as LEDGER_CORRUPT with the path', () => {
    const dir = tempDir();
    writeFileSync(ledgerPath(dir), '{"format": 1, "installId"');
    expect(() => readLedger(dir)).toThrow(/ledger\.json is not valid JSON/);
    writeFileSync(ledgerPath(dir), JSON.stringify({ format: 99 }));
    try {
      readLedger(dir);
      expect.unreachable();
    } catch (error) {
      expect(isMeshctlError(error, 'LEDGER_CORRUPT')).toBe(true);
      expect((error as Error).message).toContain('has format 99');
    }
  });
});

describe('state lock', () => {
  it('is exclusive while its owner lives, and names the owner', async () => {
    const dir = tempDir();
    const lock = await acquireStateLock(dir, 'install');
    try {
      await expect(acquireStateLock(dir, 'status', 100)).rejects.toThrow(
        new RegExp(`pid ${process.pid} \\(\`install\``),
      );
    } finally {
      lock.release();
    }
    const again = await acquireStateLock(dir, 'status', 100);
    again.release();
  });

  it('takes over a lock whose process is gone (a kill -9 mid-command)', async () => {
    const dir = tempDir();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    const pid = Number(dead.stdout);
    writeFileSync(join(dir, 'lock'), JSON.stringify({ pid, startTime: '12345', command: 'install', since: 'then' }));
    const lock = await acquireStateLock(dir, 'status', 100);
    expect(lock.takenOverFrom?.pid).toBe(pid);
    expect(JSON.parse(readFileSync(join(dir, 'lock'), 'utf8')).pid).toBe(process.pid);
    lock.release();
  });

  it('tells a reused pid from the original owner by its start time', async () => {
    const dir = tempDir();
    writeFileSync(
      join(dir, 'lock'),
      JSON.stringify({
        pid: process.pid,
        startTime: `${processStartTime(process.pid)}0`,
        command: 'old',
        since: 'then',
      }),
    );
    const lock = await acquireStateLock(dir, 'status', 100);
    expect(lock.takenOverFrom?.command).toBe('old');
    lock.release();
  });
});
