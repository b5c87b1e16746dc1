// The front door's compiler (src/proxy/front-door.ts): goldens of the table for typical configs, and the rule it
// keeps, as a property over random configs and destinations: whatever the table lets a relay thread connect on
// its own is what the JavaScript path (routeConnection, then PolicyRuntime, then the tunnel's peers) would have
// connected as dialled, with no lease, tunnel or refusal, from the same source address.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import type { Config } from '../../src/config/types.js';
import { silentLogger } from '../../src/log.js';
import { CidrSet } from '../../src/policy/cidr-table.js';
import { meshNames } from '../../src/policy/mesh-names.js';
import { PolicyRuntime } from '../../src/policy/runtime.js';
import { compileFrontDoor, MAX_ASKED_INBOUND_PORTS, type FrontDoorOptions } from '../../src/proxy/front-door.js';
import type { Direction } from '../../src/proxy/metrics.js';
import { LocalAddresses, routeConnection } from '../../src/proxy/routing.js';
import { cidrContains, parseIp, type Family } from '../../src/values/ip.js';
import { testHost } from '../cases.js';

const identity = {
  certificate: '/etc/meshctl/svid.pem',
  key: '/etc/meshctl/svid_key.pem',
  bundle: '/etc/meshctl/b.pem',
};
const load = (raw: Record<string, unknown>): Config =>
  configFromObject(
    { ...raw, proxy: { user: 'meshproxy', ...((raw.proxy as object | undefined) ?? {}) } },
    { file: 'front-door.yaml', host: testHost, env: {} },
  );

/** ProxyWorker.portsOf for the default listeners. */
function ownPorts(config: Config): Set<number> {
  const p = config.proxy;
  return new Set([
    p.outboundPort,
    p.inboundPort,
    p.adminPort,
    ...(config.mtls.inbound !== 'disable' ? [config.mtls.tunnelPort] : []),
  ]);
}

function compile(config: Config, direction: Direction, family: Family = 'ipv4') {
  return compileFrontDoor({
    config,
    policy: config,
    listener: { direction, family },
    ownPorts: ownPorts(config),
    ownUid: 1337,
  });
}

const scenarios: Record<string, Record<string, unknown>> = {
  defaults: {},
  services: {
    services: [
      {
        name: 'api',
        addresses: ['10.96.0.10:80', '10.96.0.0/16:8080', '[fd00::10]:80'],
        endpoints: ['10.0.1.1:8080', '10.0.1.2:8080'],
      },
      { name: 'db', addresses: ['db.mesh:5432'], endpoints: ['10.0.2.1:5432'] },
    ],
  },
  'registry-only': {
    services: [{ name: 'api', addresses: ['10.96.0.10:80'], endpoints: ['10.0.1.1:8080'] }],
    outbound: { policy: 'registry-only' },
  },
  'inbound-policy': {
    inbound: {
      ports: [
        { port: 8080, deny: ['192.0.2.0/24'] },
        { port: '9000-9003', rateLimit: { connections: 5 } },
      ],
    },
  },
  'inbound-catch-all': { inbound: { ports: [{ port: '*', maxConnections: 100 }] } },
  'mtls-strict': { mtls: { identity, inbound: 'strict', peers: ['10.98.0.0/16', 'fd98::/64'] } },
  'mtls-permissive': { mtls: { identity, inbound: 'permissive', peers: ['10.98.0.0/16'] } },
  tproxy: { capture: { inbound: { mode: 'tproxy' } } },
  'periodic-access-log': { proxy: { accessLog: { periodicInterval: '30s' } } },
  'bounded-timers': {
    proxy: { idleTimeout: '5m', maxConnectionDuration: '1h', keepalive: 'off', connectTimeout: '2s' },
  },
};

describe('compileFrontDoor goldens', () => {
  it.each(Object.keys(scenarios))('compiles %s', async (name) => {
    const config = load(scenarios[name]!);
    const plans = {
      outbound: compile(config, 'outbound'),
      inbound: compile(config, 'inbound'),
      outbound6: compile(config, 'outbound', 'ipv6'),
      inbound6: compile(config, 'inbound', 'ipv6'),
    };
    await expect(`${JSON.stringify(plans, null, 2)}\n`).toMatchFileSnapshot(`../golden/front-door/${name}.json`);
  });

  it('sends every inbound connection to JavaScript when the entries cover too many ports to ask one by one', () => {
    const plan = compile(load({ inbound: { ports: [{ port: '1000-3000', maxConnections: 5 }] } }), 'inbound');
    expect(plan.options.passthrough).toBe(false);
    expect(plan.options.ask).toEqual([]);
    expect(plan.everything).toEqual([
      `inbound.ports cover 2001 ports (more than ${MAX_ASKED_INBOUND_PORTS} to ask one by one)`,
    ]);
  });
});

