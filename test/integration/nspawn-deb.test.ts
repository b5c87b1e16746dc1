// System test of the Debian package (issue 14): `npm run package`'s script builds the .deb twice from this checkout
// (the second time with a bumped version), and a fresh Debian rootfs booted with systemd in systemd-nspawn gets
// only the .deb files: no source checkout and no `node` on its PATH (the package brings its runtime). apt-get
// installs it (nothing starts), `meshctl service install` starts the packaged units, both directions are
// intercepted, an upgrade under connection loops loses and bypasses nothing, `apt-get remove` leaves the ruleset
// exactly as before and `apt-get purge` leaves nothing but the meshproxy user.
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import {
  Container,
  REPO_ROOT,
  createLabTopology,
  tearDownNspawnLab,
  requireNspawnTools,
  loopDuring,
  rootfsTarball,
  sleep,
  unpackRootfs,
  writeLabScripts,
  type LabTopology,
} from '../helpers/nspawn-lab.js';

const PREFIX = 'hp-deb';
const SUBNET = 217;
/** The host's node, for the lab's own servers and clients inside; deliberately not on the container's PATH. */
const LAB_NODE = '/opt/lab-node/node';
const UNITS = ['meshctl-proxy.socket', 'meshctl-proxy.service', 'meshctl-capture.service'];
const APT_ENV = ['env', 'DEBIAN_FRONTEND=noninteractive'];

// Foreign rules present at every boot before meshctl (as Docker or ufw would add them): removal must keep them.
const FOREIGN_UNIT = `[Unit]
Description=lab: foreign netfilter rules that meshctl must leave alone
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables -t nat -A OUTPUT -p tcp --dport 9999 -m comment --comment lab-foreign -j RETURN
ExecStart=/usr/sbin/ip6tables -t nat -A PREROUTING -p tcp --dport 9997 -j RETURN
[Install]
WantedBy=multi-user.target
`;

/** Runs scripts/package-deb.sh into `out`; returns the .deb's path (the script's last line). */
function buildDeb(out: string, version: string): string {
  // Uncompressed and without lintian: the same tree as a release build, minus the slow parts.
  const stdout = execFileSync(
    'bash',
    [
      join(REPO_ROOT, 'scripts/package-deb.sh'),
      '--out',
      out,
      '--version',
      version,
      '--compression',
      'none',
      '--no-lintian',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 300_000 },
  );
  return stdout.trim().split('\n').pop()!;
}

