// The policy sections of the config: defaults, resolved types, and every class of bad input with its path.
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { MeshctlError } from '../../src/errors.js';
import { parseHostPort, parseResolverServer, parseServiceAddress } from '../../src/values/addresses.js';
import { testHost } from '../cases.js';

const load = (raw: Record<string, unknown>, overlay?: { raw: Record<string, unknown>; origin: string }) =>
  configFromObject(
    { proxy: { user: 'meshproxy' }, ...raw },
    { file: 'mesh.yaml', host: testHost, env: {}, ...(overlay ? { overlay } : {}) },
  );

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (error) {
    if (error instanceof MeshctlError) return error.details.length > 0 ? [...error.details] : [error.message];
    throw error;
  }
  throw new Error('expected a MeshctlError');
}

const svc = (extra: Record<string, unknown> = {}) => ({
  name: 'api',
  addresses: ['10.96.0.10:80'],
  endpoints: ['10.0.1.1:8080'],
  ...extra,
});

describe('policy config', () => {
  it('defaults to no services, passthrough, no inbound entries and no control plane', () => {
    const c = load({});
    expect(c.services).toEqual([]);
    expect(c.outbound).toEqual({
      policy: 'passthrough',
      resolver: { servers: [], timeoutMs: 2000, minTtlMs: 1000, maxTtlMs: 300_000 },
    });
    expect(c.inbound).toEqual({ ports: [] });
    expect(c.controlPlane).toBeNull();
  });

  it('resolves a service with every default filled in', () => {
    const [s] = load({ proxy: { user: 'meshproxy', connectTimeout: '3s' }, services: [svc()] }).services;
    expect(s).toEqual({
      name: 'api',
      addresses: [{ kind: 'ip', address: '10.96.0.10', family: 'ipv4', port: 80 }],
      endpoints: [{ kind: 'static', address: '10.0.1.1', family: 'ipv4', port: 8080, subset: null }],
      loadBalancer: 'round-robin',
      subsets: [],
      connectTimeoutMs: 3000,
      retries: { attempts: 3, backoffMs: 25, maxBackoffMs: 250 },
      outlierDetection: { enabled: true, consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionPercent: 50 },
      circuitBreaker: { maxConnections: null, maxPending: null },
      healthCheck: null,
      faults: { delay: null, abort: null },
      mtls: false,
      identities: [],
    });
  });

  it('reads every address and endpoint form', () => {
    const [s] = load({
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
            '[fd00::5]:8080',
            'api-v1.internal:8080',
            { dns: '10.0.0.9:1' },
            { srv: '_api._tcp.Mesh.internal.' },
          ],
          loadBalancer: 'source-hash',
        }),
      ],
    }).services;
    expect(s!.addresses).toEqual([
      { kind: 'ip', address: 'fd00:96::10', family: 'ipv6', port: 443 },
      { kind: 'cidr', cidr: { family: 'ipv4', address: '10.96.0.0', prefix: 16 }, port: 80 },
      { kind: 'cidr', cidr: { family: 'ipv6', address: 'fd00:97::', prefix: 64 }, port: 80 },
      { kind: 'ip', address: '10.1.2.3', family: 'ipv4', port: 9 },
      { kind: 'hostname', hostname: 'api.mesh.internal', port: 80 },
    ]);
    expect(s!.endpoints).toEqual([
      { kind: 'static', address: 'fd00::5', family: 'ipv6', port: 8080, subset: null },
      { kind: 'dns', hostname: 'api-v1.internal', port: 8080, subset: null },
      { kind: 'static', address: '10.0.0.9', family: 'ipv4', port: 1, subset: null },
      { kind: 'srv', name: '_api._tcp.mesh.internal', subset: null },
    ]);
  });

  it('resolves subsets, resilience settings, inbound entries, the resolver and the control plane', () => {
    const c = load({
      services: [
        svc({
          endpoints: [
            { address: '10.0.1.1:8080', subset: 'v1' },
            { dns: 'canary.internal:8080', subset: 'v2' },
          ],
          subsets: { v1: 90, v2: 10 },
          connectTimeout: '250ms',
          retries: { attempts: 1 },
          outlierDetection: { enabled: false },
          circuitBreaker: { maxConnections: 10, maxPending: 2 },
          healthCheck: { interval: '5s' },
          faults: { delay: { percent: 12.5, duration: '100ms' }, abort: { percent: 1 } },
        }),
      ],
      outbound: { policy: 'registry-only', resolver: { servers: ['10.0.0.2', '[fd00::53]:5353'], minTtl: '2s' } },
      inbound: {
        ports: [
          {
            port: '8000-8100',
            rateLimit: { connections: 5, per: '10s' },
            allow: ['10.0.0.0/8'],
            deny: ['10.9.0.0/16'],
          },
          { port: '*', maxConnections: 100, sourceRateLimit: { connections: 2, burst: 4 } },
        ],
      },
      controlPlane: { url: 'https://cp.example/policy.yaml', caFile: '/etc/meshctl/ca.pem' },
    });
    const s = c.services[0]!;
    expect(s.subsets).toEqual([
      { name: 'v1', weight: 90 },
      { name: 'v2', weight: 10 },
    ]);
    expect(s.connectTimeoutMs).toBe(250);
    expect(s.retries.attempts).toBe(1);
    expect(s.outlierDetection.enabled).toBe(false);
    expect(s.circuitBreaker).toEqual({ maxConnections: 10, maxPending: 2 });
    expect(s.healthCheck).toEqual({ intervalMs: 5000, timeoutMs: 1000, unhealthyThreshold: 2, healthyThreshold: 1 });
    expect(s.faults).toEqual({ delay: { percent: 12.5, durationMs: 100 }, abort: { percent: 1 } });
    expect(c.outbound.resolver).toMatchObject({
      servers: [
        { address: '10.0.0.2', port: 53 },
        { address: 'fd00::53', port: 5353 },
      ],
      minTtlMs: 2000,
    });
    expect(c.inbound.ports).toEqual([
      {
        ports: { from: 8000, to: 8100 },
        maxConnections: null,
        rateLimit: { connections: 5, perMs: 10_000, burst: 5 },
        sourceRateLimit: null,
        allow: [{ family: 'ipv4', address: '10.0.0.0', prefix: 8 }],
        deny: [{ family: 'ipv4', address: '10.9.0.0', prefix: 16 }],
        allowPrincipals: [],
        denyPrincipals: [],
      },
      {
        ports: 'all',
        maxConnections: 100,
        rateLimit: null,
        sourceRateLimit: { connections: 2, perMs: 1000, burst: 4 },
        allow: 'all',
        deny: [],
        allowPrincipals: [],
        denyPrincipals: [],
      },
    ]);
    expect(c.controlPlane).toEqual({
      url: 'https://cp.example/policy.yaml',
      pollIntervalMs: 10_000,
      timeoutMs: 5000,
      caFile: '/etc/meshctl/ca.pem',
    });
  });

  it('names the path and the value of every malformed address', () => {
    expect(
      problems(() =>
        load({
          services: [
            svc({ addresses: ['10.96.0.10', 'fd00::1:80', '10.0.0.0/33:80', 'bad_host!:80', '10.0.0.1:70000'] }),
          ],
        }),
      ),
    ).toEqual([
      'services[0].addresses[0] (mesh.yaml): "10.96.0.10" is not a service address ("10.96.0.10" needs a port: write it as HOST:PORT, [IPv6]:PORT)',
      'services[0].addresses[1] (mesh.yaml): "fd00::1:80" is not a service address ("fd00::1:80": write an IPv6 address in brackets, e.g. [fd00::5]:8080)',
      'services[0].addresses[2] (mesh.yaml): "10.0.0.0/33:80" is not a service address ("10.0.0.0/33" is not a CIDR (prefix "/33" must be 0..32))',
      'services[0].addresses[3] (mesh.yaml): "bad_host!:80" is not a service address ("bad_host!" is neither an IP address nor a hostname)',
      'services[0].addresses[4] (mesh.yaml): "10.0.0.1:70000" is not a service address ("10.0.0.1:70000" port 70000 must be 1..65535)',
    ]);
    expect(problems(() => load({ services: [svc({ endpoints: [{ address: '10.0.0.1:80', dns: 'x:1' }] })] }))).toEqual([
      'services[0].endpoints[0] (mesh.yaml): must be an object with exactly one of address, dns or srv, and optionally subset; got {"address":"10.0.0.1:80","dns":"x:1"}',
    ]);
  });

  it('rejects duplicate names and addresses, unknown subsets and inverted bounds, all at once', () => {
    expect(
      problems(() =>
        load({
          services: [
            svc({
              endpoints: [{ address: '10.0.0.1:80', subset: 'v1' }, '10.0.0.2:80'],
              subsets: { v1: 1, v3: 1 },
              retries: { backoff: '1s' },
              healthCheck: { interval: '1s', timeout: '2s' },
            }),
            svc({ addresses: ['10.96.0.10:80'] }),
          ],
          controlPlane: { url: 'http://cp/x', caFile: '/ca.pem' },
        }),
      ),
    ).toEqual([
      'services[0].subsets.v3 (mesh.yaml): no endpoint of service "api" has subset "v3"',
      'services[0].endpoints[1] (mesh.yaml): has no subset, but service "api" splits traffic by subsets (v1, v3); give it one',
      'services[0].retries.backoff (mesh.yaml): 1s is longer than services[0].retries.maxBackoff (250ms)',
      'services[0].healthCheck.timeout (mesh.yaml): 2s is longer than services[0].healthCheck.interval (1s)',
      'services[1].name (mesh.yaml): "api" is also the name of services[0]; names must be unique',
      'services[1].addresses[0] (mesh.yaml): 10.96.0.10:80 is also an address of service "api" (services[0].addresses[0]); a destination belongs to one service',
      'controlPlane.caFile (mesh.yaml): only applies to an https URL, but controlPlane.url is http://cp/x',
    ]);
    expect(
      problems(() =>
        load({ services: [svc({ subsets: { v1: 0 }, endpoints: [{ address: '10.0.0.1:80', subset: 'v1' }] })] }),
      ),
    ).toEqual(['services[0].subsets (mesh.yaml): every weight is 0; at least one subset needs traffic']);
  });

  it('rejects overlapping inbound port entries and a second catch-all', () => {
    expect(
      problems(() =>
        load({ inbound: { ports: [{ port: 8080 }, { port: '8000-8100' }, { port: '*' }, { port: '*' }] } }),
      ),
    ).toEqual([
      'inbound.ports[1].port (mesh.yaml): 8000-8100 overlaps inbound.ports[0].port (8080); a port gets one policy',
      'inbound.ports[3].port (mesh.yaml): "*" is also inbound.ports[2].port; only one entry may cover every other port',
    ]);
    expect(problems(() => load({ inbound: { ports: [{ port: 8080, allow: ['10.0.0.0/40'] }] } }))[0]).toContain(
      'inbound.ports[0].allow',
    );
  });

  it('rejects control-plane URLs that are not plain http(s)', () => {
    expect(problems(() => load({ controlPlane: { url: 'ftp://x/p' } }))).toEqual([
      'controlPlane.url (mesh.yaml): "ftp://x/p" must be an http:// or https:// URL, got ftp:',
    ]);
    expect(problems(() => load({ controlPlane: { url: 'https://user:pw@x/p' } }))[0]).toContain(
      'must not carry credentials',
    );
    expect(problems(() => load({ controlPlane: { url: 'not a url' } }))[0]).toContain('is not a URL');
  });

  it('takes services, outbound and inbound from a control-plane overlay, naming it in errors', () => {
    const origin = 'control plane http://cp/p (etag "v2")';
    const c = load(
      { services: [svc()] },
      { raw: { services: [svc({ name: 'from-cp' })], outbound: { policy: 'registry-only' } }, origin },
    );
    expect(c.services.map((s) => s.name)).toEqual(['from-cp']);
    expect(c.outbound.policy).toBe('registry-only');
    expect(c.file).toBe('mesh.yaml');
    expect(problems(() => load({}, { raw: { services: [svc({ addresses: ['x'] })] }, origin }))[0]).toBe(
      `services[0].addresses[0] (${origin}): "x" is not a service address ("x" needs a port: write it as HOST:PORT, [IPv6]:PORT)`,
    );
    expect(problems(() => load({}, { raw: { proxy: {}, stateDir: '/x' }, origin }))[0]).toBe(
      `${origin}: a control-plane document may only hold services, outbound, inbound and mtls.peers; it has proxy, stateDir`,
    );
  });

  it("takes mtls.peers from a control-plane overlay, keeping the file's identity, mode and port", () => {
    const origin = 'control plane http://cp/p (etag "v3")';
    const identity = { certificate: '/id/cert.pem', key: '/id/key.pem', bundle: '/id/bundle.pem' };
    const file = { mtls: { identity, inbound: 'strict', tunnelPort: 15108, peers: ['10.0.0.0/24'] } };
    const c = load(file, { raw: { mtls: { peers: ['10.1.0.0/16', 'fd00:1::/64'] } }, origin });
    expect(c.mtls.peers.map((p) => `${p.address}/${p.prefix}`)).toEqual(['10.1.0.0/16', 'fd00:1::/64']);
    expect(c.mtls).toMatchObject({ identity, inbound: 'strict', tunnelPort: 15108 });
    // Without mtls in the document, the file's peers stand; an empty list clears them.
    expect(load(file, { raw: { services: [] }, origin }).mtls.peers.map((p) => `${p.address}/${p.prefix}`)).toEqual([
      '10.0.0.0/24',
    ]);
    expect(load(file, { raw: { mtls: { peers: [] } }, origin }).mtls.peers).toEqual([]);
    // A value that is not a CIDR is refused naming the document and the value.
    const bad = problems(() => load(file, { raw: { mtls: { peers: ['10.1.0.0/16', '10.2.0.0/33'] } }, origin }));
    expect(bad).toHaveLength(1);
    expect(bad[0]).toBe(`mtls.peers[1] (${origin}): "10.2.0.0/33" is not a CIDR (prefix "/33" must be 0..32)`);
    // The rest of mtls is host-local, and mtls must be a mapping.
    expect(problems(() => load(file, { raw: { mtls: { peers: [], inbound: 'disable' } }, origin }))[0]).toBe(
      `mtls (${origin}): a control-plane document may only hold mtls.peers; it has mtls.inbound`,
    );
    expect(problems(() => load(file, { raw: { mtls: ['10.1.0.0/16'] }, origin }))[0]).toBe(
      `mtls (${origin}): must be a mapping holding peers, got ["10.1.0.0/16"]`,
    );
    // Peers need this proxy's identity: a host without one refuses the document, naming where the peers came from.
    expect(problems(() => load({}, { raw: { mtls: { peers: ['10.1.0.0/16'] } }, origin }))[0]).toBe(
      `mtls.peers (${origin}): mesh peers needs this proxy's identity: set mtls.identity.certificate, key and bundle (meshctl ca issue writes them)`,
    );
  });

  it('changes the config hash when the policy changes, so a reload applies it', () => {
    const a = load({ services: [svc()] });
    expect(load({ services: [svc()] }).hash).toBe(a.hash);
    expect(load({ services: [svc({ subsets: undefined, loadBalancer: 'random' })] }).hash).not.toBe(a.hash);
    expect(load({}).hash).not.toBe(a.hash);
    expect(Object.isFrozen(a.services[0]!.retries)).toBe(true);
  });
});

