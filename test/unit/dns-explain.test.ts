// `meshctl explain --dns NAME`, the proxy side: a mesh name (VIP or fixed address) or a forwarded one, and from where.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { explainDnsName } from '../../src/dns/explain.js';
import { UpstreamServers } from '../../src/dns/resolv-conf.js';
import { allocateVips } from '../../src/policy/mesh-names.js';
import { testHost } from '../cases.js';

const config = configFromObject(
  {
    proxy: { user: 'meshproxy' },
    capture: { dns: { enabled: true } },
    services: [
      { name: 'api', addresses: ['api.mesh.internal:80'], endpoints: ['10.0.1.1:8080'] },
      { name: 'db', addresses: ['db.mesh.internal:5432', '10.96.0.20:5432'], endpoints: ['10.0.2.1:5432'] },
    ],
  },
  { file: 'mesh.yaml', host: testHost, env: {} },
);

describe('explain --dns', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hd-explain-'));
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, 'nameserver 127.0.0.53\n');
  const upstreams = new UpstreamServers([], resolv);

  it("says a mesh name is answered by the proxy with its VIP or its service's fixed address", () => {
    const vip = allocateVips(['api.mesh.internal']).get('api.mesh.internal')!;
    expect(explainDnsName(config, 'API.mesh.internal.', upstreams)).toMatchObject({
      name: 'api.mesh.internal',
      answeredBy: 'mesh',
      service: 'api',
      vip: true,
      ipv4: [vip.ipv4],
      ipv6: [vip.ipv6],
      served: true,
    });
    expect(explainDnsName(config, 'db.mesh.internal', upstreams)).toMatchObject({
      answeredBy: 'mesh',
      vip: false,
      ipv4: ['10.96.0.20'],
      ipv6: [],
    });
  });

  it('says any other name is forwarded, to which servers and from where they come', () => {
    const e = explainDnsName(config, 'www.example.com', upstreams);
    expect(e).toMatchObject({ answeredBy: 'upstream', upstreams: { source: resolv, servers: ['127.0.0.53:53'] } });
    expect(e.reason).toContain('forwarded as asked (ID, letter case and EDNS kept) to 127.0.0.53:53');
  });
});
