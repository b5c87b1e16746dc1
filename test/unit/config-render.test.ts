// `meshctl config validate` prints the effective config in the form the file accepts: loading that output again
// gives the same config and the same hash (the ledger's), for every example and for a config that sets every field.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { register } from '../../src/cli/config.js';
import { systemHostFacts } from '../../src/config/host-facts.js';
import { configFromObject } from '../../src/config/load.js';
import { renderConfig } from '../../src/config/render.js';
import type { Config } from '../../src/config/types.js';
import { cases, testHost } from '../cases.js';

const load = (raw: unknown, host = testHost) => configFromObject(raw, { file: 'config.yaml', host, env: {} });
const withoutOrigin = ({ file: _file, flags: _flags, ...rest }: Config) => rest;

/** SSH ports given in the file: detected ones come back as configured (tested on their own below). */
const sshGiven = (raw: unknown): Record<string, unknown> => {
  const object = raw as Record<string, unknown>;
  return { ...object, safety: { sshPorts: [22], ...(object.safety as object | undefined) } };
};

const svc = (extra: Record<string, unknown> = {}) => ({
  name: 'api',
  addresses: ['10.96.0.10:80'],
  endpoints: ['10.0.1.1:8080'],
  ...extra,
});

/** Sets every field to something other than its default, in the forms people write. */
const everyField = {
  proxy: {
    user: 'meshproxy',
    group: 'apps',
    outboundPort: 16001,
    inboundPort: 16006,
    adminPort: 16000,
    workers: 3,
    connectTimeout: '1.5s',
    idleTimeout: '5m',
    maxConnectionDuration: '2h',
    halfCloseTimeout: '500ms',
    drainTimeout: '90s',
    keepalive: 'off',
    relay: 'node',
    accessLog: { enabled: false, path: '/var/log/meshctl/access.log', sampleRatio: 0.25, periodicInterval: '30s' },
  },
  capture: {
    backend: 'nftables',
    ipv6: 'block',
    dropInvalid: true,
    excludeInterfaces: ['eth9', 'docker0'],
    inbound: {
      enabled: false,
      mode: 'tproxy',
      includePorts: [80, '8000-8100'],
      excludePorts: [9090],
      tproxyMark: 7,
      tproxyRouteTable: 77,
    },
    outbound: {
      includeCidrs: ['10.1.2.3/8', 'FD00::/8'],
      excludeCidrs: ['10.9.9.9/32'],
      includePorts: ['1-1000'],
      excludePorts: [2022, '4430-4440'],
      excludeUids: ['app', 34],
      includeGids: ['apps', 2100],
    },
    dns: { enabled: true, port: 15054, servers: ['10.0.0.2/32'] },
  },
  safety: { sshPorts: [22, 2222], unsafeCaptureSsh: true, onProxyDown: 'open' },
  stateDir: '/srv/meshctl',
  services: [
    svc({
      addresses: [
        '[FD00:96:0::10]:443',
        '10.96.0.0/16:80',
        '[fd00:97::/64]:80',
        '10.1.2.3/32:9',
        'API.Mesh.Internal.:80',
      ],
      endpoints: [
        { address: '[fd00::5]:8080', subset: 'v1' },
        { address: 'api-v1.internal:8080', subset: 'v2' },
        { dns: '10.0.0.9:1', subset: 'v1' },
        { srv: '_api._tcp.Mesh.internal.', subset: 'v2' },
      ],
      loadBalancer: 'source-hash',
      subsets: { v1: 90, v2: 10 },
      connectTimeout: '250ms',
      retries: { attempts: 1, backoff: '10ms', maxBackoff: '1s' },
      outlierDetection: { enabled: false, consecutiveFailures: 2, baseEjectionTime: '1m', maxEjectionPercent: 10 },
      circuitBreaker: { maxConnections: 10, maxPending: 2 },
      healthCheck: { interval: '5s' },
      faults: { delay: { percent: 12.5, duration: '100ms' }, abort: { percent: 1 } },
    }),
    svc({ name: 'b', addresses: ['b.mesh:80'], endpoints: ['10.0.0.1:1'], circuitBreaker: { maxPending: 3 } }),
  ],
  outbound: {
    policy: 'registry-only',
    resolver: {
      servers: ['10.0.0.2', '[fd00::53]:5353', 'fd00::54', '10.0.0.3:5300'],
      timeout: '1s',
      minTtl: '2s',
      maxTtl: '1h',
    },
  },
  inbound: {
    ports: [
      {
        port: 8080,
        allow: ['10.0.0.0/8'],
        deny: ['10.9.0.0/16'],
        maxConnections: 500,
        rateLimit: { connections: 100, per: '1s', burst: 20 },
        sourceRateLimit: { connections: 10 },
      },
      { port: '9000-9100' },
      { port: '*', allow: '*' },
    ],
  },
  controlPlane: { url: 'https://cp.example/policy.yaml', pollInterval: '20s', caFile: '/etc/meshctl/ca.pem' },
};