// --- the property ---

const HOST_ADDRESSES = ['10.0.0.5', 'fd00::5'];
const PORTS = [80, 443, 5432, 8080, 9001, 15000, 15001, 15006, 15008, 53, 22];
const V4 = ['10.96.0.10', '10.96.3.7', '10.98.1.1', '10.99.0.1', '192.0.2.9', '10.0.0.5', '127.0.0.1', '240.240.1.1'];
const V6 = ['fd00::10', 'fd98::1', 'fd99::1', 'fd00::5', '::1', '2001:2::7'];

function pick<T>(r: () => number, items: readonly T[]): T {
  return items[Math.floor(r() * items.length)]!;
}

function some<T>(r: () => number, items: readonly T[], max: number): T[] {
  const n = Math.floor(r() * (max + 1));
  return [...new Set(Array.from({ length: n }, () => pick(r, items)))];
}

function randomRaw(r: () => number): Record<string, unknown> {
  const address = () =>
    pick(r, [
      () => `${pick(r, V4)}:${pick(r, PORTS)}`,
      () => `[${pick(r, V6)}]:${pick(r, PORTS)}`,
      () => `10.96.0.0/16:${pick(r, PORTS)}`,
      () => `[fd00::/64]:${pick(r, PORTS)}`,
      () => `${pick(r, ['db.mesh', 'api.mesh'])}:${pick(r, PORTS)}`,
    ])();
  const mtls =
    r() < 0.4
      ? {
          identity,
          inbound: pick(r, ['disable', 'permissive', 'strict']),
          peers: some(r, ['10.98.0.0/16', 'fd98::/64'], 2),
        }
      : undefined;
  // A destination (and a hostname) belongs to one service: each is drawn once.
  const used = new Set<string>();
  const fresh = () => {
    const a = address();
    const key = a.replace(/:\d+$/, '');
    if (used.has(a) || used.has(key.endsWith('.mesh') ? key : a)) return null;
    used.add(a).add(key.endsWith('.mesh') ? key : a);
    return a;
  };
  const services = Array.from({ length: Math.floor(r() * 4) }, (_, i) => ({
    name: `s${i}`,
    addresses: [fresh(), fresh(), fresh()].filter((a) => a !== null),
    endpoints: ['10.0.1.1:8080'],
    ...(mtls && r() < 0.3 ? { mtls: true } : {}),
    ...(r() < 0.2 ? { circuitBreaker: { maxConnections: 1 } } : {}),
    ...(r() < 0.2 ? { faults: { abort: { percent: 50 } } } : {}),
  })).filter((svc) => svc.addresses.length > 0);
  const portChoices = [8080, 5432, '9000-9003', 443];
  const inboundPorts: Record<string, unknown>[] = some(r, portChoices, 2).map((port) => ({
    port,
    ...pick(r, [{}, { deny: ['192.0.2.0/24'] }, { allow: ['10.0.0.0/8'] }, { maxConnections: 1 }]),
  }));
  if (r() < 0.15) inboundPorts.push({ port: '*' });
  return {
    services,
    outbound: { policy: r() < 0.2 ? 'registry-only' : 'passthrough' },
    inbound: { ports: inboundPorts },
    ...(mtls ? { mtls } : {}),
    ...(r() < 0.15 ? { capture: { inbound: { mode: 'tproxy' } } } : {}),
    ...(r() < 0.15 ? { proxy: { accessLog: { periodicInterval: '10s' } } } : {}),
  };
}

function asked(options: FrontDoorOptions, address: string, port: number): boolean {
  const ip = parseIp(address)!;
  return options.ask.some((a) => {
    if (a.port !== 0 && a.port !== port) return false;
    const net = parseIp(a.address);
    return net !== null && cidrContains({ family: net.family, address: a.address, prefix: a.prefix }, ip);
  });
}

/**
 * What the JavaScript path does with a redirected connection to `address:port` (as ProxyWorker.onConnection and
 * dispatch): a plain connect as dialled from `source`, or 'js' (refused, leased, tunneled, or needing JS).
 */