describe.skipIf(!integrationEnabled)('the meshctl .deb in a systemd-nspawn container', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let debDir = '';
  let ct: Container;
  let outboundServer: ChildProcess | null = null;
  let rulesBefore = '';
  const version1 = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const version2 = `${version1}+upgrade1`;
  let deb1 = '';
  let deb2 = '';

  const xtablesRules = (): string => {
    const strip = (text: string) =>
      text
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => l.replace(/\[\d+:\d+\]$/, ''))
        .join('\n');
    return ['iptables-save', 'ip6tables-save'].map((c) => strip(ct.run(c))).join('\n---\n');
  };
  const ruleset = (): string => `${xtablesRules()}\n---\n${ct.run('nft', ['list', 'ruleset'])}`;
  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  const apt = (...args: string[]): string =>
    ct.run(APT_ENV[0]!, [...APT_ENV.slice(1), 'apt-get', '-y', '--no-install-recommends', ...args], {
      timeoutMs: 180_000,
    });
  const inContainer = (deb: string): string => `/opt/debs/${deb.split('/').pop()}`;
  const dpkgStatus = (): string =>
    ct.exec('dpkg-query', ['-W', '-f=${db:Status-Abbrev}${Version}', 'meshctl']).stdout.trim();
  const startInboundServer = (): void => {
    ct.run('systemd-run', [
      '--unit=lab-echo',
      '-p',
      'DynamicUser=yes',
      LAB_NODE,
      '/opt/lab/echo-server.mjs',
      '::',
      '9090',
    ]);
    for (let i = 0; i < 100 && !ct.run('ss', ['-Hltn', 'sport = :9090']).includes('9090'); i++)
      spawnSync('sleep', ['0.05']);
  };
  /** One connection from `where`; returns the greeting line (peer=… local=…). */
  const connectOnce = (where: 'client' | 'container', host: string, port: number): string => {
    const code = `const s=require('net').connect({host:'${host}',port:${port}});let b='';s.setTimeout(10000,()=>{console.error('timeout');process.exit(2)});s.on('data',d=>{b+=d;if(b.includes('\\n')){process.stdout.write(b.split('\\n')[0]);s.destroy()}});s.on('error',e=>{console.error(e.code||e.message);process.exit(1)})`;
    if (where === 'container') return ct.run(LAB_NODE, ['-e', code]);
    const r = spawnSync('ip', ['netns', 'exec', topo.clientNs, process.execPath, '-e', code], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    if (r.status !== 0) throw new Error(`client connect to ${host}:${port} failed: ${r.stderr}`);
    return r.stdout;
  };
  // Debian 12's systemd names its vendor unit directory /lib/systemd/system, the same directory as /usr/lib/… (merged /usr).
  const packaged = (unit: string): RegExp => new RegExp(`^(/usr)?/lib/systemd/system/${unit.replace(/\./g, '\\.')}$`);
  const viaProxy = /^peer=(::ffff:)?127\.0\.0\.6 /;
  const direct = (): RegExp => new RegExp(`^peer=(::ffff:)?${topo.client4.replace(/\./g, '\\.')} `);
  /** Access-log lines of outbound connections to the client's echo server (counted inside: the log grows large). */
  const outboundLogged = (): number =>
    Number(
      ct
        .run('sh', [
          '-c',
          `journalctl -u meshctl-proxy -o cat --no-pager | grep -cF '"originalDst":"${topo.client4}:8080"' || true`,
        ])
        .trim(),
    );

  beforeAll(async () => {
    requireNspawnTools([
      { tool: 'dpkg-deb', pkg: 'dpkg-dev' },
      { tool: 'dpkg-shlibdeps', pkg: 'dpkg-dev' },
    ]);
    debDir = mkdtempSync(join(process.env.MESHCTL_TEST_TMP ?? '/var/tmp', 'hp-debs-'));
    chmodSync(debDir, 0o755); // apt reads local .debs as its _apt user where it can
    deb1 = buildDeb(debDir, version1);
    deb2 = buildDeb(debDir, version2);
    const tarball = rootfsTarball();
    root = unpackRootfs(tarball);
    labDir = writeLabScripts();
    writeFileSync(join(root, 'etc/systemd/system/lab-foreign-rules.service'), FOREIGN_UNIT);
    mkdirSync(join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
    symlinkSync(
      '/etc/systemd/system/lab-foreign-rules.service',
      join(root, 'etc/systemd/system/multi-user.target.wants/lab-foreign-rules.service'),
    );
    for (const dir of ['opt/lab', 'opt/debs', 'opt/lab-node']) mkdirSync(join(root, dir), { recursive: true });
    writeFileSync(join(root, LAB_NODE), '');
    topo = createLabTopology(PREFIX, SUBNET);
    ct = new Container({
      name: `${PREFIX}-ct`,
      root,
      netns: topo.ctNs,
      binds: { [process.execPath]: LAB_NODE, [labDir]: '/opt/lab', [debDir]: '/opt/debs' },
    });
    await ct.boot();
    outboundServer = spawn(
      'ip',
      ['netns', 'exec', topo.clientNs, process.execPath, join(labDir, 'echo-server.mjs'), '::', '8080'],
      { stdio: 'ignore' },
    );
    rulesBefore = ruleset();
  }, 600_000);

  afterAll(async () => {
    outboundServer?.kill('SIGKILL');
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir, debDir] });
  }, 120_000);

  it('installs with apt-get from the .deb alone: its own runtime, the units, the user and the conffile; nothing starts', () => {
    expect(rulesBefore).toContain('lab-foreign');
    expect(ct.exec('sh', ['-c', 'command -v node']).status).not.toBe(0);
    apt('install', inContainer(deb1));
    expect(dpkgStatus()).toBe(`ii ${version1}`);
    expect(ct.run('meshctl', ['--version']).trim()).toBe(version1);
    expect(ct.run('getent', ['passwd', 'meshproxy'])).toMatch(/^meshproxy:x:\d+:\d+:/);
    expect(ct.run('dpkg-query', ['-W', '-f=${Conffiles}', 'meshctl'])).toContain('/etc/meshctl/config.yaml');
    for (const unit of UNITS) {
      expect(show(unit, 'FragmentPath')).toMatch(packaged(unit));
      expect(show(unit, 'UnitFileState')).toBe('disabled');
      expect(show(unit, 'ActiveState')).toBe('inactive');
    }
    // The rendered units name the package's launcher and pass systemd's own lint inside the target system.
    const lint = ct.exec('systemd-analyze', ['verify', '--man=no', ...UNITS]);
    expect(`${lint.stdout}${lint.stderr}`).toBe('');
    expect(ruleset()).toBe(rulesBefore);
  });

  /** Polls `read` until `done` holds (the access log reaches the journal asynchronously); returns the last value. */
  const settle = async (read: () => number, done: (n: number) => boolean): Promise<number> => {
    let n = read();
    for (let i = 0; i < 100 && !done(n); i++) {
      await sleep(100);
      n = read();
    }
    return n;
  };

  it('meshctl service install starts the packaged units without copying them to /etc, and intercepts both ways', async () => {
    const out = ct.run('meshctl', ['service', 'install']);
    expect(out).toContain('proxy ready on 127.0.0.1:15000');
    expect(out).not.toContain('warning');
    for (const unit of UNITS) {
      expect(show(unit, 'ActiveState')).toBe('active');
      expect(show(unit, 'UnitFileState')).toBe('enabled');
      expect(show(unit, 'FragmentPath')).toMatch(packaged(unit));
      expect(ct.exec('test', ['-e', `/etc/systemd/system/${unit}`]).status).not.toBe(0);
    }
    expect(show('meshctl-proxy.service', 'DropInPaths')).toBe(
      '/etc/systemd/system/meshctl-proxy.service.d/10-meshctl-config.conf',
    );
    for (const path of ['/usr/local/bin/meshctl', '/etc/sysusers.d/meshctl.conf'])
      expect(ct.exec('test', ['-e', path]).status).not.toBe(0);
    expect(ct.run('ps', ['-o', 'user=', '-p', show('meshctl-proxy.service', 'MainPID')]).trim()).toBe('meshproxy');
    expect(ct.exec('meshctl', ['service', 'status']).status).toBe(0);
    startInboundServer();
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(viaProxy);
    const logged = outboundLogged();
    expect(connectOnce('container', topo.client4, 8080)).toContain(`local=::ffff:${topo.client4}:8080`);
    expect(await settle(outboundLogged, (n) => n > logged)).toBe(logged + 1);
  });

  it('upgrades to a rebuilt package with a bumped version under connection loops: none fails, none bypasses the proxy', async () => {
    const before = {
      pid: show('meshctl-proxy.service', 'MainPID'),
      capture: show('meshctl-capture.service', 'ActiveEnterTimestampMonotonic'),
      socket: show('meshctl-proxy.socket', 'ActiveEnterTimestampMonotonic'),
      logged: outboundLogged(),
    };
    let aptOut = '';
    // The upgrade starts once both loops are going (loopDuring calls `during` only after its loop's first progress).
    let outboundGoing: () => void = () => {};
    const outboundStarted = new Promise<void>((resolve) => (outboundGoing = resolve));
    const [inbound, outbound] = await Promise.all([
      loopDuring(
        (stop) =>
          spawn(
            'ip',
            [
              'netns',
              'exec',
              topo.clientNs,
              process.execPath,
              join(labDir, 'conn-loop.mjs'),
              topo.ct4,
              '9090',
              stop,
              '5000',
              '120000',
            ],
            { stdio: ['ignore', 'pipe', 'pipe'] },
          ),
        join(labDir, 'stop-in'),
        async () => {
          await outboundStarted;
          aptOut = apt('install', inContainer(deb2));
        },
      ),
      loopDuring(
        (stop) =>
          ct.spawn(LAB_NODE, [
            '/opt/lab/conn-loop.mjs',
            topo.client4,
            '8080',
            `/opt/lab/${stop.split('/').pop()}`,
            '5000',
            '120000',
          ]),
        join(labDir, 'stop-out'),
        async () => {
          outboundGoing();
          for (let i = 0; i < 1200 && dpkgStatus() !== `ii ${version2}`; i++) await sleep(100);
        },
      ),
    ]);
    expect(aptOut).toContain(`Unpacking meshctl (${version2}) over (${version1})`);
    for (const r of [inbound, outbound]) {
      expect(r.errors).toEqual([]);
      expect(r.refused + r.failed).toBe(0);
      expect(r.ok).toBeGreaterThan(5);
    }
    // Inbound: every connection reached the server from the proxy's passthrough address, none directly.
    expect(
      Object.keys(inbound.peers).every((peer) => peer.endsWith('127.0.0.6')),
      JSON.stringify(inbound.peers),
    ).toBe(true);
    // Outbound: the access log (old and new proxy) has one line per connection the loop made.
    expect((await settle(outboundLogged, (n) => n - before.logged >= outbound.ok)) - before.logged).toBe(outbound.ok);

    expect(dpkgStatus()).toBe(`ii ${version2}`);
    expect(ct.run('meshctl', ['--version']).trim()).toBe(version2);
    // The proxy restarted onto the new files (a process still running the replaced runtime shows "(deleted)"),
    // while the listening sockets and the capture rules stayed up the whole time.
    const pid = show('meshctl-proxy.service', 'MainPID');
    expect(pid).not.toBe(before.pid);
    expect(ct.run('readlink', [`/proc/${pid}/exe`]).trim()).toBe('/usr/lib/meshctl/node/bin/node');
    expect(show('meshctl-proxy.socket', 'ActiveEnterTimestampMonotonic')).toBe(before.socket);
    expect(show('meshctl-capture.service', 'ActiveEnterTimestampMonotonic')).toBe(before.capture);
    expect(ct.run('journalctl', ['-u', 'meshctl-capture', '-o', 'cat', '--no-pager'])).toMatch(/^Reloaded /m);
    const status = ct.exec('meshctl', ['status']);
    expect(status.stdout).toContain('in sync');
    expect(status.status).toBe(0);
  }, 240_000);

  it('apt-get remove stops capture, then the proxy, and leaves the ruleset exactly as before install', () => {
    const out = apt('remove', 'meshctl');
    const order = [
      'stopped: meshctl-capture.service',
      'stopped: meshctl-proxy.service',
      'stopped: meshctl-proxy.socket',
    ].map((line) => out.indexOf(line));
    expect(
      order.every((at) => at >= 0),
      out,
    ).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(ruleset()).toBe(rulesBefore);
    expect(dpkgStatus()).toBe(`rc ${version2}`);
    for (const unit of UNITS) expect(show(unit, 'LoadState')).toBe('not-found');
    for (const path of ['/usr/bin/meshctl', '/usr/lib/meshctl', `/etc/systemd/system/${UNITS[1]}.d`])
      expect(ct.exec('test', ['-e', path]).status).not.toBe(0);
    expect(ct.run('cat', ['/etc/meshctl/config.yaml'])).toContain('user: meshproxy'); // a conffile stays until purge
    expect(connectOnce('client', topo.ct4, 9090)).toMatch(direct());
  });

  it('apt-get purge leaves no meshctl file or state behind, only the meshproxy user', () => {
    apt('purge', 'meshctl');
    expect(ct.exec('dpkg-query', ['-W', 'meshctl']).status).not.toBe(0);
    const left = ct.run('find', ['/etc', '/usr', '/var', '/run', '-xdev', '-name', '*meshctl*']).trim();
    expect(left).toBe('');
    expect(ct.run('getent', ['passwd', 'meshproxy'])).toMatch(/^meshproxy:/);
    expect(ruleset()).toBe(rulesBefore);
  });
});
