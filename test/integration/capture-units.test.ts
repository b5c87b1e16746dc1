// Capture by systemd unit on a real kernel (cgroup v2), through bin/meshctl: processes placed in cgroups this test
// creates under the host's cgroup v2 hierarchy (`<mount>/cu-units-<pid>/<case>/<unit>`) stand in for units. A process
// in an excluded unit goes direct while one elsewhere is captured; a "restart" (the process moved out, the cgroup
// removed and made again at the same path, the process moved into the new one) leaves the loaded rule matching the
// old cgroup: the process is captured, `status` says STALE; `meshctl units refresh` (what each unit's drop-in runs)
// re-applies and it goes direct again, `status` in step. A second restart done the systemd way (the refresh runs
// inside the new cgroup before the process moves in, as ExecStartPre= does) is never captured. includeUnits with the
// unit not running at install, and nftables' refusal in a namespace, too.
//
// This host has no systemd as PID 1, so `systemctl show` is answered by a script on PATH that maps unit names to the
// cgroups made here (MESHCTL_TEST_UNITS); everything else — meshctl, the kernel, the cgroups — is real.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SOAK } from '../helpers/soak.js';
import { cgroup2Mount } from '../../src/netfilter/host/unit-cgroups.js';
import { scopeDir } from '../../src/netfilter/transaction/ledger.js';
import type { Backend } from '../../src/config/types.js';
import { integrationEnabled } from '../helpers/integration.js';
import { createVethPair } from '../helpers/netns.js';
import { MESHCTL, builtCli, labEnv, labNamespaces, meshctlResidue, tempStateDir } from '../helpers/netfilter-lab.js';

const { track, cleanup } = labNamespaces();
const mount = cgroup2Mount();
const ROOT_CGROUP = `/cu-units-${process.pid}`;
const OUTBOUND_PORT = 15001;
const APP_UID = 1000;

/** A TCP server that answers every connection with its tag and closes it. */
const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(64)
print('READY', flush=True)
while True:
    c, _ = s.accept()
    c.sendall((sys.argv[1] + '\\n').encode())
    c.close()
`;

/** A long-lived "unit process" as uid 1000: per stdin line "ADDR PORT" it connects and prints who answered. */
const CLIENT = `
import os, socket, sys, encodings.idna  # idna: imported while still root (the uid cannot read every stdlib path)
os.setgroups([]); os.setgid(${APP_UID}); os.setuid(${APP_UID})
print('READY', os.getpid(), flush=True)
for line in sys.stdin:
    addr, port = line.split()
    try:
        c = socket.create_connection((addr, int(port)), timeout=3)
        print(c.recv(64).decode('ascii').strip() or 'empty', flush=True)
        c.close()
    except Exception as e:
        print('error ' + repr(e).replace('\\n', ' '), flush=True)
