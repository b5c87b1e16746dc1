// The relay thread's front door on a real kernel (src/native/front_door.cc): in a namespace whose nat OUTPUT rules
// REDIRECT the clients' connections to listening sockets the relays took with listen(), the thread accepts, reads
// the original destination and connects natively (FIN both ways, byte counts and the record's strings), hands asked
// destinations to JS as working fds, refuses connect failures, blackholed destinations, unredirected connections
// and self-loops with their own end records, keeps an open pair after unlisten, shares one socket between two relays
// (EPOLLEXCLUSIVE) without losing a connection, and leaves no fd behind after 1,000 connections.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { iptablesIn } from '../helpers/kernel-rules.js';
import { startLabAgent, type Agent } from '../helpers/lab-process.js';
import { createIsolatedNs, deleteNs } from '../helpers/netns.js';
import { waitUntil } from '../helpers/wait.js';
import { FRONT_FLAG_LOOP_SUSPECT } from '../../src/native/addon.js';

const NS = 'fn-front-door';
const AGENT = fileURLToPath(new URL('../helpers/front-door-agent.mjs', import.meta.url));
const LOCK = `/tmp/${NS}.xtables.lock`;
const SERVER = '10.61.0.1';
const BLACKHOLE = '10.61.0.99';
const UNREACHABLE = '10.61.0.98';
const LOOP = '10.61.0.97';
const SERVER6 = 'fd00:61::1';
const CLIENT_UID = 4243;
const LOOP_UID = 4242;
/** A second relay process runs as root with this gid, so that rules can tell its connections from the first's. */
const RELAY2_GID = 4244;

interface EndRecord {
  relay: string;
  id: number;
  fromClient: number;
  fromUpstream: number;
  end: string;
  side: number;
  errno: number;
  front?: number;
  listenerId?: number;
  durationUs?: number;
  connectUs?: number;
  flags?: number;
  source?: string;
  originalDst?: string;
  upstreamLocal?: string;
}

interface Exchange {
  local: string | null;
  received: string;
  error?: { code?: string; message: string };
}

// The relays run as root, which the rules exempt (the proxy's own uid); the clients (uid 4243 and 4242) are
// redirected: port 7003 to the shared listener, 7004 to the unlisten test's, 7005 to the shutdown test's, 7006 to
// the inbound one's, 7007 to the one unlistened while connecting, 7008 to the late-sweep one's,
// everything else in 10.61.0.0/24 to 15001 (IPv6: fd00:61::/64 to 15006). The relays' own connects to the blackhole
// are dropped; to the unreachable address they are answered by an ICMP host-unreachable. LOOP:7010 goes to 15009
// for everyone, the relays too: their own upstream connections there loop back into the listener.
const RULES = `*nat
-A OUTPUT -p tcp -d ${LOOP} --dport 7010 -j REDIRECT --to-ports 15009
-A OUTPUT -p tcp -m owner --uid-owner 0 -j RETURN
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7003 -j REDIRECT --to-ports 15002
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7004 -j REDIRECT --to-ports 15003
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7005 -j REDIRECT --to-ports 15004
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7006 -j REDIRECT --to-ports 15007
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7007 -j REDIRECT --to-ports 15008
-A OUTPUT -p tcp -d 10.61.0.0/24 --dport 7008 -j REDIRECT --to-ports 15010
-A OUTPUT -p tcp -d 10.61.0.0/24 -j REDIRECT --to-ports 15001
COMMIT
*filter
-A OUTPUT -d ${BLACKHOLE}/32 -j DROP
-A OUTPUT -d ${UNREACHABLE}/32 -p tcp --syn -j REJECT --reject-with icmp-host-unreachable
COMMIT
`;
const RULES6 = `*nat
-A OUTPUT -p tcp -m owner --uid-owner 0 -j RETURN
-A OUTPUT -p tcp -d fd00:61::/64 -j REDIRECT --to-ports 15006
COMMIT
`;

/** One iptables change in the lab namespace. */
const nsIptables = (args: readonly string[]) => iptablesIn(NS, args);

const baseOptions = {
  direction: 'outbound',
  family: 4,
  passthrough: true,
  ask: [] as { address: string; prefix: number; port: number }[],
  sourceAddress: null,
  selfLoopUid: -1,
  connectTimeoutMs: 300,
  maxDurationMs: -1,
  idleMs: -1,
  halfCloseMs: -1,
  keepaliveSec: -1,
};

