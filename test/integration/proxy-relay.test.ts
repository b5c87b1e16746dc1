// Relay correctness through the real rules and the real proxy: half-close in both orders, 200 MiB each way with
// equal checksums, 2,000 connections open at the same time, and 6,000 short ones 32 at a time with no worker lost.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { inNs } from '../helpers/netns.js';
import { createProxyLab, labConfigObject, type ProxyLab, type RunningProxy } from '../helpers/proxy-lab.js';
import { waitUntil } from '../helpers/wait.js';

interface Exchange {
  sent: number;
  sentHash: string | null;
  received: number;
  receivedHash: string | null;
  error?: string;
  ms: number;
}

interface ServerRecord {
  remote: string;
  sent?: number;
  sentHash?: string;
  received?: number;
  receivedHash?: string;
  error?: string;
}

const MiB = 1 << 20;

describe.skipIf(!integrationEnabled)('relay through the proxy', () => {
  let lab: ProxyLab;
  let proxy: RunningProxy;

  beforeAll(async () => {
    const raw = labConfigObject({ proxy: { workers: 2 } });
    lab = await createProxyLab('rly', 212, raw);
    await lab.peer.call('serve', {
      name: 'reply',
      kind: 'reply-after-eof',
      host: '0.0.0.0',
      port: 7001,
      opts: { replyBytes: MiB },
    });
    await lab.peer.call('serve', {
      name: 'first',
      kind: 'send-first',
      host: '0.0.0.0',
      port: 7002,
      opts: { sendBytes: MiB },
    });
    await lab.peer.call('serve', {
      name: 'stream',
      kind: 'stream',
      host: '0.0.0.0',
      port: 7003,
      opts: { sendBytes: 200 * MiB },
    });
    await lab.peer.call('serve', { name: 'echo', kind: 'echo', host: '0.0.0.0', port: 7004 });
    proxy = await lab.startProxy(lab.writeConfig(raw).file);
    await proxy.waitReady();
  });

  afterAll(async () => {
    await lab?.destroy();
  });

  /** The server's record of its first connection, once it has seen the client's EOF (it may lag the client a little). */
  async function serverRecord(name: string): Promise<ServerRecord> {
    let last: ServerRecord | undefined;
    return waitUntil(
      `server ${name}'s record of the client's EOF`,
      async () => {
        [last] = await lab.peer.call<ServerRecord[]>('records', { name });
        return last?.received !== undefined && last.sentHash !== undefined ? last : null;
      },
      10_000,
      { seen: () => last, intervalMs: 50 },
    );
  }

  it('delivers the full reply to a client that wrote 1 MiB and shut down its write side', async () => {
    const r = await lab.app.call<Exchange>('exchange', {
      host: lab.addrs.b4,
      port: 7001,
      sendBytes: MiB,
      mode: 'send-then-read',
    });
    expect(r.error).toBeUndefined();
    const server = await serverRecord('reply');
    expect(server!.received).toBe(MiB);
    expect(server!.receivedHash).toBe(r.sentHash);
    expect(r.received).toBe(MiB);
    expect(r.receivedHash).toBe(server!.sentHash);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:7001`);
    expect(line).toMatchObject({ result: 'FIN', detail: 'client-first', bytesFromClient: MiB, bytesFromUpstream: MiB });
  });

  it('lets the client keep sending after the server shut down its write side first (mirror case)', async () => {
    const r = await lab.app.call<Exchange>('exchange', {
      host: lab.addrs.b4,
      port: 7002,
      sendBytes: MiB,
      mode: 'read-then-send',
    });
    expect(r.error).toBeUndefined();
    expect(r.received).toBe(MiB);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:7002`);
    const server = await serverRecord('first');
    expect(r.receivedHash).toBe(server!.sentHash);
    expect(server!.received).toBe(MiB);
    expect(server!.receivedHash).toBe(r.sentHash);
    expect(line).toMatchObject({
      result: 'FIN',
      detail: 'upstream-first',
      bytesFromClient: MiB,
      bytesFromUpstream: MiB,
    });
  });

  it('relays 200 MiB each way at the same time with equal checksums', async () => {
    const r = await lab.app.call<Exchange>('exchange', {
      host: lab.addrs.b4,
      port: 7003,
      sendBytes: 200 * MiB,
      mode: 'concurrent',
      timeoutMs: 90_000,
    });
    expect(r.error).toBeUndefined();
    const server = await serverRecord('stream');
    expect(r.received).toBe(200 * MiB);
    expect(server!.received).toBe(200 * MiB);
    expect(r.receivedHash).toBe(server!.sentHash);
    expect(server!.receivedHash).toBe(r.sentHash);
    const line = await proxy.waitForAccess((l) => l.originalDst === `${lab.addrs.b4}:7003`);
    expect(line).toMatchObject({ result: 'FIN', bytesFromClient: 200 * MiB, bytesFromUpstream: 200 * MiB });
  }, 120_000);

  /** /stats once no outbound connection is open any more. */
  async function statsOnceIdle(): Promise<any> {
    let stats: any;
    return waitUntil(
      'no open outbound connection in /stats',
      async () => {
        stats = await proxy.adminJson('/stats');
        return stats.connections.active.outbound === 0 ? stats : null;
      },
      10_000,
      { seen: () => stats?.connections, intervalMs: 50 },
    );
  }

  /** What a failed count is read with: the proxy's front-door counters and both namespaces' TCP drop counters. */
  async function seen(): Promise<string> {
    const stats = await proxy.adminJson('/stats').catch((e: Error) => ({ error: e.message }));
    const drops = (ns: string) =>
      inNs(ns, 'nstat', ['-az'])
        .split('\n')
        .filter((l) =>
          /ListenOverflows|ListenDrops|ReqQFullDrop|SyncookiesSent|TCPAbortOn|TCPTimeouts|EmbryonicRsts/.test(l),
        )
        .map((l) => l.trim().split(/\s+/).slice(0, 2).join('='))
        .join(' ');
    return JSON.stringify({
      frontDoor: stats.workers?.map((w: { frontDoor: unknown }) => w.frontDoor),
      connections: stats.connections,
      client: drops(lab.client),
      server: drops(lab.server),
    });
  }

  it('carries 2,000 connections open at the same time without an error', async () => {
    const before = await proxy.adminJson('/stats');
    const r = await lab.app.call<{ count: number; echoed: number; errorCount: number; errors: string[] }>(
      'concurrent',
      {
        host: lab.addrs.b4,
        port: 7004,
        count: 2000,
        bytes: 2048,
        timeoutMs: 60_000,
      },
    );
    if (r.errors.length > 0) expect(r.errors, await seen()).toEqual([]);
    expect(r.echoed).toBe(2000);
    // Every one of them went through the proxy and ended cleanly.
    const after = await statsOnceIdle();
    expect(after.connections.accepted.outbound - before.connections.accepted.outbound).toBe(2000);
    expect(after.connections.closed.outbound.FIN - before.connections.closed.outbound.FIN).toBe(2000);
    expect(after.connections.active.outbound).toBe(0);
    const records = await lab.peer.call<ServerRecord[]>('records', { name: 'echo' });
    expect(records.length).toBe(2000);
    expect(records.filter((x) => x.error)).toEqual([]);
  }, 120_000);

  it('carries 6,000 short connections, 32 at a time, without an error or a worker lost', async () => {
    // Pairs end on the relay thread while new ones are handed over: the churn that once crashed a worker.
    const before = await statsOnceIdle();
    const pidsBefore = before.workers.map((w: { pid: number }) => w.pid);
    const r = await lab.app.call<{ done: number; errorCount: number; errors: string[] }>('churn', {
      host: lab.addrs.b4,
      port: 7004,
      count: 6000,
      parallel: 32,
      bytes: 64,
      timeoutMs: 60_000,
    });
    expect(r.errors).toEqual([]);
    expect(r.done).toBe(6000);
    const after = await statsOnceIdle();
    expect(after.workers.map((w: { pid: number }) => w.pid)).toEqual(pidsBefore);
    expect(after.connections.closed.outbound.FIN - before.connections.closed.outbound.FIN).toBe(6000);
    expect(proxy.stderr()).not.toContain('worker exited unexpectedly');
  }, 120_000);
});