`;

/** `systemctl show -p … -- UNIT` as systemd answers for a running unit, from MESHCTL_TEST_UNITS (name=path;…). */
const FAKE_SYSTEMCTL = `#!/bin/sh
[ "$1" = show ] || exit 1
for unit; do :; done
path=$(printf '%s' "$MESHCTL_TEST_UNITS" | tr ';' '\\n' | sed -n "s|^$unit=||p")
if [ -n "$path" ]; then printf 'LoadState=loaded\\nControlGroup=\\nSlice=\\n' | sed "s|^ControlGroup=|ControlGroup=$path|"
else printf 'LoadState=not-found\\nControlGroup=\\nSlice=\\n'; fi
`;

interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly lines: Interface;
}

const procs = new Set<ChildProcess>();
const pids = new Set<number>();
const cgroups: string[] = [];
let fakeBin = '';

/** Spawns python3 `script` in `ns` and resolves with its pid once it prints READY (bounded). */
function startPython(ns: string, script: string, args: readonly string[]): Promise<Proc> {
  const child = spawn('ip', ['netns', 'exec', ns, 'python3', '-u', '-c', script, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  procs.add(child);
  const lines = createInterface({ input: child.stdout! });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`python in ${ns} not ready after 10 s: ${err}`)), 10_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      const [ready, pid] = line.split(' ');
      if (ready !== 'READY') return reject(new Error(`python in ${ns} said ${line}: ${err}`));
      pids.add(Number(pid ?? child.pid));
      resolve({ child, pid: Number(pid ?? child.pid), lines });
    });
    child.once('exit', (code) => reject(new Error(`python in ${ns} exited ${code}: ${err}`)));
  });
}

/** Who answered a connection from `client` to address:port: `peer` (direct), `proxy` (captured), or an error. */
function connectFrom(client: Proc, address: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the client gave no answer within 10 s')), 10_000);
    client.lines.once('line', (line) => {
      clearTimeout(timer);
      resolve(line);
    });
    client.child.stdin!.write(`${address} ${port}\n`);
  });
}

const cgroupDir = (path: string) => join(mount!, path);

function makeCgroup(path: string): void {
  mkdirSync(cgroupDir(path), { recursive: true });
  if (!cgroups.includes(path)) cgroups.push(path);
}

/** Moves a process into the cgroup at `path` (cgroup v2: write its pid to cgroup.procs). */
function moveInto(pid: number, path: string): void {
  writeFileSync(join(cgroupDir(path), 'cgroup.procs'), `${pid}\n`);
}

/** A unit "restart": the process leaves, the cgroup is removed and made again at the same path. */
function recreateCgroup(path: string, pid: number): void {
  moveInto(pid, ROOT_CGROUP);
  rmdirSync(cgroupDir(path));
  mkdirSync(cgroupDir(path));
}

function removeCgroups(): void {
  const root = cgroupDir(ROOT_CGROUP);
  if (!existsSync(root)) return;
  const walk = (dir: string): string[] => [
    ...readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .flatMap((d) => walk(join(dir, d.name))),
    dir,
  ];
  for (const dir of walk(root)) {
    try {
      rmdirSync(dir);
    } catch {
      // a process still inside; killed in afterAll before this runs
    }
  }
}

function envFor(units: Record<string, string>): NodeJS.ProcessEnv {
  return {
    ...labEnv,
    PATH: `${fakeBin}:${labEnv.PATH ?? process.env.PATH ?? ''}`,
    MESHCTL_TEST_UNITS: Object.entries(units)
      .map(([name, path]) => `${name}=${path}`)
      .join(';'),
  };
}

function cli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [MESHCTL, ...args], { encoding: 'utf8', env, timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `meshctl units refresh` run the way the drop-in's ExecStartPre= runs: inside the unit's (new) cgroup. */
function refreshInside(path: string, args: readonly string[], env: NodeJS.ProcessEnv) {
  const script = `echo $$ > '${join(cgroupDir(path), 'cgroup.procs')}' && exec "$@"`;
  const r = spawnSync('sh', ['-c', script, 'sh', process.execPath, MESHCTL, 'units', 'refresh', ...args], {
    encoding: 'utf8',
    env,
    timeout: 120_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Lab {
  readonly host: string;
  readonly peer4: string;
  readonly stateDir: string;
  readonly scope: string[];
}

async function createLab(tag: string, subnet: number): Promise<Lab> {
  const host = `cu-${tag}h`;
  const peer = `cu-${tag}p`;
  track(host, peer);
  const addrs = createVethPair(host, peer, subnet);
  spawnSync('ip', ['-n', host, 'route', 'add', 'default', 'via', addrs.b4]);
  await startPython(peer, LISTENER, ['peer', '0.0.0.0', '80']);
  await startPython(host, LISTENER, ['proxy', '0.0.0.0', String(OUTBOUND_PORT)]);
  const stateDir = tempStateDir();
  return { host, peer4: addrs.b4, stateDir, scope: ['--netns', host, '--state-dir', stateDir] };
}

function installArgs(lab: Lab, backend: Backend, extra: readonly string[]): string[] {
  return [
    'install',
    ...lab.scope,
    '--without-proxy',
    '--backend',
    backend,
    '--ipv6',
    'off',
    '--proxy-user',
    'nobody',
    ...extra,
  ];
}

/** `meshctl status --json`'s units and verdict. */
function unitsStatus(
  lab: Lab,
  env: NodeJS.ProcessEnv,
): { step: Record<string, string>; exit: number | null; text: string } {
  const r = cli(['status', ...lab.scope, '--json'], env);
  const json = JSON.parse(r.stdout) as { units: { name: string; step: string }[]; inSync: boolean };
  return { step: Object.fromEntries(json.units.map((u) => [u.name, u.step])), exit: r.status, text: r.stdout };
}

/** explain's verdict for a connection of uid 1000 in `unit` to the peer's port 80, from the kernel's rules. */
function explainUnit(lab: Lab, unit: string, env: NodeJS.ProcessEnv): string {
  const r = cli(
    [
      'explain',
      '--out',
      '--proxy-user',
      'nobody',
      '--netns',
      lab.host,
      '--state-dir',
      lab.stateDir,
      '--dst',
      `${lab.peer4}:80`,
      '--uid',
      String(APP_UID),
      '--unit',
      unit,
      '--json',
    ],
    env,
  );
  expect(r.status, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { verdict: string }).verdict;
}

describe.skipIf(!integrationEnabled)(
  'capture by systemd unit: the unit cgroup decides, and restarts stay in step',
  () => {
    beforeAll(() => {
      builtCli();
      if (mount === null) throw new Error('no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)');
      makeCgroup(ROOT_CGROUP);
      fakeBin = mkdtempSync(join(tmpdir(), 'cu-units-bin-'));
      writeFileSync(join(fakeBin, 'systemctl'), FAKE_SYSTEMCTL);
      chmodSync(join(fakeBin, 'systemctl'), 0o755);
    });
    afterAll(() => {
      // Out of our cgroups first (to the hierarchy's root), so they can be removed whatever the processes do.
      for (const pid of pids) {
        try {
          writeFileSync(join(mount!, 'cgroup.procs'), `${pid}\n`);
        } catch {
          // already gone
        }
      }
      for (const child of procs) child.kill('SIGKILL');
      removeCgroups();
      cleanup();
    });

    // The same rules and refresh on both xtables backends: npm test runs iptables-nft, npm run test:soak both.
    it.each(
      (
        [
          ['iptables-nft', 'un', 181],
          ['iptables-legacy', 'ul', 182],
        ] as const
      ).filter(([backend]) => SOAK || backend === 'iptables-nft'),
    )(
      '%s: an excluded unit goes direct, others are captured; a restart goes STALE until units refresh re-applies',
      async (backend, tag, subnet) => {
        const lab = await createLab(tag, subnet);
        const backup = `${ROOT_CGROUP}/${tag}/backup.service`;
        const other = `${ROOT_CGROUP}/${tag}/other.service`;
        makeCgroup(backup);
        makeCgroup(other);
        const env = envFor({ 'backup.service': backup, 'other.service': other });
        const inBackup = await startPython(lab.host, CLIENT, []);
        const inOther = await startPython(lab.host, CLIENT, []);
        moveInto(inBackup.pid, backup);
        moveInto(inOther.pid, other);

        const installed = cli(installArgs(lab, backend, ['--exclude-units', 'backup.service']), env);
        expect(installed.status, installed.stderr).toBe(0);
        expect(await connectFrom(inBackup, lab.peer4, 80)).toBe('peer');
        expect(await connectFrom(inOther, lab.peer4, 80)).toBe('proxy');
        expect(explainUnit(lab, 'backup.service', env)).toBe('bypassed');
        expect(explainUnit(lab, 'other.service', env)).toBe('redirected');
        expect(unitsStatus(lab, env).step).toEqual({ 'backup.service': 'in-step' });

        // A restart without the drop-in: the loaded rule still matches the old cgroup, so the unit is captured.
        recreateCgroup(backup, inBackup.pid);
        moveInto(inBackup.pid, backup);
        expect(await connectFrom(inBackup, lab.peer4, 80)).toBe('proxy');
        // explain agrees with the kernel: the loaded rule matches the old cgroup, not the unit's new one.
        expect(explainUnit(lab, 'backup.service', env)).toBe('redirected');
        const stale = unitsStatus(lab, env);
        expect(stale.step, stale.text).toEqual({ 'backup.service': 'stale' });
        expect(stale.exit).toBe(4);
        expect(cli(['status', ...lab.scope], env).stdout).toMatch(
          /unit backup\.service: STALE — the rules match cgroup id \d+, the unit now runs in id \d+/,
        );

        const refreshed = cli(['units', 'refresh', ...lab.scope], env);
        expect(refreshed.status, refreshed.stderr).toBe(0);
        expect(refreshed.stdout).toMatch(/refreshed in namespace/);
        expect(await connectFrom(inBackup, lab.peer4, 80)).toBe('peer');
        expect(await connectFrom(inOther, lab.peer4, 80)).toBe('proxy');
        expect(explainUnit(lab, 'backup.service', env)).toBe('bypassed');
        expect(unitsStatus(lab, env).step).toEqual({ 'backup.service': 'in-step' });
        // Nothing stale: a second refresh changes nothing.
        expect(cli(['units', 'refresh', ...lab.scope], env).stdout).toMatch(/every unit is in step/);

        // A restart the way systemd does it with the drop-in: the refresh runs inside the new cgroup before the
        // process starts there, so its first connection already goes direct.
        recreateCgroup(backup, inBackup.pid);
        const pre = refreshInside(backup, lab.scope, env);
        expect(pre.status, pre.stderr).toBe(0);
        moveInto(inBackup.pid, backup);
        expect(await connectFrom(inBackup, lab.peer4, 80)).toBe('peer');
        expect(unitsStatus(lab, env).step).toEqual({ 'backup.service': 'in-step' });

        const removed = cli(['uninstall', ...lab.scope], env);
        expect(removed.status, removed.stderr).toBe(0);
        expect(meshctlResidue(lab.host)).toEqual([]);
        expect(await connectFrom(inOther, lab.peer4, 80)).toBe('peer');

        // A reboot: the ledger says installed, the kernel holds none of its rules. A unit that starts before
        // meshctl-capture.service must not load capture ahead of the proxy: its refresh changes nothing, and the
        // capture unit's install then loads the rules with the unit's new cgroup.
        const ledger = join(scopeDir(lab.stateDir, lab.host), 'ledger.json');
        expect(cli(installArgs(lab, backend, ['--exclude-units', 'backup.service']), env).status).toBe(0);
        const kept = readFileSync(ledger);
        expect(cli(['uninstall', ...lab.scope], env).status).toBe(0);
        writeFileSync(ledger, kept, { mode: 0o600 });
        recreateCgroup(backup, inBackup.pid);
        const early = refreshInside(backup, lab.scope, env);
        expect(early.status, early.stderr).toBe(0);
        expect(early.stdout).toMatch(/nothing to refresh .*the kernel holds none of the installed rules/);
        expect(meshctlResidue(lab.host)).toEqual([]);
        const boot = cli(installArgs(lab, backend, ['--exclude-units', 'backup.service']), env);
        expect(boot.status, boot.stderr).toBe(0);
        moveInto(inBackup.pid, backup);
        expect(await connectFrom(inBackup, lab.peer4, 80)).toBe('peer');
        expect(unitsStatus(lab, env).step).toEqual({ 'backup.service': 'in-step' });
        expect(cli(['uninstall', ...lab.scope], env).status).toBe(0);
      },
      180_000,
    );

    it('iptables-nft, includeUnits: a unit not running at install has no rule (nothing captured) until its refresh', async () => {
      const lab = await createLab('ui', 183);
      const app = `${ROOT_CGROUP}/ui/app.service`;
      const other = `${ROOT_CGROUP}/ui/other.service`;
      makeCgroup(other);
      const env = envFor({ 'app.service': app });
      const client = await startPython(lab.host, CLIENT, []);
      const bystander = await startPython(lab.host, CLIENT, []);
      moveInto(bystander.pid, other);

      const installed = cli(installArgs(lab, 'iptables-nft', ['--include-units', 'app.service']), env);
      expect(installed.status, installed.stderr).toBe(0);
      expect(unitsStatus(lab, env).step).toEqual({ 'app.service': 'not-running' });
      expect(await connectFrom(bystander, lab.peer4, 80)).toBe('peer');

      // The unit starts: its cgroup appears; the rules have no rule for it yet (STALE) until the refresh.
      makeCgroup(app);
      expect(unitsStatus(lab, env).step).toEqual({ 'app.service': 'stale' });
      const pre = refreshInside(app, lab.scope, env);
      expect(pre.status, pre.stderr).toBe(0);
      moveInto(client.pid, app);
      expect(await connectFrom(client, lab.peer4, 80)).toBe('proxy');
      expect(await connectFrom(bystander, lab.peer4, 80)).toBe('peer');
      expect(explainUnit(lab, 'app.service', env)).toBe('redirected');
      expect(unitsStatus(lab, env).step).toEqual({ 'app.service': 'in-step' });
      expect(cli(['uninstall', ...lab.scope], env).status).toBe(0);
    }, 180_000);

    it('nftables in a namespace: install refuses a unit list (CONFIG_INVALID, naming why) and changes nothing', async () => {
      const lab = await createLab('uf', 184);
      const backup = `${ROOT_CGROUP}/uf/backup.service`;
      makeCgroup(backup);
      const env = envFor({ 'backup.service': backup });
      const before = spawnSync('ip', ['netns', 'exec', lab.host, 'nft', 'list', 'ruleset'], {
        encoding: 'utf8',
      }).stdout;
      const r = cli(installArgs(lab, 'nftables', ['--exclude-units', 'backup.service']), env);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(
        /CONFIG_INVALID: capture\.outbound\.excludeUnits \(backup\.service\) cannot be honoured by the nftables backend here/,
      );
      expect(r.stderr).toMatch(/ip netns exec/);
      expect(spawnSync('ip', ['netns', 'exec', lab.host, 'nft', 'list', 'ruleset'], { encoding: 'utf8' }).stdout).toBe(
        before,
      );
    }, 60_000);

    it('refuses a hostile unit name with CONFIG_INVALID naming the value', () => {
      const r = cli(['config', 'validate', '--proxy-user', 'nobody', '--exclude-units', 'a b.service;rm'], envFor({}));
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(
        /CONFIG_INVALID: capture\.outbound\.excludeUnits\[0\] \(flag --exclude-units\): "a b\.service;rm"/,
      );
    });
  },
);