describe.skipIf(!integrationEnabled)('the native front door', () => {
  let relayAgent: Agent;
  let relayAgent2: Agent;
  let client: Agent;
  let looper: Agent;

  const records = (relay: string) => relayAgent.call<EndRecord[]>('records', { relay });

  /** A socket listening on host:port that `relay` accepts on as `listenerId` (the relay keeps its own fd of it). */
  async function listenOn(relay: string, listenerId: number, host: string, port: number, options: object) {
    const listener = `l${listenerId}`;
    await relayAgent.call('openListener', { name: listener, host, port });
    await relayAgent.call('listen', { relay, listenerId, listener, options });
    await relayAgent.call('closeListener', { name: listener });
  }

  /** Waits until the relay process holds no more fds than `before` (what a test opened is all closed again). */
  async function fdsBackTo(before: number, when = ''): Promise<void> {
    let fds = 0;
    await waitUntil(
      `the relay process back at ${before} fds${when}`,
      async () => {
        fds = await relayAgent.call<number>('fdCount');
        return fds <= before;
      },
      10_000,
      { seen: () => fds, intervalMs: 50 },
    );
  }

  /** The end record of relay's connection whose originalDst (or source) matches, once it is there. */
  async function recordFor(relay: string, match: (r: EndRecord) => boolean, what: string): Promise<EndRecord> {
    let seen: EndRecord[] = [];
    return waitUntil(
      `${relay}'s end record for ${what}`,
      async () => {
        seen = await records(relay);
        return seen.find(match);
      },
      10_000,
      { seen: () => seen.slice(-5) },
    );
  }

  beforeAll(async () => {
    createIsolatedNs(NS, { ipv4: `${SERVER}/24`, ipv6: 'fd00:61::1/64' });
    for (const [tool, input] of [
      ['iptables-restore', RULES],
      ['ip6tables-restore', RULES6],
    ] as const) {
      execFileSync('ip', ['netns', 'exec', NS, tool], {
        input,
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, XTABLES_LOCKFILE: LOCK },
      });
    }
    relayAgent = await startLabAgent(AGENT, NS);
    relayAgent2 = await startLabAgent(AGENT, NS, { uid: 0, gid: RELAY2_GID });
    client = await startLabAgent(AGENT, NS, { uid: CLIENT_UID, gid: CLIENT_UID });
    looper = await startLabAgent(AGENT, NS, { uid: LOOP_UID, gid: LOOP_UID });
    for (const port of [7001, 7003, 7004, 7005, 7006, 7008, 7011]) {
      await client.call('serveEcho', { name: `echo${port}`, host: SERVER, port });
    }
    await client.call('serveEcho', { name: 'echo6', host: SERVER6, port: 7001 });
    await relayAgent.call('createRelay', { name: 'main' });
    await listenOn('main', 1, '127.0.0.1', 15001, {
      ...baseOptions,
      selfLoopUid: LOOP_UID,
      ask: [{ address: SERVER, prefix: 32, port: 7002 }],
    });
  }, 60_000);

  afterAll(() => {
    relayAgent?.stop();
    relayAgent2?.stop();
    client?.stop();
    looper?.stop();
    deleteNs(NS);
    rmSync(LOCK, { force: true });
  });

  it('connects a passthrough destination natively and relays FIN both ways, with bytes and strings in the record', async () => {
    const payload = 'p'.repeat(1000);
    const r = await client.call<Exchange>('exchange', { host: SERVER, port: 7001, send: payload });
    expect(r.error).toBeUndefined();
    expect(r.received).toBe(payload);
    const rec = await recordFor('main', (x) => x.source === r.local, `the client ${r.local}`);
    expect(rec).toMatchObject({
      end: 'fin',
      side: 0,
      errno: 0,
      fromClient: 1000,
      fromUpstream: 1000,
      front: 1,
      listenerId: 1,
      originalDst: `${SERVER}:7001`,
      flags: 0,
    });
    expect(rec.id).toBeGreaterThanOrEqual(2 ** 32);
    // The upstream leg is the one the echo server saw.
    const peers = await client.call<string[]>('peers', { name: 'echo7001' });
    expect(peers).toContain(rec.upstreamLocal);
    expect(rec.connectUs).toBeGreaterThanOrEqual(0);
    expect(rec.durationUs).toBeGreaterThanOrEqual(rec.connectUs!);
  });

  it('hands an asked destination to JS (onAccepted) with its original destination, and the fd works there', async () => {
    const r = await client.call<Exchange>('exchange', { host: SERVER, port: 7002, send: 'hello' });
    expect(r.error).toBeUndefined();
    expect(r.received).toBe(`asked ${SERVER}:7002 family 4 listener 1\nhello`);
    const accepted = await relayAgent.call<{ address: string; port: number }[]>('accepted', { relay: 'main' });
    expect(accepted).toEqual([expect.objectContaining({ address: SERVER, port: 7002, family: 4, listenerId: 1 })]);
    const stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'main' });
    expect(stats.asked).toBe(1);
  });

  it('resets the client and records connectFailed with ECONNREFUSED when the upstream refuses', async () => {
    const r = await client.call<Exchange>('exchange', { host: SERVER, port: 7999, send: 'x' });
    expect(r.error?.code).toBe('ECONNRESET');
    const rec = await recordFor('main', (x) => x.originalDst === `${SERVER}:7999`, 'port 7999');
    expect(rec).toMatchObject({ end: 'connectFailed', side: 1, errno: 111, connectUs: -1, upstreamLocal: '' });
  });

  it('resets the client and records connectFailed with EHOSTUNREACH when an ICMP error ends the connect', async () => {
    // The error arrives after connect() returned EINPROGRESS, as EPOLLERR alone: the thread reads SO_ERROR for it.
    const r = await client.call<Exchange>('exchange', { host: UNREACHABLE, port: 80, send: 'x' });
    expect(r.error?.code).toBe('ECONNRESET');
    const rec = await recordFor('main', (x) => x.originalDst === `${UNREACHABLE}:80`, 'the unreachable host');
    expect(rec).toMatchObject({ end: 'connectFailed', side: 1, errno: 113, connectUs: -1, upstreamLocal: '' });
    expect(await relayAgent.call('stats', { relay: 'main' })).toMatchObject({ connecting: 0 });
  });

  it('resets the client and records connectTimeout for a blackholed destination', async () => {
    const r = await client.call<Exchange>('exchange', { host: BLACKHOLE, port: 9, send: 'x' });
    expect(r.error?.code).toBe('ECONNRESET');
    const rec = await recordFor('main', (x) => x.originalDst === `${BLACKHOLE}:9`, 'the blackhole');
    expect(rec).toMatchObject({ end: 'connectTimeout', side: 1, connectUs: -1 });
    // Bounded by connectTimeoutMs (300) plus a sweep (50), never ended before the bound.
    expect(rec.durationUs).toBeGreaterThanOrEqual(300_000);
  });

  it('refuses a connection made straight to the listener (not redirected)', async () => {
    const r = await client.call<Exchange>('exchange', { host: '127.0.0.1', port: 15001, send: 'x' });
    expect(r.error?.code).toBe('ECONNRESET');
    // (The reset can beat Node's 'connect' event, so the record is found by its end, not the client's port.)
    const rec = await recordFor('main', (x) => x.end === 'notRedirected', 'the direct client');
    expect(rec).toMatchObject({ front: 1, listenerId: 1, fromClient: 0, originalDst: '127.0.0.1:15001' });
    expect(rec.source).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it("relays a connection whose client socket is selfLoopUid's once, as a loop suspect with a marked upstream", async () => {
    // The proxy's uid alone does not prove a loop (a NAT source-port remap can show an app's connection with the
    // endpoint of a proxy socket): the connection is relayed and its upstream marked; had it looped, the next hop
    // would be refused (the loop tests below).
    const r = await looper.call<Exchange>('exchange', { host: SERVER, port: 7001, send: 'x' });
    expect(r.error).toBeUndefined();
    expect(r.received).toBe('x');
    const rec = await recordFor('main', (x) => x.source === r.local, 'the looper');
    expect(rec).toMatchObject({ end: 'fin', flags: FRONT_FLAG_LOOP_SUSPECT, originalDst: `${SERVER}:7001` });
    const stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'main' });
    expect(stats).toMatchObject({
      selfLoop: 0,
      loopSuspects: 1,
      connectFailed: 2,
      connectTimeout: 1,
      notRedirected: 1,
    });
    // An asked destination goes to JS with the bit: JavaScript connects its upstream with the marker.
    const asked = await looper.call<Exchange>('exchange', { host: SERVER, port: 7002, send: 'y' });
    expect(asked.received).toBe(`asked ${SERVER}:7002 family 4 listener 1\ny`);
    const handed = await relayAgent.call<{ port: number; loopSuspect?: boolean }[]>('accepted', { relay: 'main' });
    expect(handed.at(-1)).toMatchObject({ port: 7002, loopSuspect: true });
    expect(handed.filter((a) => a.loopSuspect === true)).toHaveLength(1);
    expect(await relayAgent.call('stats', { relay: 'main' })).toMatchObject({ selfLoop: 0, loopSuspects: 2 });
  });

  it('stops accepting on unlisten while a pair it accepted goes on; list() shows it and abort() ends it', async () => {
    await listenOn('main', 3, '127.0.0.1', 15003, baseOptions);
    const first = await client.call<Exchange>('exchange', { host: SERVER, port: 7004, send: 'a', holdTag: 'h' });
    expect(first.received).toBe('a');
    expect(await relayAgent.call('unlisten', { relay: 'main', listenerId: 3 })).toBe(true);
    const refused = await client.call<Exchange>('exchange', { host: SERVER, port: 7004, send: 'b' });
    expect(refused.error?.code).toBe('ECONNREFUSED');
    expect(await client.call('heldSend', { tag: 'h', send: 'still here' })).toEqual({ received: 'still here' });
    const live = await relayAgent.call<{ id: number; originalDst: string; state: string; source: string }[]>('list', {
      relay: 'main',
    });
    const mine = live.find((c) => c.source === first.local);
    expect(mine).toMatchObject({ originalDst: `${SERVER}:7004`, state: 'open', listenerId: 3, fromClient: 11 });
    expect(await relayAgent.call('snapshot', { relay: 'main', id: mine!.id })).toEqual([11, 11, 0]);
    expect(await relayAgent.call('abort', { relay: 'main', id: mine!.id, reset: true })).toBe(true);
    const closed = await client.call<{ error?: { code: string } }>('heldClosed', { tag: 'h' });
    expect(closed.error?.code).toBe('ECONNRESET');
    const rec = await recordFor('main', (x) => x.id === mine!.id, `pair ${mine!.id}`);
    expect(rec).toMatchObject({ end: 'aborted', fromClient: 11, fromUpstream: 11, listenerId: 3 });
  });

  it('lets a connect in progress finish (here: time out) after its listener is unlistened, leaving no fd', async () => {
    const before = await relayAgent.call<number>('fdCount');
    await listenOn('main', 8, '127.0.0.1', 15008, baseOptions);
    const pending = client.call<Exchange>('exchange', { host: BLACKHOLE, port: 7007, send: 'x' });
    let live: { listenerId: number; state: string }[] = [];
    await waitUntil(
      'the connect in progress in list()',
      async () => {
        live = await relayAgent.call<{ listenerId: number; state: string }[]>('list', { relay: 'main' });
        return live.some((c) => c.listenerId === 8 && c.state === 'connecting');
      },
      10_000,
      { seen: () => live },
    );
    expect(await relayAgent.call('unlisten', { relay: 'main', listenerId: 8 })).toBe(true);
    expect((await pending).error?.code).toBe('ECONNRESET');
    const rec = await recordFor('main', (x) => x.listenerId === 8, 'the connect on listener 8');
    expect(rec).toMatchObject({ end: 'connectTimeout', originalDst: `${BLACKHOLE}:7007` });
    await fdsBackTo(before);
  });

  it('refuses real self-loops under load from the own-socket set by the second hop at the latest, two relays on one listener', async () => {
    // Every client connection to LOOP:7010 is accepted by a relay, whose upstream connect there is redirected back to
    // the same listener (the relays run as root, selfLoopUid 0): on loopback the looped SYN is often accepted by the
    // other relay before the connecting one's connect() has returned. The first match with an own upstream is a
    // suspect (it could be a NAT source-port remap, next test) and is relayed once more; the match with that
    // suspect's upstream is refused. A loop missed would be connected again, and again: the counts below hold only if
    // no chain goes past its second hop.
    const N = 300;
    const loopOptions = { ...baseOptions, selfLoopUid: 0, selfLoopOwnSet: true };
    for (const relay of ['la', 'lb']) await relayAgent.call('createRelay', { name: relay, withAccepted: false });
    await relayAgent.call('openListener', { name: 'l9', host: '127.0.0.1', port: 15009 });
    for (const relay of ['la', 'lb'])
      await relayAgent.call('listen', { relay, listenerId: 9, listener: 'l9', options: loopOptions });
    await relayAgent.call('closeListener', { name: 'l9' });
    const r = await client.call<{ done: number; errorCount: number; errors: string[] }>('churn', {
      host: LOOP,
      port: 7010,
      count: N,
      parallel: 32,
    });
    expect(r.done, JSON.stringify(r)).toBe(0);
    expect(r.errorCount).toBe(N);
    let all: EndRecord[] = [];
    let stats: Record<string, number>[] = [];
    const sum = (k: string) => stats[0]![k]! + stats[1]![k]!;
    await waitUntil(
      `end records of ${N} client connections, their suspects and their ${N} refused loops`,
      async () => {
        all = [...(await records('la')), ...(await records('lb'))];
        stats = [
          await relayAgent.call<Record<string, number>>('stats', { relay: 'la' }),
          await relayAgent.call<Record<string, number>>('stats', { relay: 'lb' }),
        ];
        return sum('open') === 0 && all.length === sum('accepted') ? all : null;
      },
      15_000,
      { seen: () => ({ records: all.length, accepted: sum('accepted'), open: sum('open') }) },
    );
    const loops = all.filter((x) => x.end === 'selfLoop');
    const suspects = all.filter((x) => ((x.flags ?? 0) & FRONT_FLAG_LOOP_SUSPECT) !== 0);
    expect(loops).toHaveLength(N);
    expect(sum('selfLoop')).toBe(N);
    // Each chain: the client's connection, at most one suspect, its refused loop.
    expect(suspects).toHaveLength(sum('loopSuspects'));
    expect(sum('loopSuspects')).toBeLessThanOrEqual(N);
    expect(sum('accepted')).toBe(2 * N + sum('loopSuspects'));
    // A suspect is a real relayed pair to the loop address, ended when its loop was refused.
    for (const x of suspects) expect(x).toMatchObject({ originalDst: `${LOOP}:7010` });
    // Each loop's peer is an upstream socket of a relay, toward the loop address.
    for (const x of loops)
      expect(x).toMatchObject({ originalDst: `${LOOP}:7010`, source: expect.stringMatching(/^10\.61\.0\.1:\d+$/) });
    // The set found the suspects' loops (sock_diag only where a connect was under way, and the set then once that
    // connect listed its socket).
    expect(sum('selfLoopByOwnSet')).toBeGreaterThan(0);
    expect(sum('ownerLookupFailures')).toBe(0);
    console.log(
      `self-loops: ${N}, by the set ${sum('selfLoopByOwnSet')}; suspects ${sum('loopSuspects')}; sock_diag lookups ${sum('ownerLookups')} for ${sum('accepted')} accepts`,
    );
    for (const relay of ['la', 'lb']) await relayAgent.call('closeRelay', { relay });
  });

  /**
   * conntrack gives a redirected connection a new source port when its tuple after REDIRECT is taken (an earlier
   * connection from the same address and port, to another destination, still tracked): the port is random and can
   * be that of one of the proxy's own upstreams to the same destination. Here an SNAT rule makes that coincidence
   * certain: the client's connection from port 40111 arrives at `acceptor`'s relay with the endpoint of `owner`'s
   * upstream for a held connection (from port 40112). Peer and original destination name the proxy's own socket,
   * but the client is an app: it must be relayed, as a suspect.
   */
  async function remappedClient(acceptor: Agent, owner: Agent, selfLoopOwnSet: boolean): Promise<void> {
    const options = { ...baseOptions, selfLoopUid: 0, selfLoopOwnSet };
    await acceptor.call('createRelay', { name: 'acc', withAccepted: false });
    await owner.call('createRelay', { name: 'own', withAccepted: false });
    for (const [agent, relay, id, port] of [
      [acceptor, 'acc', 11, 15011],
      [owner, 'own', 12, 15012],
    ] as const) {
      await agent.call('openListener', { name: `l${id}`, host: '127.0.0.1', port });
      await agent.call('listen', { relay, listenerId: id, listener: `l${id}`, options });
      await agent.call('closeListener', { name: `l${id}` });
    }
    const toAcceptor = ['-p', 'tcp', '-d', SERVER, '--dport', '7011', '-m', 'owner', '--uid-owner', String(CLIENT_UID)];
    toAcceptor.push('-j', 'REDIRECT', '--to-ports', '15011');
    const toOwner = ['-p', 'tcp', '-d', SERVER, '--dport', '7011', '--sport', '40112', '-j', 'REDIRECT'];
    toOwner.push('--to-ports', '15012');
    nsIptables(['-t', 'nat', '-I', 'OUTPUT', '1', ...toAcceptor]);
    nsIptables(['-t', 'nat', '-I', 'OUTPUT', '1', ...toOwner]);
    let snat: string[] = [];
    try {
      await client.call('open', { host: SERVER, port: 7011, tag: 'nat-held', localPort: 40112 });
      let live: { upstreamLocal: string }[] = [];
      const upstream = await waitUntil(
        "the held connection's upstream in list()",
        async () => {
          live = await owner.call<{ upstreamLocal: string }[]>('list', { relay: 'own' });
          return live.find((c) => /:\d+$/.test(c.upstreamLocal))?.upstreamLocal;
        },
        10_000,
        { seen: () => live },
      );
      snat = ['-p', 'tcp', '-s', SERVER, '--sport', '40111', '-d', '127.0.0.1', '--dport', '15011'];
      snat.push('-j', 'SNAT', '--to-source', upstream);
      nsIptables(['-t', 'nat', '-A', 'POSTROUTING', ...snat]);

      const r = await client.call<Exchange>('exchange', {
        host: SERVER,
        port: 7011,
        send: 'remapped',
        localPort: 40111,
      });
      expect(r.error).toBeUndefined();
      expect(r.received).toBe('remapped');
      let seen: EndRecord[] = [];
      const rec = await waitUntil(
        `the record of the client seen as ${upstream}`,
        async () => {
          seen = await acceptor.call<EndRecord[]>('records', { relay: 'acc' });
          return seen.find((x) => x.source === upstream);
        },
        10_000,
        { seen: () => seen.slice(-3) },
      );
      expect(rec).toMatchObject({ end: 'fin', flags: FRONT_FLAG_LOOP_SUSPECT, originalDst: `${SERVER}:7011` });
      const stats = await acceptor.call<Record<string, number>>('stats', { relay: 'acc' });
      expect(stats).toMatchObject({ selfLoop: 0, loopSuspects: 1, selfLoopByOwnSet: 0 });
      expect(await client.call('heldSend', { tag: 'nat-held', send: 'still here' })).toEqual({
        received: 'still here',
      });
      await client.call('heldEnd', { tag: 'nat-held' });
    } finally {
      if (snat.length > 0) nsIptables(['-t', 'nat', '-D', 'POSTROUTING', ...snat]);
      nsIptables(['-t', 'nat', '-D', 'OUTPUT', ...toOwner]);
      nsIptables(['-t', 'nat', '-D', 'OUTPUT', ...toAcceptor]);
      await acceptor.call('closeRelay', { relay: 'acc' });
      await owner.call('closeRelay', { relay: 'own' });
    }
  }

  it("relays a client whose NATed source is an own upstream's endpoint (a source-port remap): same process", async () => {
    await remappedClient(relayAgent, relayAgent, true);
  });

  it("relays a client whose NATed source is an own upstream's endpoint (a source-port remap): another process's", async () => {
    // The acceptor's set does not hold the other process's socket: sock_diag names the proxy's uid, unmarked.
    await remappedClient(relayAgent2, relayAgent, false);
  });

  it('refuses a loop between two processes at its second hop: the suspect upstream carries the marker sock_diag shows', async () => {
    // Process B (gid 4244) takes the clients' connections to LOOP:7013; its upstreams there go to process A, whose
    // upstreams there go back to B. A sees B's socket: own uid, not in its set, unmarked: a suspect, relayed with a
    // marked upstream. B then sees A's marked socket: a loop, refused. Neither set ever holds the other's sockets.
    const N = 40;
    const options = { ...baseOptions, selfLoopUid: 0, selfLoopOwnSet: false };
    for (const [agent, relay, id, port] of [
      [relayAgent, 'xa', 13, 15013],
      [relayAgent2, 'xb', 14, 15014],
    ] as const) {
      await agent.call('createRelay', { name: relay, withAccepted: false });
      await agent.call('openListener', { name: `l${id}`, host: '127.0.0.1', port });
      await agent.call('listen', { relay, listenerId: id, listener: `l${id}`, options });
      await agent.call('closeListener', { name: `l${id}` });
    }
    const loop = ['-p', 'tcp', '-d', LOOP, '--dport', '7013'];
    const rules = [
      [...loop, '-j', 'REDIRECT', '--to-ports', '15014'],
      [...loop, '-m', 'owner', '--gid-owner', String(RELAY2_GID), '-j', 'REDIRECT', '--to-ports', '15013'],
      [...loop, '-m', 'owner', '--uid-owner', String(CLIENT_UID), '-j', 'REDIRECT', '--to-ports', '15014'],
    ];
    for (const rule of rules) nsIptables(['-t', 'nat', '-I', 'OUTPUT', '1', ...rule]);
    try {
      const r = await client.call<{ done: number; errorCount: number }>('churn', {
        host: LOOP,
        port: 7013,
        count: N,
        parallel: 8,
      });
      expect(r).toMatchObject({ done: 0, errorCount: N });
      let stats: Record<string, number>[] = [];
      let suspects: EndRecord[] = [];
      await waitUntil(
        `${N} loops refused by B, nothing left open, and A's ${N} suspects' end records`,
        async () => {
          stats = [
            await relayAgent.call<Record<string, number>>('stats', { relay: 'xa' }),
            await relayAgent2.call<Record<string, number>>('stats', { relay: 'xb' }),
          ];
          suspects = (await relayAgent.call<EndRecord[]>('records', { relay: 'xa' })).filter(
            (x) => x.flags === FRONT_FLAG_LOOP_SUSPECT,
          );
          return stats[1]!.selfLoop === N && stats[0]!.open === 0 && stats[1]!.open === 0 && suspects.length >= N;
        },
        15_000,
        { seen: () => ({ stats, suspects: suspects.length }) },
      );
      expect(stats[0]).toMatchObject({ accepted: N, loopSuspects: N, selfLoop: 0 });
      expect(stats[1]).toMatchObject({ accepted: 2 * N, loopSuspects: 0, selfLoop: N, selfLoopByOwnSet: 0 });
      expect(suspects).toHaveLength(N);
    } finally {
      for (const rule of rules) nsIptables(['-t', 'nat', '-D', 'OUTPUT', ...rule]);
      await relayAgent.call('closeRelay', { relay: 'xa' });
      await relayAgent2.call('closeRelay', { relay: 'xb' });
    }
  });

  it('shares one listening socket between two relays: both accept, none of 200 connections is lost', async () => {
    await relayAgent.call('createRelay', { name: 'a', withAccepted: false });
    await relayAgent.call('createRelay', { name: 'b', withAccepted: false });
    await relayAgent.call('openListener', { name: 'l2', host: '127.0.0.1', port: 15002 });
    for (const relay of ['a', 'b']) {
      await relayAgent.call('listen', { relay, listenerId: 2, listener: 'l2', options: baseOptions });
    }
    await relayAgent.call('closeListener', { name: 'l2' });
    const r = await client.call<{ done: number; errors: string[] }>('churn', {
      host: SERVER,
      port: 7003,
      count: 200,
      parallel: 32,
    });
    expect(r.errors).toEqual([]);
    expect(r.done).toBe(200);
    let a: EndRecord[] = [];
    let b: EndRecord[] = [];
    await waitUntil(
      'end records of all 200 connections from relays a and b',
      async () => {
        [a, b] = [await records('a'), await records('b')];
        return a.length + b.length === 200;
      },
      10_000,
      { seen: () => ({ a: a.length, b: b.length }) },
    );
    expect([...a, ...b].filter((x) => x.end !== 'fin')).toEqual([]);
    expect(a.length).toBeGreaterThan(0);
    expect(b.length).toBeGreaterThan(0);
    for (const relay of ['a', 'b']) await relayAgent.call('closeRelay', { relay });
  });

  /** Two relays on one shared listener (the front door's threads), Node's own copy closed. */
  async function relaysSharing(names: readonly [string, string], listener: string, listenerId: number): Promise<void> {
    for (const relay of names) await relayAgent.call('createRelay', { name: relay, withAccepted: false });
    await relayAgent.call('openListener', { name: listener, host: '127.0.0.1', port: 15002 });
    for (const relay of names) await relayAgent.call('listen', { relay, listenerId, listener, options: baseOptions });
    await relayAgent.call('closeListener', { name: listener });
  }

  /** Each relay's live connections, and (for the failure message) its yields. */
  async function spread(names: readonly [string, string]): Promise<{ live: number[]; why: string }> {
    const live: number[] = [];
    const yields: number[] = [];
    for (const relay of names) {
      live.push((await relayAgent.call<unknown[]>('list', { relay })).length);
      yields.push((await relayAgent.call<Record<string, number>>('stats', { relay })).acceptYields!);
    }
    return { live, why: JSON.stringify({ live, yields }) };
  }

  /** Ends the held connections, waits for all their end records, and closes the relays. */
  async function endHeld(tags: readonly string[], names: readonly [string, string]): Promise<void> {
    for (const tag of tags) expect(await client.call('heldEnd', { tag })).toEqual({});
    let ended = 0;
    await waitUntil(
      `end records of the ${tags.length} held connections`,
      async () => {
        ended = (await records(names[0])).length + (await records(names[1])).length;
        return ended === tags.length;
      },
      10_000,
      { seen: () => ended },
    );
    for (const relay of names) await relayAgent.call('closeRelay', { relay });
  }

  it('spreads connections that arrive one at a time over both relays: the busier one leaves accepting to the other', async () => {
    // iperf3 -P 8 connects its streams one after another while both relays sleep: EPOLLEXCLUSIVE wakes the waiter
    // first in the listener's queue, so without the balance one relay took all eight (bench bulk-8: one core).
    const names = ['sa', 'sb'] as const;
    await relaysSharing(names, 'l12', 12);
    const tags = Array.from({ length: 8 }, (_, i) => `spread${i}`);
    // One at a time: each connected and echoed through its relay before the next is made.
    for (const tag of tags) {
      await client.call('open', { host: SERVER, port: 7003, tag });
      expect(await client.call('heldSend', { tag, send: 'hello\n' })).toEqual({ received: 'hello\n' });
    }
    const { live, why } = await spread(names);
    expect(live[0]! + live[1]!, why).toBe(8);
    expect(Math.min(...live), why).toBeGreaterThanOrEqual(3);
    await endHeld(tags, names);
  });

  it('spreads a burst of 32 connections over both relays although they share one CPU', async () => {
    // RR c=32 opens its 32 connections at once. On a busy machine the relay thread that runs first found them all
    // in the backlog and took them in one burst (one core for all 32: RR c=32 ran at 42.7k-57.3k op/s between runs).
    // Pinned to one CPU, the two relays take turns like that; each accept now asks first whether its thread
    // carries more than its share.
    const names = ['ba', 'bb'] as const;
    await relaysSharing(names, 'l14', 14);
    await relayAgent.call('pin', { cpu: 0 });
    const tags = Array.from({ length: 32 }, (_, i) => `burst${i}`);
    try {
      await client.call('openMany', { host: SERVER, port: 7003, tags });
      for (const tag of tags)
        expect(await client.call('heldSend', { tag, send: 'hello\n' })).toEqual({ received: 'hello\n' });
      const { live, why } = await spread(names);
      expect(live[0]! + live[1]!, why).toBe(32);
      // Within the slack: one pair plus 1/16 of the busier thread's, and a burst in flight while counts move.
      expect(Math.min(...live), why).toBeGreaterThanOrEqual(13);
    } finally {
      await relayAgent.call('pin', { cpu: '0-1023' }).catch(() => undefined);
    }
    await endHeld(tags, names);
  });

  it('never times out a connect the kernel answered within the bound, however late the thread sweeps', async () => {
    // A relay thread that loses the CPU between its connect() and the timer sweep of the same loop pass (a loaded
    // host) sweeps before it harvests the connect's completion. The bound is on the kernel's answer, not on the
    // thread's turn: the sweep asks the socket before it resets the client. A 0 ms bound and a 1 ms sweep make
    // every pass whose clock ticked over a late sweep; the destination is local, answered within connect() itself.
    await relayAgent.call('createRelay', { name: 'late', sweepMs: 1 });
    await listenOn('late', 10, '127.0.0.1', 15010, { ...baseOptions, connectTimeoutMs: 0 });
    const r = await client.call<{ done: number; errors: string[]; errorCount: number }>('churn', {
      host: SERVER,
      port: 7008,
      count: 300,
      parallel: 8,
    });
    const all = await waitUntil('300 end records of the late-sweep relay', async () => {
      const seen = await records('late');
      return seen.length >= 300 ? seen : null;
    });
    // Before the fix 16-23 of the 300 were reset on a quiet machine. A 0 ms bound still (rightly) times out a
    // connect whose handshake the kernel had not finished at the sweep: on a loaded host its softirq work can be
    // deferred to ksoftirqd. So a few are allowed, far fewer than the flaw reset.
    const timedOut = all.filter((x) => x.end !== 'fin');
    expect(timedOut.length, JSON.stringify(timedOut.slice(0, 5))).toBeLessThanOrEqual(3);
    expect(
      timedOut.every((x) => x.end === 'connectTimeout'),
      JSON.stringify(timedOut.slice(0, 5)),
    ).toBe(true);
    expect(r).toMatchObject({ done: 300 - timedOut.length, errorCount: timedOut.length });
    const stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'late' });
    expect(stats.connectTimeout).toBe(timedOut.length);
    console.log(`front door: ${stats.connectAnsweredLate} of 300 connects were past their 0 ms bound at the sweep`);
    await relayAgent.call('unlisten', { relay: 'late', listenerId: 10 });
  });

  it('leaves no fd behind after 1,000 connect + 64 B + close cycles', async () => {
    const before = await relayAgent.call<number>('fdCount');
    const recordsBefore = (await records('main')).length;
    const r = await client.call<{ done: number; errors: string[] }>('churn', {
      host: SERVER,
      port: 7001,
      count: 1000,
      parallel: 16,
    });
    if (r.errors.length > 0) {
      // Name the cause of a failed exchange: the relay's own end records that were not a clean FIN, its counters,
      // and the kernel's TCP drop counters in the namespace.
      const all = await waitUntil('the end records', async () => {
        const seen = await records('main');
        return seen.length - recordsBefore >= 1000 ? seen : null;
      }).catch(() => records('main'));
      const odd = all.slice(recordsBefore).filter((x) => x.end !== 'fin');
      const stats = await relayAgent.call('stats', { relay: 'main' });
      const nstat = execFileSync('ip', ['netns', 'exec', NS, 'nstat', '-asz'], { encoding: 'utf8' })
        .split('\n')
        .filter((l) =>
          /ListenOverflows|ListenDrops|TCPAbortOn|TCPSynRetrans|TCPTimeWait|TCPReqQFull|Syncookies/.test(l),
        )
        .join('\n');
      expect.fail(
        `churn errors ${JSON.stringify(r)}\nend records other than fin: ${JSON.stringify(odd.slice(0, 10))}\n` +
          `relay stats: ${JSON.stringify(stats)}\n${nstat}`,
      );
    }
    expect(r.done).toBe(1000);
    await fdsBackTo(before);
    const after = await waitUntil('1,000 more end records', async () => {
      const all = await records('main');
      return all.length - recordsBefore >= 1000 ? all.slice(recordsBefore) : null;
    });
    expect(after.filter((x) => x.end !== 'fin')).toEqual([]);
    const stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'main' });
    expect(stats).toMatchObject({ open: 0, connecting: 0, acceptBackoffs: 0, acceptErrors: 0 });
  }, 60_000);
  it('relays IPv6 (IP6T_SO_ORIGINAL_DST) with bracketed strings in the record', async () => {
    await listenOn('main', 6, '::1', 15006, { ...baseOptions, family: 6 });
    const r = await client.call<Exchange>('exchange', { host: SERVER6, port: 7001, send: 'six' });
    expect(r.error).toBeUndefined();
    expect(r.received).toBe('six');
    const rec = await recordFor('main', (x) => x.listenerId === 6, 'the IPv6 client');
    expect(rec).toMatchObject({
      end: 'fin',
      fromClient: 3,
      fromUpstream: 3,
      source: `[${SERVER6}]:${r.local!.split(':').pop()}`,
      originalDst: `[${SERVER6}]:7001`,
    });
    expect(await client.call<string[]>('peers', { name: 'echo6' })).toContain(
      rec.upstreamLocal!.replace(/^\[(.*)\]:(\d+)$/, '$1:$2'),
    );
  });

  it("replaces a listener's options atomically with listen() on the same id (and keeps its socket)", async () => {
    const own = { ...baseOptions, selfLoopUid: LOOP_UID };
    const original = { ...own, ask: [{ address: SERVER, prefix: 32, port: 7002 }] };
    const via = async (options: typeof baseOptions, send: string): Promise<string> => {
      // fd 0 is not a listening socket: for an id that listens already it is not looked at.
      await relayAgent.call('listen', { relay: 'main', listenerId: 1, fd: 0, options });
      const r = await client.call<Exchange>('exchange', { host: SERVER, port: 7001, send });
      expect(r.error).toBeUndefined();
      if (r.received === `asked ${SERVER}:7001 family 4 listener 1\n${send}`) return 'js';
      return r.received === send ? 'native' : r.received;
    };
    expect(await via({ ...own, passthrough: false }, 'a')).toBe('js');
    // A network on any port; then entries that miss by network and by port; then the exact one.
    expect(await via({ ...own, ask: [{ address: '10.61.0.0', prefix: 24, port: 0 }] }, 'b')).toBe('js');
    const misses = [
      { address: '10.61.0.128', prefix: 25, port: 0 },
      { address: SERVER, prefix: 32, port: 7999 },
      { address: 'fd00:61::', prefix: 64, port: 7001 },
    ];
    expect(await via({ ...own, ask: misses }, 'c')).toBe('native');
    expect(await via({ ...own, ask: [...misses, { address: '10.61.0.0', prefix: 31, port: 7001 }] }, 'd')).toBe('js');
    expect(await via(original, 'e')).toBe('native');
    const accepted = await relayAgent.call<{ port: number }[]>('accepted', { relay: 'main' });
    expect(accepted.filter((a) => a.port === 7001)).toHaveLength(3);
  });

  it('binds an inbound upstream to sourceAddress, and connects without it (flagged, counted) on EADDRNOTAVAIL', async () => {
    const inbound = { ...baseOptions, direction: 'inbound', sourceAddress: '127.0.0.6' };
    await listenOn('main', 7, '127.0.0.1', 15007, inbound);
    const bound = await client.call<Exchange>('exchange', { host: SERVER, port: 7006, send: 'in' });
    expect(bound.received).toBe('in');
    const first = await recordFor('main', (x) => x.listenerId === 7, 'the inbound client');
    expect(first).toMatchObject({ end: 'fin', flags: 0 });
    expect(first.upstreamLocal).toMatch(/^127\.0\.0\.6:\d+$/);
    expect(await client.call<string[]>('peers', { name: 'echo7006' })).toContain(first.upstreamLocal);

    const fallback = { ...inbound, sourceAddress: '10.9.9.9' }; // not an address of this namespace
    await relayAgent.call('listen', { relay: 'main', listenerId: 7, fd: 0, options: fallback });
    const unbound = await client.call<Exchange>('exchange', { host: SERVER, port: 7006, send: 'in2' });
    expect(unbound.received).toBe('in2');
    const second = await recordFor('main', (x) => x.listenerId === 7 && x.id !== first.id, 'the second inbound client');
    expect(second).toMatchObject({ end: 'fin', flags: 1 });
    expect(second.upstreamLocal).toMatch(/^10\.61\.0\.1:\d+$/);
    expect(await relayAgent.call('stats', { relay: 'main' })).toMatchObject({ sourceFallbacks: 1 });
    await relayAgent.call('unlisten', { relay: 'main', listenerId: 7 });
  });

  it('backs off on EMFILE (listener deregistered for a sweep, counted) and accepts the waiting client after', async () => {
    await relayAgent.call('createRelay', { name: 'c', withAccepted: false });
    const before = await relayAgent.call<number>('fdCount');
    await listenOn('c', 4, '127.0.0.1', 15004, baseOptions);
    const { pid } = await relayAgent.call<{ pid: number }>('ping');
    const limit = execFileSync(
      'prlimit',
      ['--pid', String(pid), '--nofile', '--raw', '--noheadings', '--output=SOFT,HARD'],
      {
        encoding: 'utf8',
      },
    )
      .trim()
      .split(/\s+/);
    // fds 0-4 are all taken (stdio, libuv): with a limit of 5 no new one can be made.
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=5:${limit[1]}`]);
    let stats: Record<string, number> = {};
    const waiting = client.call<Exchange>('exchange', { host: SERVER, port: 7005, send: 'late', timeoutMs: 20_000 });
    try {
      await waitUntil(
        "relay c's accept backoff",
        async () => {
          stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'c' });
          return stats.acceptBackoffs! >= 1;
        },
        10_000,
        { seen: () => stats },
      );
      expect(stats.lastAcceptErrno).toBe(24); // EMFILE
    } finally {
      execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit[0]}:${limit[1]}`]);
    }
    const r = await waiting;
    expect(r.error).toBeUndefined();
    expect(r.received).toBe('late');
    stats = await relayAgent.call<Record<string, number>>('stats', { relay: 'c' });
    expect(stats).toMatchObject({ accepted: 1, connected: 1, connectFailed: 0 });

    // Shutdown with a listener, an open pair and a connect in progress: every fd goes.
    const opened = await client.call<string>('open', { host: SERVER, port: 7005, tag: 'open' });
    expect(opened).toMatch(/^10\.61\.0\.1:/);
    await client.call<string>('open', { host: BLACKHOLE, port: 7005, tag: 'connecting' });
    let live: { state: string }[] = [];
    await waitUntil(
      "relay c's open and connecting pairs",
      async () => {
        live = await relayAgent.call<{ state: string }[]>('list', { relay: 'c' });
        return (
          live
            .map((c) => c.state)
            .sort()
            .join() === 'connecting,open'
        );
      },
      10_000,
      { seen: () => live },
    );
    await relayAgent.call('closeRelay', { relay: 'c' });
    await fdsBackTo(before, ' after closing relay c');
    for (const tag of ['open', 'connecting']) {
      // Closed by the thread's shutdown (a plain close: FIN), not left hanging.
      expect(await client.call('heldClosed', { tag })).toMatchObject({ ended: true });
    }
  }, 60_000);
});