describe('address parsers', () => {
  it('parse host:port, [v6]:port, cidr:port and resolver servers', () => {
    expect(parseHostPort('10.0.0.1:80')).toEqual({ kind: 'ip', address: '10.0.0.1', family: 'ipv4', port: 80 });
    expect(parseHostPort('[::ffff:10.0.0.1]:80')).toEqual({
      kind: 'ip',
      address: '::ffff:a00:1',
      family: 'ipv6',
      port: 80,
    });
    expect(parseHostPort('[10.0.0.1]:80')).toBe('"[10.0.0.1]:80": only IPv6 addresses go in brackets');
    expect(parseHostPort('db:5432')).toEqual({ kind: 'hostname', hostname: 'db', port: 5432 });
    expect(parseHostPort('1.2.3:80')).toBe('"1.2.3" is neither an IP address nor a hostname');
    expect(parseServiceAddress('[fd00::/8]:80')).toEqual({
      kind: 'cidr',
      cidr: { family: 'ipv6', address: 'fd00::', prefix: 8 },
      port: 80,
    });
    expect(parseServiceAddress('10.0.0.0/8')).toBe('"10.0.0.0/8" needs a port: write it as HOST:PORT, [IPv6]:PORT');
    expect(parseResolverServer('fd00::53')).toEqual({ address: 'fd00::53', port: 53 });
    expect(parseResolverServer('10.0.0.2:5353')).toEqual({ address: '10.0.0.2', port: 5353 });
    expect(parseResolverServer('dns.example:53')).toBe(
      '"dns.example:53" must be an IP address (a resolver cannot be found by name)',
    );
  });
});
