// Mesh names and their VIPs: which hostnames the DNS server answers and with what, VIP determinism (same name →
// same VIP whatever else is configured, in any process), collision handling, and the matcher finding the
// service by its VIP.
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { silentLogger } from '../../src/log.js';
import { allocateVips, meshNames } from '../../src/policy/mesh-names.js';
import { PolicyRuntime } from '../../src/policy/runtime.js';
import { UpstreamLease } from '../../src/policy/upstream.js';
import { cidrContains, parseCidr, parseIp, type Cidr } from '../../src/values/ip.js';
import { testHost } from '../cases.js';

const load = (raw: Record<string, unknown>) =>
  configFromObject({ proxy: { user: 'meshproxy' }, ...raw }, { file: 'mesh.yaml', host: testHost, env: {} });
const services = [
  { name: 'api', addresses: ['API.Mesh.Internal.:80'], endpoints: ['10.0.1.1:8080'] },
  {
    name: 'db',
    addresses: ['db.mesh.internal:5432', '10.96.0.20:5432', '[fd00::20]:5432'],
    endpoints: ['10.0.2.1:5432'],
  },
  { name: 'shadow', addresses: ['api.mesh.internal:81'], endpoints: ['10.0.3.1:80'] },
];

describe('mesh names', () => {
  it("answers a hostname with its service's fixed addresses, or a VIP pair from the reserved ranges", () => {
    const names = meshNames(load({ services }).services);
    expect([...names.keys()].sort()).toEqual(['api.mesh.internal', 'db.mesh.internal']);
    expect(names.get('db.mesh.internal')).toEqual({
      name: 'db.mesh.internal',
      service: 'db',
      ipv4: ['10.96.0.20'],
      ipv6: ['fd00::20'],
      vip: false,
    });
    const api = names.get('api.mesh.internal')!;
    expect(api).toMatchObject({ service: 'api', vip: true });
    expect(cidrContains(parseCidr('240.240.0.0/16') as Cidr, parseIp(api.ipv4[0]!)!)).toBe(true);
    expect(cidrContains(parseCidr('2001:2::/48') as Cidr, parseIp(api.ipv6[0]!)!)).toBe(true);
  });

  it('gives a name the same VIP whatever else is configured, and distinct VIPs to 5000 names', () => {
    const alone = allocateVips(['api.mesh.internal']).get('api.mesh.internal');
    const many = Array.from({ length: 5000 }, (_, i) => `svc-${i}.mesh.internal`);
    const together = allocateVips([...many, 'api.mesh.internal']);
    const vips = [...together.values()];
    expect(new Set(vips.map((v) => v.ipv4)).size).toBe(5001);
    expect(new Set(vips.map((v) => v.ipv6)).size).toBe(5001);
    // Among 5001 names in 65534 slots collisions are certain (birthday bound): they were resolved, not repeated.
    expect(allocateVips([...many].reverse())).toEqual(allocateVips(many));
    // A name keeps its VIP unless a name sorted before it collides on its slot.
    const moved = [...together].filter(
      ([name, v]) => name !== 'api.mesh.internal' && allocateVips([name]).get(name)!.ipv4 !== v.ipv4,
    );
    expect(moved.length).toBeGreaterThan(0);
    expect(moved.length).toBeLessThan(500);
    expect(together.get('api.mesh.internal')).toEqual(alone);
  });

  it('resolves a collision by rehashing, so both names get a VIP', () => {
    // Find two names whose first slot is the same.
    const bySlot = new Map<string, string>();
    let pair: [string, string] | null = null;
    for (let i = 0; pair === null; i++) {
      const name = `n${i}.mesh`;
      const v = allocateVips([name]).get(name)!.ipv4;
      if (bySlot.has(v)) pair = [bySlot.get(v)!, name];
      else bySlot.set(v, name);
    }
    const both = allocateVips(pair);
    expect(both.get(pair[0])!.ipv4).not.toBe(both.get(pair[1])!.ipv4);
    expect(both.get(pair[0])).toEqual(allocateVips([pair[0]]).get(pair[0]));
  });

  it("matches a connection to a VIP (either family) to the hostname's service", async () => {
    const config = load({ services });
    const rt = new PolicyRuntime(config, null, silentLogger);
    const vip = rt.meshNames.get('api.mesh.internal')!;
    const v4 = rt.outbound(vip.ipv4[0]!, 80, { remoteAddress: '10.0.0.5' });
    const v6 = rt.outbound(vip.ipv6[0]!, 80, { remoteAddress: '10.0.0.5' });
    expect((v4 as UpstreamLease).service).toBe('api');
    expect((v6 as UpstreamLease).service).toBe('api');
    (v4 as UpstreamLease).release();
    (v6 as UpstreamLease).release();
    // The second service naming the same host on another port matches its own port.
    const other = rt.outbound(vip.ipv4[0]!, 81, { remoteAddress: '10.0.0.5' });
    expect((other as UpstreamLease).service).toBe('shadow');
    (other as UpstreamLease).release();
    expect(rt.outbound(vip.ipv4[0]!, 82, { remoteAddress: '10.0.0.5' })).toBeNull();
    rt.stop();
  });
});
