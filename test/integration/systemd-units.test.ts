// Lint of the shipped systemd units: `systemd-analyze verify` must print nothing at all (it exits 0 on unknown keys
// and bad values, so output is the signal: LABS.md §4), also with the drop-ins `meshctl service install` writes;
// the proxy unit's hardening is gated with `systemd-analyze security`; the sysusers file creates the proxy user.
// ExecStart= paths are checked on the host, so /usr/local/bin/meshctl is provided as a link to this tree's launcher
// inside a private mount namespace (the host's /usr/local/bin is not touched).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { DEFAULT_LAYOUT, UNITS, renderDropIns } from '../../src/service/layout.js';
import { integrationEnabled } from '../helpers/integration.js';
import { REPO_ROOT } from '../helpers/nspawn-lab.js';

const UNIT_DIR = join(REPO_ROOT, 'systemd');
const SHIPPED = [UNITS.socket, UNITS.proxy, UNITS.capture];

/** Runs a shell script with /usr/local/bin/meshctl → this tree's bin/meshctl, in a private mount namespace. */
function withMeshctlOnPath(script: string, cwd: string): { out: string; status: number | null } {
  const setup = `mount -t tmpfs tmpfs /usr/local/bin && ln -s "${join(REPO_ROOT, 'bin/meshctl')}" /usr/local/bin/meshctl && ln -s "${process.execPath}" /usr/local/bin/node`;
  const r = spawnSync(
    'unshare',
    ['-m', '--propagation', 'private', 'sh', '-c', `${setup} && cd "${cwd}" && ${script}`],
    { encoding: 'utf8', env: { ...process.env, SYSTEMD_LOG_COLOR: '0' } },
  );
  return { out: `${r.stdout}${r.stderr}`, status: r.status };
}

const config = (raw: Record<string, unknown>) =>
  configFromObject(
    { proxy: { user: 'nobody' }, ...raw },
    {
      host: {
        userDb: {
          user: () => ({ name: 'nobody', uid: 65534, gid: 65534 }),
          group: () => ({ name: 'nogroup', gid: 65534 }),
        },
        detectSshPorts: () => ({ ports: [22], source: 'default' }),
      },
    },
  );

describe.skipIf(!integrationEnabled)('shipped systemd units', () => {
  let scratch = '';
  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), 'ms-units-'));
  });
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('pass systemd-analyze verify with no output at all', () => {
    const r = withMeshctlOnPath(`systemd-analyze verify --man=no ${SHIPPED.map((u) => `./${u}`).join(' ')}`, UNIT_DIR);
    expect(r.out).toBe('');
    expect(r.status).toBe(0);
  });

  it.each([
    ['the defaults', {}],
    [
      'fail-open, IPv6 blocked, other ports and a long drain',
      {
        proxy: { user: 'nobody', outboundPort: 16001, inboundPort: 16006, drainTimeout: '2m' },
        capture: { ipv6: 'block' },
        safety: { onProxyDown: 'open' },
      },
    ],
    ['TPROXY inbound (transparent sockets, CAP_NET_ADMIN)', { capture: { inbound: { mode: 'tproxy' } } }],
  ])('pass systemd-analyze verify with the drop-ins service install writes for %s', (_name, raw) => {
    const dir = mkdtempSync(join(scratch, 'units-'));
    for (const unit of SHIPPED) copyFileSync(join(UNIT_DIR, unit), join(dir, unit));
    for (const dropIn of renderDropIns(config(raw), { ...DEFAULT_LAYOUT, unitDir: dir })) {
      mkdirSync(dirname(dropIn.path), { recursive: true });
      writeFileSync(dropIn.path, dropIn.text);
    }
    const r = withMeshctlOnPath(`systemd-analyze verify --man=no ${SHIPPED.map((u) => `./${u}`).join(' ')}`, dir);
    expect(r.out).toBe('');
    expect(r.status).toBe(0);
  });

  it('catches a broken unit (the lint is not blind)', () => {
    const dir = mkdtempSync(join(scratch, 'broken-'));
    writeFileSync(
      join(dir, UNITS.proxy),
      readFileSync(join(UNIT_DIR, UNITS.proxy), 'utf8').replace('Restart=always', 'Restart=sometimes'),
    );
    copyFileSync(join(UNIT_DIR, UNITS.socket), join(dir, UNITS.socket));
    const r = withMeshctlOnPath(`systemd-analyze verify --man=no ./${UNITS.proxy}`, dir);
    expect(r.out).toContain('sometimes');
    copyFileSync(join(UNIT_DIR, UNITS.proxy), join(dir, UNITS.proxy));
    mkdirSync(join(dir, `${UNITS.proxy}.d`));
    writeFileSync(join(dir, `${UNITS.proxy}.d`, '10-meshctl-config.conf'), '[Service]\nTimeoutStopSec=soon\n');
    expect(withMeshctlOnPath(`systemd-analyze verify --man=no ./${UNITS.proxy}`, dir).out).toContain('soon');
  });

  it('keeps the proxy unit hardened: systemd-analyze security exposure at most 2.0', () => {
    const r = withMeshctlOnPath(`systemd-analyze security --offline=yes --no-pager ./${UNITS.proxy}`, UNIT_DIR);
    const m = /Overall exposure level for meshctl-proxy\.service: (\d+\.\d+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.0);
    // V8 needs W+X pages: MemoryDenyWriteExecute must stay off, and it is the one big item left open.
    expect(readFileSync(join(UNIT_DIR, UNITS.proxy), 'utf8')).not.toMatch(/^MemoryDenyWriteExecute=yes/m);
  });

  it('keeps the proxy unit rated at most 2.0 with the tproxy drop-in, whose one capability is CAP_NET_ADMIN', () => {
    const dir = mkdtempSync(join(scratch, 'tproxy-'));
    for (const unit of SHIPPED) copyFileSync(join(UNIT_DIR, unit), join(dir, unit));
    const dropIns = renderDropIns(config({ capture: { inbound: { mode: 'tproxy' } } }), {
      ...DEFAULT_LAYOUT,
      unitDir: dir,
    });
    for (const dropIn of dropIns) {
      mkdirSync(dirname(dropIn.path), { recursive: true });
      writeFileSync(dropIn.path, dropIn.text);
    }
    const r = withMeshctlOnPath(`systemd-analyze security --offline=yes --no-pager ./${UNITS.proxy}`, dir);
    const m = /Overall exposure level for meshctl-proxy\.service: (\d+\.\d+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.0);
    // Every capability but CAP_NET_ADMIN is still dropped from the bounding set.
    expect(r.out).toMatch(/✓ CapabilityBoundingSet=~CAP_SYS_ADMIN/);
    expect(r.out).toMatch(/✗ CapabilityBoundingSet=~CAP_NET_ADMIN\s/);
    expect(r.out).toMatch(/✗ AmbientCapabilities=\s/);
  });

  it('creates the meshproxy system user and group from the sysusers.d file', () => {
    const root = mkdtempSync(join(scratch, 'root-'));
    mkdirSync(join(root, 'etc'));
    const r = spawnSync('systemd-sysusers', [`--root=${root}`, join(UNIT_DIR, 'meshctl.sysusers.conf')], {
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8');
    const m = /^meshproxy:x:(\d+):(\d+):meshctl transparent proxy:\/:\/usr\/sbin\/nologin$/m.exec(passwd);
    expect(m).not.toBeNull();
    expect(Number(m![1])).toBeLessThan(1000); // a system user
    expect(readFileSync(join(root, 'etc/group'), 'utf8')).toMatch(new RegExp(`^meshproxy:x:${m![2]}:`, 'm'));
  });
});