function javascriptPath(
  config: Config,
  policy: PolicyRuntime,
  direction: Direction,
  family: Family,
  address: string,
  port: number,
): { kind: 'plain'; source: string | null } | { kind: 'js'; why: string } {
  if (direction === 'inbound' && config.capture.inbound.mode === 'tproxy') return { kind: 'js', why: 'tproxy' };
  const listenerPort = direction === 'outbound' ? config.proxy.outboundPort : config.proxy.inboundPort;
  const route = routeConnection(
    direction,
    { address, port, family },
    { localAddress: family === 'ipv6' ? '::1' : '127.0.0.1', localPort: listenerPort },
    ownPorts(config),
    new LocalAddresses(HOST_ADDRESSES),
    config.proxy,
    null,
  );
  if (route.kind === 'refuse') return { kind: 'js', why: `refused ${route.reason}` };
  if (direction === 'inbound' && config.mtls.inbound === 'strict') return { kind: 'js', why: 'strict' };
  if (policy.active) {
    const decision =
      direction === 'outbound'
        ? policy.outbound(address, port, { remoteAddress: '192.0.2.1' })
        : policy.admitInbound(port, '192.0.2.1', null);
    if (decision !== null) return { kind: 'js', why: typeof decision === 'string' ? decision : 'lease' };
  }
  if (direction === 'outbound' && new CidrSet(config.mtls.peers).has(address)) return { kind: 'js', why: 'tunnel' };
  if (config.proxy.accessLog.enabled && config.proxy.accessLog.periodicIntervalMs !== null)
    return { kind: 'js', why: 'progress lines' };
  if (route.host !== address || route.port !== port) return { kind: 'js', why: `routed to ${route.host}` };
  return { kind: 'plain', source: route.localAddress };
}

// A uniform draw in [0, 1): fc.double spreads over the doubles' bit patterns (most of them tiny), so an integer.
const STEPS = 2 ** 30;
const uniform = () => fc.noBias(fc.integer({ min: 0, max: STEPS - 1 }));

describe('compileFrontDoor property', () => {
  it('lets a thread connect natively only what JavaScript would connect as dialled, from the same source', () => {
    let passed = 0;
    let checkedNative = 0;
    let checkedJs = 0;
    // fast-check draws every choice (fc.gen), so a failure is replayable from the seed it prints and shrunk. The
    // draws are uniform (noBias): the generator's thresholds are probabilities, and biased draws near 0 and 1
    // would rarely make services, peers or inbound ports.
    const property = fc.property(fc.gen(), (g) => {
      const r = () => g(uniform) / STEPS;
      const config = load(randomRaw(r));
      // A hostname address without a DNS answer matches through its mesh name's VIP: draw those too.
      const names = [...meshNames(config.services).values()].filter((n) => n.vip);
      const vips = { ipv4: names.flatMap((n) => n.ipv4), ipv6: names.flatMap((n) => n.ipv6) };
      for (const direction of ['outbound', 'inbound'] as const) {
        for (const family of ['ipv4', 'ipv6'] as const) {
          const plan = compile(config, direction, family);
          // A fresh runtime per listener: admission counts and token buckets start full, as for a first connection.
          const policy = new PolicyRuntime(config, null, silentLogger);
          for (let k = 0; k < 40; k++) {
            const address = pick(r, family === 'ipv4' ? [...V4, ...vips.ipv4] : [...V6, ...vips.ipv6]);
            const port = pick(r, PORTS);
            const js = javascriptPath(config, policy, direction, family, address, port);
            const native = plan.options.passthrough && !asked(plan.options, address, port);
            if (native) {
              checkedNative++;
              expect(
                js,
                `${direction} ${address}:${port} passes the front door natively, but JavaScript would not connect it as dialled (${JSON.stringify(plan.options)})`,
              ).toEqual({ kind: 'plain', source: plan.options.sourceAddress });
              passed++;
            } else if (js.kind === 'js') {
              checkedJs++;
            }
          }
          policy.stop();
        }
      }
    });
    fc.assert(property, { numRuns: 300 });
    // The generator must reach both sides of the rule, or the property says nothing.
    expect(passed).toBeGreaterThan(2000);
    expect(checkedNative).toBe(passed);
    expect(checkedJs).toBeGreaterThan(2000);
  });
});
