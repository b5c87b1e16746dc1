// The addon on a real kernel: sockets REDIRECTed by iptables/ip6tables in a namespace report the destination the
// client dialled (IPv4 and IPv6); a socket no NAT ever touched gives ENOENT.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { createIsolatedNs, deleteNs } from '../helpers/netns.js';
import { assertBuilt, startAgent, type Agent } from '../helpers/proxy-lab.js';

const NAT_NS = 'mp-addon-nat';
const BARE_NS = 'mp-addon-bare';

interface OriginalDstReply {
  ok: boolean;
  dst?: { address: string; port: number; family: string };
  local?: { address: string; port: number };
  error?: { code?: string; causeCode?: string; causeErrno?: number; causeSyscall?: string; message: string };
}

function restore(ns: string, tool: string, text: string): void {
  execFileSync('ip', ['netns', 'exec', ns, tool, '--noflush'], {
    input: text,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, XTABLES_LOCKFILE: `/tmp/${ns}.xtables.lock` },
  });
}

describe.skipIf(!integrationEnabled)('originalDst on redirected sockets', () => {
  let natAgent: Agent;
  let bareAgent: Agent;

  beforeAll(async () => {
    assertBuilt();
    createIsolatedNs(NAT_NS, { ipv4: '10.77.0.1/24', ipv6: 'fd00:77::1/64' });
    createIsolatedNs(BARE_NS, { ipv4: '10.78.0.1/24', ipv6: 'fd00:78::1/64' });
    restore(
      NAT_NS,
      'iptables-restore',
      '*nat\n-A OUTPUT -p tcp -d 10.77.0.9 --dport 8080 -j REDIRECT --to-ports 15101\nCOMMIT\n',
    );
    restore(
      NAT_NS,
      'ip6tables-restore',
      '*nat\n-A OUTPUT -p tcp -d fd00:77::9 --dport 8443 -j REDIRECT --to-ports 15102\nCOMMIT\n',
    );
    natAgent = await startAgent(NAT_NS);
    bareAgent = await startAgent(BARE_NS);
  });

  afterAll(() => {
    natAgent?.stop();
    bareAgent?.stop();
    deleteNs(NAT_NS);
    deleteNs(BARE_NS);
    rmSync(`/tmp/${NAT_NS}.xtables.lock`, { force: true });
  });

  it('returns the IPv4 address and port the client connected to before REDIRECT', async () => {
    const r = await natAgent.call<OriginalDstReply>('originalDst', {
      listen: { host: '127.0.0.1', port: 15101 },
      connect: { host: '10.77.0.9', port: 8080 },
    });
    expect(r.error).toBeUndefined();
    expect(r.local).toEqual({ address: '127.0.0.1', port: 15101 });
    expect(r.dst).toEqual({ address: '10.77.0.9', port: 8080, family: 'ipv4' });
  });

  it('returns the IPv6 address and port through IP6T_SO_ORIGINAL_DST', async () => {
    const r = await natAgent.call<OriginalDstReply>('originalDst', {
      listen: { host: '::1', port: 15102 },
      connect: { host: 'fd00:77::9', port: 8443 },
    });
    expect(r.error).toBeUndefined();
    expect(r.local).toEqual({ address: '::1', port: 15102 });
    expect(r.dst).toEqual({ address: 'fd00:77::9', port: 8443, family: 'ipv6' });
  });

  it('gives ENOENT for an IPv4 socket that was not redirected', async () => {
    const r = await bareAgent.call<OriginalDstReply>('originalDst', {
      listen: { host: '127.0.0.1', port: 15103 },
      connect: { host: '127.0.0.1', port: 15103 },
    });
    expect(r.ok).toBe(false);
    expect(r.error).toMatchObject({
      code: 'NO_ORIGINAL_DST',
      causeCode: 'ENOENT',
      causeErrno: 2,
      causeSyscall: 'getsockopt',
    });
  });

  it('gives ENOENT for an IPv6 socket that was not redirected', async () => {
    const r = await bareAgent.call<OriginalDstReply>('originalDst', {
      listen: { host: '::1', port: 15104 },
      connect: { host: '::1', port: 15104 },
    });
    expect(r.ok).toBe(false);
    expect(r.error).toMatchObject({ code: 'NO_ORIGINAL_DST', causeCode: 'ENOENT', causeSyscall: 'getsockopt' });
  });

  it('rejects bad arguments with TypeErrors inside the namespace process too', async () => {
    for (const [fd, family] of [
      [-1, 4],
      [3, 5],
      ['3', 4],
    ] as const) {
      const r = await natAgent.call<{ ok: boolean; isTypeError: boolean }>('addonCall', { fd, family });
      expect(r).toMatchObject({ ok: false, isTypeError: true });
    }
  });
});
