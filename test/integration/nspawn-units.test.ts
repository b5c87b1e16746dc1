// Capture by systemd unit with a real systemd (issue 17): a Debian rootfs booted with systemd as PID 1 in
// systemd-nspawn (test/helpers/nspawn-lab.ts), meshctl bind-mounted. Two real units make one connection each when
// they start and then stay up: lab-backup.service (excluded) and lab-app.service (not). `meshctl install
// --exclude-units lab-backup.service` resolves the unit through systemctl, writes its drop-in, and loads the rule;
// `systemctl restart lab-backup.service` gives it a new cgroup, and the drop-in's ExecStartPre= refresh loads the
// rules for it before its main process connects: still excluded, every time. A stand-in for the proxy (the lab's echo
// server on 127.0.0.1:15001) tells a captured connection from a direct one (the peer's echo server in a client
// namespace) by the address it greets with. With the drop-in moved away, a restart is captured and status says STALE:
// the drop-in is what keeps the unit excluded. A refresh that fails (an unreadable ledger) fails the unit's start.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
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

const PREFIX = 'cu-nsu';
const SUBNET = 217;
const MESHCTL = '/opt/meshctl/bin/meshctl';
const NODE = '/usr/local/bin/node';
const DROPIN = '/etc/systemd/system/lab-backup.service.d/50-meshctl-units-host.conf';

/** Connects once to host:port, appends the greeting (or the error) to the output file, then stays up. */
const UNIT_CLIENT = `import net from 'node:net';
import { appendFileSync } from 'node:fs';
const [host, port, out] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const note = (line) => appendFileSync(out, line + '\\n');
const s = net.connect({ host, port });
let buf = '';
s.setTimeout(10000, () => { note('timeout'); s.destroy(); });
s.on('data', (d) => { buf += d; if (buf.includes('\\n')) { note(buf.split('\\n')[0]); s.destroy(); } });
s.on('error', (e) => note('error ' + (e.code ?? e.message)));
setInterval(() => {}, 1 << 30);
`;

const unitFile = (name: string, peer: string) => `[Unit]
Description=lab: ${name} connects to the peer once when it starts
[Service]
Type=simple
ExecStart=${NODE} /opt/lab/unit-client.mjs ${peer} 8080 /run/${name}.out
`;

