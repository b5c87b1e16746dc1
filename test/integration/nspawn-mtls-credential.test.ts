// System test of the mTLS key as a systemd credential: in a Debian container booted with systemd (systemd-nspawn),
// `meshctl ca` makes an identity, the key goes to /etc/credstore as root 0600, and `meshctl service install` with
// `mtls.identity.key: credential:NAME` writes LoadCredential=NAME into the proxy's drop-in. The proxy, running as
// meshproxy, which cannot read the key file, loads the identity from $CREDENTIALS_DIRECTORY (its /stats shows the
// SPIFFE ID and expiry); `credential:NAME:PATH` loads it from a path the same way.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SOAK } from '../helpers/soak.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  Container,
  REPO_ROOT,
  createLabTopology,
  tearDownNspawnLab,
  requireNspawnTools,
  rootfsTarball,
  unpackRootfs,
  writeLabScripts,
  type LabTopology,
} from '../helpers/nspawn-lab.js';
import { waitUntil } from '../helpers/wait.js';

const PREFIX = 'mi-cred';
const SUBNET = 231;
const MESHCTL = '/opt/meshctl/bin/meshctl';
const NODE = '/usr/local/bin/node';
const ID = 'spiffe://lab.test/host/ct';

const config = (key: string) => `proxy:
  user: meshproxy
  workers: 1
  drainTimeout: 2s
mtls:
  identity:
    certificate: /etc/meshctl/identity/svid.pem
    key: ${key}
    bundle: /etc/meshctl/identity/svid_bundle.pem
`;

// npm test has LoadCredential=NAME under systemd in nspawn-mtls (and credential:NAME:PATH's drop-in in a unit test);
// this second container boot, with the key under /etc/credstore and a restart, runs in npm run test:soak.
describe.skipIf(!integrationEnabled || !SOAK)('the mTLS key as a systemd credential (systemd-nspawn)', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let ct: Container;

  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  const mtlsStats = (): { identity?: { spiffeId?: string; state?: string; secondsLeft?: number } } | null => {
    const r = ct.exec(NODE, [
      '-e',
      "fetch('http://127.0.0.1:15000/stats').then((r) => r.text()).then((t) => process.stdout.write(t))",
    ]);
    if (r.status !== 0) return null;
    return (JSON.parse(r.stdout) as { mtls?: ReturnType<typeof mtlsStats> }).mtls ?? null;
  };
  const journal = () => ct.run('journalctl', ['-u', 'meshctl-proxy', '-o', 'cat', '--no-pager']);

  beforeAll(async () => {
    requireNspawnTools();
    root = unpackRootfs(rootfsTarball());
    labDir = writeLabScripts();
    writeFileSync(join(labDir, 'config-credstore.yaml'), config('credential:meshctl-mtls-key'));
    writeFileSync(
      join(labDir, 'config-path.yaml'),
      config('credential:meshctl-mtls-key:/etc/meshctl/identity/svid_key.pem'),
    );
    for (const dir of ['opt/meshctl', 'opt/lab']) mkdirSync(join(root, dir), { recursive: true });
    writeFileSync(join(root, 'usr/local/bin/node'), '');
    topo = createLabTopology(PREFIX, SUBNET);
    ct = new Container({
      name: `${PREFIX}-ct`,
      root,
      netns: topo.ctNs,
      binds: { [process.execPath]: NODE, [REPO_ROOT]: '/opt/meshctl', [labDir]: '/opt/lab' },
    });
    await ct.boot();
  }, 600_000);

  afterAll(async () => {
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir] });
  }, 120_000);

  it('loads the key from the credential store while meshproxy cannot read the key file', () => {
    ct.run(MESHCTL, ['ca', 'init', '/root/ca', '--trust-domain', 'lab.test']);
    ct.run(MESHCTL, ['ca', 'issue', '--ca', '/root/ca', '--id', ID, '--out', '/etc/meshctl/identity']);
    ct.run('install', ['-d', '-m', '0700', '/etc/credstore']);
    ct.run('install', ['-m', '0600', '/etc/meshctl/identity/svid_key.pem', '/etc/credstore/meshctl-mtls-key']);

    const out = ct.run(MESHCTL, ['service', 'install', '--config', '/opt/lab/config-credstore.yaml']);
    expect(out).toContain('proxy ready on 127.0.0.1:15000');
    const dropIn = ct.run('cat', ['/etc/systemd/system/meshctl-proxy.service.d/10-meshctl-config.conf']);
    expect(dropIn.split('\n').filter((l) => l.startsWith('LoadCredential'))).toEqual([
      'LoadCredential=meshctl-mtls-key',
    ]);
    const pid = show('meshctl-proxy.service', 'MainPID');
    expect(ct.run('ps', ['-o', 'user=', '-p', pid]).trim()).toBe('meshproxy');
    // The proxy's user cannot read either copy of the key on disk...
    for (const file of ['/etc/credstore/meshctl-mtls-key', '/etc/meshctl/identity/svid_key.pem'])
      expect(ct.exec('runuser', ['-u', 'meshproxy', '--', 'cat', file]).status, file).not.toBe(0);
    // ...and still holds the identity.
    const stats = mtlsStats();
    expect(stats?.identity, JSON.stringify(stats)).toMatchObject({ spiffeId: ID, state: 'valid' });
    expect(stats!.identity!.secondsLeft).toBeGreaterThan(23 * 3600);
    expect(journal()).toContain('mTLS identity loaded');
  });

  it('loads credential:NAME:PATH from that path after a restart', async () => {
    ct.run('rm', ['/etc/credstore/meshctl-mtls-key']);
    // An existing /etc/meshctl/config.yaml is kept by service install: edit it, as an operator would.
    ct.run('cp', ['/opt/lab/config-path.yaml', '/etc/meshctl/config.yaml']);
    ct.run(MESHCTL, ['service', 'install']);
    const dropIn = ct.run('cat', ['/etc/systemd/system/meshctl-proxy.service.d/10-meshctl-config.conf']);
    expect(dropIn).toContain('LoadCredential=meshctl-mtls-key:/etc/meshctl/identity/svid_key.pem\n');
    // A credential is copied when the service starts: the new source takes effect at a restart.
    const before = show('meshctl-proxy.service', 'MainPID');
    ct.run('systemctl', ['restart', 'meshctl-proxy.service']);
    await waitUntil(
      'the restarted proxy to report its identity',
      () => show('meshctl-proxy.service', 'MainPID') !== before && mtlsStats()?.identity?.spiffeId === ID,
      30_000,
      { seen: () => ({ state: show('meshctl-proxy.service', 'ActiveState'), stats: mtlsStats() }) },
    );
  });
});