describe('renderConfig', () => {
  it.each([
    ...cases.map((c) => ({ name: c.name, raw: sshGiven(c.raw) })),
    { name: 'every field set', raw: everyField },
    {
      name: 'a uid without passwd entry and a control plane over http',
      raw: sshGiven({ proxy: { user: 4242, group: 4242 }, controlPlane: { url: 'http://cp/x' } }),
    },
  ])('gives back $name with the same hash', ({ raw }) => {
    const first = load(raw);
    for (const names of [testHost.userDb, null]) {
      const again = load(JSON.parse(JSON.stringify(renderConfig(first, names))));
      expect(withoutOrigin(again)).toEqual(withoutOrigin(first));
      expect(again.hash).toBe(first.hash);
    }
  });

  it('writes the file forms, not the resolved ones', () => {
    const file = renderConfig(load({ proxy: { user: 'meshproxy' }, safety: { sshPorts: [22] } }), testHost.userDb);
    expect(file.proxy).toMatchObject({
      user: 'meshproxy',
      group: 'meshproxy',
      connectTimeout: '10s',
      idleTimeout: 'off',
      keepalive: '30s',
      accessLog: { path: null },
    });
    expect(file.capture).toMatchObject({
      inbound: { includePorts: '*' },
      outbound: { includeCidrs: '*', includeGids: '*', excludeUids: [] },
    });
    expect(JSON.stringify(file)).not.toMatch(/Ms"|"all"|"from"|"uid"/);
    const rendered = renderConfig(load(everyField), testHost.userDb) as typeof everyField;
    expect(rendered.capture.outbound).toMatchObject({
      includeCidrs: ['10.0.0.0/8', 'fd00::/8'],
      excludeUids: ['app', 'backup'],
      includeGids: ['apps', 'batch'],
      includePorts: ['1-1000'],
    });
    expect(rendered.proxy).toMatchObject({
      connectTimeout: '1500ms',
      idleTimeout: '5m',
      maxConnectionDuration: '2h',
      drainTimeout: '90s',
    });
    expect((renderConfig(load(everyField), null) as typeof everyField).capture.outbound.excludeUids).toEqual([
      1000, 34,
    ]);
  });

  it('pins detected SSH ports as configured ones: the same rules, only the source differs', () => {
    const host = { ...testHost, detectSshPorts: () => ({ ports: [2222], source: 'sshd-listening' as const }) };
    const detected = load({ proxy: { user: 'meshproxy' } }, host);
    const again = load(renderConfig(detected, testHost.userDb), host);
    expect(again.safety.sshPortsSource).toBe('config');
    expect({
      ...withoutOrigin(again),
      hash: '',
      safety: { ...again.safety, sshPortsSource: 'sshd-listening' },
    }).toEqual({ ...withoutOrigin(detected), hash: '' });
  });
});

describe('meshctl config validate', () => {
  afterEach(() => vi.restoreAllMocks());

  it('prints a config that loads back to the hash it printed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'meshctl-validate-'));
    const file = join(dir, 'config.yaml');
    writeFileSync(
      file,
      'capture:\n  ipv6: block\n  outbound:\n    excludeCidrs: [169.254.169.254/32]\n    excludePorts: [5432, 8000-8100]\n',
    );
    let out = '';
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((out += String(chunk)), true));
    const program = new Command().exitOverride();
    register(program);
    // nobody exists on every Linux host; the SSH ports are given so that nothing is detected.
    await program.parseAsync(
      ['config', 'validate', '--config', file, '--proxy-user', 'nobody', '--ssh-ports', '22', '--dns'],
      { from: 'user' },
    );
    const [header, ...json] = out.split('\n');
    const printed = JSON.parse(json.join('\n')) as Record<string, unknown>;
    expect(printed).not.toHaveProperty('proxy.connectTimeoutMs');
    expect(printed).toMatchObject({
      proxy: { connectTimeout: '10s' },
      capture: { inbound: { includePorts: '*' }, dns: { enabled: true } },
    });
    const again = configFromObject(printed, { host: systemHostFacts, env: {} });
    expect(header).toBe(`config ok: ${file} (sha256 ${again.hash.slice(0, 12)})`);
  });
});