describe.skipIf(!integrationEnabled)('excludeUnits with a real systemd unit that restarts (systemd-nspawn)', () => {
  let topo: LabTopology;
  let root = '';
  let labDir = '';
  let ct: Container;
  let peerServer: ChildProcess | null = null;

  const show = (unit: string, prop: string): string =>
    ct.run('systemctl', ['show', unit, `--property=${prop}`, '--value']).trim();
  const lines = (unit: string): string[] =>
    ct
      .exec('cat', [`/run/${unit.replace(/\.service$/, '')}.out`])
      .stdout.split('\n')
      .filter(Boolean);

  /** (Re)starts `unit` and returns the greeting its new main process got (polled, bounded). */
  async function startAndConnect(unit: string, verb: 'start' | 'restart'): Promise<string> {
    const before = lines(unit).length;
    ct.run('systemctl', [verb, unit]);
    await waitUntil(`a new greeting of ${unit} (it had ${before})`, () => lines(unit).length > before, 20_000, {
      seen: () => ({
        lines: lines(unit),
        status: ct.exec('systemctl', ['status', '--no-pager', '-l', unit]).stdout,
        journal: ct.exec('journalctl', ['-u', unit, '-o', 'cat', '--no-pager']).stdout.slice(-2000),
      }),
    });
    return lines(unit)[before]!;
  }

  beforeAll(async () => {
    requireNspawnTools();
    root = unpackRootfs(rootfsTarball());
    labDir = writeLabScripts();
    writeFileSync(join(labDir, 'unit-client.mjs'), UNIT_CLIENT);
    topo = createLabTopology(PREFIX, SUBNET);
    for (const name of ['lab-backup', 'lab-app'])
      writeFileSync(join(root, `etc/systemd/system/${name}.service`), unitFile(name, topo.client4));
    for (const dir of ['opt/meshctl', 'opt/lab']) mkdirSync(join(root, dir), { recursive: true });
    writeFileSync(join(root, 'usr/local/bin/node'), '');
    ct = new Container({
      name: `${PREFIX}-ct`,
      root,
      netns: topo.ctNs,
      binds: { [process.execPath]: NODE, [REPO_ROOT]: '/opt/meshctl', [labDir]: '/opt/lab' },
    });
    await ct.boot();
    peerServer = spawn(
      'ip',
      ['netns', 'exec', topo.clientNs, process.execPath, join(labDir, 'echo-server.mjs'), '::', '8080'],
      { stdio: 'ignore' },
    );
    await waitUntil('the peer listening on :8080', () =>
      spawnSync('ip', ['netns', 'exec', topo.clientNs, 'ss', '-Hltn', 'sport = :8080'], {
        encoding: 'utf8',
      }).stdout.includes('8080'),
    );
    // The stand-in for the proxy's outbound listener: a captured connection is greeted from 127.0.0.1:15001.
    ct.run('systemd-run', ['--unit=lab-proxy', NODE, '/opt/lab/echo-server.mjs', '127.0.0.1', '15001']);
    await waitUntil('lab-proxy listening on 127.0.0.1:15001', () =>
      ct.run('ss', ['-Hltn', 'sport = :15001']).includes('15001'),
    );
  }, 600_000);

  afterAll(async () => {
    peerServer?.kill('SIGKILL');
    await tearDownNspawnLab({ ct, topo, root, dirs: [labDir] });
  }, 120_000);

  it('keeps lab-backup.service excluded across restarts while lab-app.service is captured', async () => {
    const direct = `local=::ffff:${topo.client4}:8080`; // the peer listens on ::
    const captured = 'local=127.0.0.1:15001';
    expect(await startAndConnect('lab-backup.service', 'start')).toContain(direct);
    expect(await startAndConnect('lab-app.service', 'start')).toContain(direct);
    const cgroupBefore = show('lab-backup.service', 'ControlGroup');
    expect(cgroupBefore).toBe('/system.slice/lab-backup.service');

    const args = ['--without-proxy', '--backend', 'iptables-nft', '--ipv6', 'off', '--proxy-user', 'nobody'];
    const installed = ct.exec(MESHCTL, ['install', ...args, '--exclude-units', 'lab-backup.service']);
    expect(installed.status, `${installed.stdout}${installed.stderr}`).toBe(0);
    expect(ct.run('iptables-save', ['-t', 'nat'])).toContain(
      '-A MESHCTL_OUTPUT -m cgroup --path "/system.slice/lab-backup.service" -m comment --comment "meshctl:skip-unit" -j RETURN',
    );
    // The drop-in is in place and systemd reads it.
    expect(ct.run('systemctl', ['cat', 'lab-backup.service'])).toMatch(
      /ExecStartPre=\+\/usr\/local\/bin\/node \/opt\/meshctl\/bin\/meshctl units refresh --state-dir \/var\/lib\/meshctl\n/,
    );

    expect(await startAndConnect('lab-app.service', 'restart')).toContain(captured);
    for (let restart = 1; restart <= 3; restart++) {
      const greeting = await startAndConnect('lab-backup.service', 'restart');
      expect(greeting, `restart ${restart}`).toContain(direct);
    }
    const status = JSON.parse(ct.exec(MESHCTL, ['status', '--json']).stdout) as {
      units: { name: string; step: string; cgroup: string }[];
    };
    expect(status.units).toEqual([
      expect.objectContaining({
        name: 'lab-backup.service',
        step: 'in-step',
        cgroup: '/system.slice/lab-backup.service',
      }),
    ]);
    // The refresh ran in the unit's own cgroup, before its main process: the journal shows it re-applied each time.
    const journal = ct.run('journalctl', ['-u', 'lab-backup.service', '-o', 'cat', '--no-pager']);
    expect(journal.match(/refreshed: install \S+ re-applied/g)?.length).toBe(3);

    // Without its drop-in a restart is captured (the rules still match the old cgroup) and status says STALE:
    // the drop-in is what keeps the unit excluded.
    ct.run('mv', [DROPIN, `${DROPIN}.off`]);
    ct.run('systemctl', ['daemon-reload']);
    expect(await startAndConnect('lab-backup.service', 'restart')).toContain(captured);
    const stale = ct.exec(MESHCTL, ['status', '--json']);
    expect((JSON.parse(stale.stdout) as { units: { step: string }[] }).units[0]!.step).toBe('stale');
    expect(stale.status).toBe(4);
    ct.run('mv', [`${DROPIN}.off`, DROPIN]);
    ct.run('systemctl', ['daemon-reload']);
    expect(ct.run(MESHCTL, ['units', 'refresh'])).toMatch(/lab-backup\.service: STALE[\s\S]*refreshed: install/);
    expect(await startAndConnect('lab-backup.service', 'restart')).toContain(direct);

    // A refresh that fails (here: a ledger meshctl cannot read) fails the unit's start: it never runs captured.
    const ledger = '/var/lib/meshctl/host/ledger.json';
    ct.run('cp', [ledger, `${ledger}.keep`]);
    ct.run('sh', ['-c', `echo null > ${ledger}`]);
    const failed = ct.exec('systemctl', ['restart', 'lab-backup.service']);
    expect(failed.status).not.toBe(0);
    expect(show('lab-backup.service', 'ActiveState')).toBe('failed');
    expect(ct.run('journalctl', ['-u', 'lab-backup.service', '-o', 'cat', '--no-pager'])).toContain('LEDGER_CORRUPT');
    ct.run('mv', [`${ledger}.keep`, ledger]);
    expect(await startAndConnect('lab-backup.service', 'start')).toContain(direct);

    // Stopped, the unit is reported as not running; started again, it is excluded from its first connection.
    ct.run('systemctl', ['stop', 'lab-backup.service']);
    const stopped = JSON.parse(ct.exec(MESHCTL, ['status', '--json']).stdout) as { units: { step: string }[] };
    expect(stopped.units[0]!.step).toBe('not-running');
    expect(await startAndConnect('lab-backup.service', 'start')).toContain(direct);

    const removed = ct.exec(MESHCTL, ['uninstall']);
    expect(removed.status, `${removed.stdout}${removed.stderr}`).toBe(0);
    expect(ct.exec('test', ['-e', DROPIN]).status).not.toBe(0);
    expect(ct.run('systemctl', ['cat', 'lab-backup.service'])).not.toContain('units refresh');
    expect(await startAndConnect('lab-app.service', 'restart')).toContain(direct);
  }, 300_000);

  it('under `meshctl service install` (capture sandboxed, /etc read-only) the units’ drop-ins still keep them in step', async () => {
    ct.run('systemctl', ['stop', 'lab-proxy.service']); // the real proxy's socket unit takes 127.0.0.1:15001
    writeFileSync(
      join(labDir, 'units.yaml'),
      'proxy:\n  user: meshproxy\ncapture:\n  ipv6: off\n  outbound:\n    excludeUnits: [lab-backup.service]\n',
    );
    const out = ct.run(MESHCTL, ['service', 'install', '--config', '/opt/lab/units.yaml']);
    expect(out).toContain(DROPIN);
    const accepted = (): number => {
      const text = ct.run(NODE, [
        '-e',
        "fetch('http://127.0.0.1:15000/stats').then((r) => r.text()).then((t) => process.stdout.write(t))",
      ]);
      return (JSON.parse(text) as { connections: { accepted: { outbound: number } } }).connections.accepted.outbound;
    };
    const before = accepted();
    // The proxy connects to the peer from this host too, so the proxy's count tells captured from direct.
    await startAndConnect('lab-app.service', 'restart');
    expect(accepted()).toBe(before + 1);
    for (let restart = 1; restart <= 2; restart++) {
      expect(await startAndConnect('lab-backup.service', 'restart'), `restart ${restart}`).toMatch(/^peer=/);
      expect(accepted(), `restart ${restart}`).toBe(before + 1);
    }
    const status = JSON.parse(ct.exec(MESHCTL, ['status', '--json']).stdout) as { units: { step: string }[] };
    expect(status.units.map((u) => u.step)).toEqual(['in-step']);
    const removed = ct.run(MESHCTL, ['service', 'uninstall']);
    expect(removed).toContain(DROPIN);
    expect(ct.exec('test', ['-e', DROPIN]).status).not.toBe(0);
  }, 300_000);
});
