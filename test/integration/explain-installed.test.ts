// `meshctl explain` reads the rules in the kernel. Capture is installed with `meshctl install --config F` plus flags
// the file does not have (an extra excluded port 9999, narrower include CIDRs), foreign rules are added around
// meshctl's, and then every flow of the shared table (kernel-flows.ts) is made for real and compared with what
// explain says from the kernel's rules (readExplainRules, the call the CLI makes). The CLI shows where the rules came
// from and how they differ from the config; --plan explains the config instead, which gets :9999 wrong on purpose.
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { explainFlow, type Explanation } from '../../src/capture/explain.js';
import { planCapture } from '../../src/capture/plan.js';
import { loadConfig } from '../../src/config/load.js';
import type { Backend } from '../../src/config/types.js';
import { isMeshctlError } from '../../src/errors.js';
import { isAddonAvailable } from '../../src/native/addon.js';
import { readExplainRules } from '../../src/netfilter/host/live-plan.js';
import { integrationEnabled } from '../helpers/integration.js';
import {
  flowTable,
  hostContext,
  observed,
  owners,
  predicted,
  REMOTE,
  runFlows,
  toExplainFlow,
  WG_ROUTES,
  type LabFlow,
} from '../helpers/kernel-flows.js';
import { createLab, destroyLab, warmChildScripts, type Lab } from '../helpers/kernel-lab.js';
import { builtCli, labEnv, MESHCTL } from '../helpers/netfilter-lab.js';
import { createIsolatedNs, deleteNs, inNs } from '../helpers/netns.js';

const BACKENDS: readonly ('iptables-nft' | 'nftables')[] = ['iptables-nft', 'nftables'];
/** The config file: the dual-stack-block example with a proxy user this host has. */
const FILE = {
  proxy: { user: 'nobody' },
  capture: {
    ipv6: 'block',
    outbound: { excludeCidrs: ['169.254.169.254/32', 'fd00:ec2::254/128', '10.250.0.0/16'], excludePorts: [5432] },
    inbound: { excludePorts: ['9000-9099'] },
  },
  safety: { sshPorts: [22, 2222] },
};
/** What the operator typed on top of the file at install time. */
const INSTALL_FLAGS = [
  '--outbound-exclude-ports',
  '5432,9999',
  '--outbound-include-cidrs',
  '10.0.0.0/8,192.168.0.0/16,fd00::/8',
];

const work = mkdtempSync(join(tmpdir(), 'hx-explain-'));
const labs = new Set<Lab>();

function cli(
  args: readonly string[],
  asUser?: number,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const argv = [process.execPath, MESHCTL, ...args];
  const [file, ...rest] =
    asUser === undefined ? argv : ['setpriv', `--reuid=${asUser}`, `--regid=${asUser}`, '--clear-groups', ...argv];
  const child = spawn(file!, rest, { env: labEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
}

/** Rules someone else added after the install: in meshctl's hook chain before its jump (xtables), or a table of their own. */
function addForeign(lab: Lab, backend: Backend): void {
  if (backend === 'nftables') {
    inNs(
      lab.host,
      'nft',
      ['-f', '-'],
      `table ip hxguard {
  chain out {
    type filter hook output priority -200; policy accept;
    tcp dport 9092 reject with tcp reset
    fib daddr type multicast accept
    tcp dport 3306 accept
  }
}
`,
    );
    return;
  }
  const ipt = (...args: string[]) =>
    execFileSync('ip', ['netns', 'exec', lab.host, 'iptables-nft', '-w', '-t', 'nat', ...args], {
      env: labEnv,
      stdio: 'pipe',
    });
  ipt('-I', 'OUTPUT', '1', '-p', 'tcp', '--dport', '9092', '-j', 'ACCEPT');
  ipt('-I', 'OUTPUT', '1', '-m', 'addrtype', '--dst-type', 'MULTICAST', '-j', 'RETURN');
}

/** A snapshot of the scope's state directory: names, and the ledger's bytes. */
function stateOf(dir: string): string {
  return JSON.stringify([readdirSync(dir).sort(), readFileSync(join(dir, 'ledger.json'), 'utf8')]);
}

describe.skipIf(!integrationEnabled)('explain reads the installed rules from the kernel', () => {
  beforeAll(() => {
    if (!isAddonAvailable())
      throw new Error(
        'the native addon is not built (build/Release/meshctl_native.node): run `npm ci` or `npx node-gyp rebuild`',
      );
    builtCli();
    warmChildScripts();
    // Readable by everyone: one case runs explain as nobody.
    chmodSync(work, 0o755);
    writeFileSync(join(work, 'config.json'), JSON.stringify(FILE), { mode: 0o644 });
  });
  afterAll(() => {
    for (const lab of labs) destroyLab(lab);
    deleteNs('hx-exp-empty');
    rmSync(work, { recursive: true, force: true });
  });

  it.concurrent.each(BACKENDS.map((backend, index) => ({ backend, index })))(
    '$backend: explain agrees with the kernel for every flow, not with the config',
    async ({ backend, index }) => {
      const lab = createLab(`hx-e${index}`, 60 + index, Object.values(REMOTE), WG_ROUTES);
      labs.add(lab);
      const configFile = join(work, 'config.json');
      const stateDir = join(work, `state-${backend}`);
      const scope = ['--netns', lab.host, '--state-dir', stateDir, '--config', configFile];
      try {
        const install = await cli(['install', ...scope, '--backend', backend, '--without-proxy', ...INSTALL_FLAGS]);
        expect(install.status, install.stderr).toBe(0);
        addForeign(lab, backend);
        const ledger = JSON.parse(readFileSync(join(stateDir, 'netns', lab.host, 'ledger.json'), 'utf8')) as {
          installId: string;
        };

        // The current config is the file alone: what explain --plan (and explain before this change) evaluates.
        const config = await loadConfig({ file: configFile });
        const rules = await readExplainRules({ config, netns: lab.host, stateDir });
        expect(rules).toMatchObject({ source: 'kernel', backend, installId: ledger.installId, netns: lab.host });
        expect(rules.differences?.differs).toBe(true);
        expect(rules.differences?.configFields).toEqual(
          expect.arrayContaining([
            { path: 'capture.outbound.includeCidrs', installed: '10.0.0.0/8,192.168.0.0/16,fd00::/8', config: 'all' },
            { path: 'capture.outbound.excludePorts', installed: '5432,9999', config: '5432' },
          ]),
        );
        expect(rules.differences?.drift).toEqual({ kernelOnly: [], recordedOnly: [] });

        const o = owners(config);
        const extra: LabFlow[] = [
          {
            id: 'out v4 remote:9999 as app',
            direction: 'outbound',
            protocol: 'tcp',
            address: lab.peer4,
            port: 9999,
            owner: o.app!,
          },
          {
            id: 'out v6 remote:9999 as app',
            direction: 'outbound',
            protocol: 'tcp',
            address: lab.peer6,
            port: 9999,
            owner: o.app!,
          },
        ];
        const flows = [...flowTable(lab, config), ...extra];
        const results = await runFlows(lab, config, flows, {
          tproxy: rules.plan.routes.length > 0,
          extraPeerTcp: [9999],
        });
        const context = hostContext(lab);
        const configPlan = planCapture(config);
        const rows = flows.map((flow) => {
          const fromKernel = explainFlow(rules.plan, toExplainFlow(lab, flow), context);
          const fromConfig = explainFlow(configPlan, toExplainFlow(lab, flow), context);
          return {
            flow: flow.id,
            explain: predicted(lab, flow, fromKernel),
            kernel: observed(flow, results.get(flow.id)!),
            config: predicted(lab, flow, fromConfig),
            decidedBy: fromKernel.decidedBy?.purpose ?? '-',
          };
        });
        const disagreements = rows.filter((r) => r.explain !== r.kernel);
        expect(
          disagreements,
          `flows where explain (kernel rules) and the kernel disagree (${backend}):\n${JSON.stringify(disagreements, null, 1)}`,
        ).toEqual([]);
        expect(rows.some((r) => r.kernel.startsWith('redirected'))).toBe(true);
        // The config's plan would be wrong here, which is why explain reads the kernel: :9999, the narrowed CIDRs and
        // the foreign rule on :9092 all land elsewhere than the config says.
        const configWrong = rows.filter((r) => r.config !== r.kernel).map((r) => r.flow);
        expect(configWrong).toEqual(
          expect.arrayContaining(['out v4 remote:9999 as app', 'out v4 far:443 as app', 'out v4 remote:9092 as app']),
        );

        const before = stateOf(join(stateDir, 'netns', lab.host));
        const dst9999 = ['--out', '--dst', `${lab.peer4}:9999`, '--uid', '1000', '--gid', '1000'];
        const [json, plan, text, foreign] = await Promise.all([
          cli(['explain', ...scope, ...dst9999, '--json']),
          cli(['explain', ...scope, ...dst9999, '--json', '--plan']),
          cli(['explain', ...scope, ...dst9999]),
          cli(['explain', ...scope, '--out', '--dst', `${lab.peer4}:9092`, '--uid', '1000', '--gid', '1000']),
        ]);
        expect(json.status, json.stderr).toBe(0);
        expect(JSON.parse(json.stdout) as Explanation & Record<string, unknown>).toMatchObject({
          source: 'kernel',
          installId: ledger.installId,
          backend,
          intercepted: false,
          verdict: 'bypassed',
          decidedBy: { purpose: 'skip-port', origin: 'capture.outbound.excludePorts[1]', owner: 'meshctl' },
        });
        expect(JSON.parse(plan.stdout)).toMatchObject({
          source: 'config',
          installId: null,
          backend: null,
          intercepted: true,
          toPort: 15001,
        });
        expect(text.stdout).toContain(
          `rules:   the kernel's (install ${ledger.installId}, backend ${backend}, namespace ${lab.host})`,
        );
        expect(text.stdout).toContain('differs: the installed rules differ from the current config');
        expect(text.stdout).toContain('capture.outbound.excludePorts: installed 5432,9999, config 5432');
        expect(text.stdout).toContain('verdict: NOT INTERCEPTED');
        if (backend === 'nftables') {
          expect(foreign.stdout).toContain(
            'why:     rejected by a foreign rule in mangle ip hxguard/out (tcp dport 9092 reject with tcp reset)',
          );
        } else {
          expect(foreign.stdout).toContain(
            'why:     not captured: a foreign rule in nat OUTPUT (-p tcp -m tcp --dport 9092 -j ACCEPT) accepted it before meshctl:outbound-capture was reached; it goes direct',
          );
          expect(foreign.stdout).toContain(
            'note:    foreign rule in nat OUTPUT could not be evaluated (-m addrtype); assumed not to match: -m addrtype --dst-type MULTICAST -j RETURN',
          );
        }
        // Read-only: no lock file, no recovery, the ledger untouched.
        expect(stateOf(join(stateDir, 'netns', lab.host))).toBe(before);
        expect((await cli(['uninstall', '--netns', lab.host, '--state-dir', stateDir])).status).toBe(0);
      } finally {
        destroyLab(lab);
        labs.delete(lab);
      }
    },
  );

  it('falls back to the config without a ledger, creating nothing, and names a missing namespace', async () => {
    createIsolatedNs('hx-exp-empty');
    const stateDir = join(work, 'never-created');
    const args = [
      '--netns',
      'hx-exp-empty',
      '--state-dir',
      stateDir,
      '--config',
      join(work, 'config.json'),
      '--out',
      '--dst',
      '10.99.0.7:9999',
      '--uid',
      '1000',
      '--json',
    ];
    const result = await cli(['explain', ...args]);
    expect(result.status, result.stderr).toBe(0);
    const e = JSON.parse(result.stdout) as Explanation & Record<string, unknown>;
    expect(e).toMatchObject({ source: 'config', installId: null, backend: null, intercepted: true });
    expect(e.assumptions[0]).toBe(
      `no capture is installed in namespace hx-exp-empty (no ledger at ${stateDir}/netns/hx-exp-empty/ledger.json): explaining the current config's plan instead`,
    );
    expect(existsSync(stateDir)).toBe(false);

    // A user who cannot read root's ledger still gets an answer, from the config, and is told why.
    const rootOnly = join(work, 'root-only');
    mkdirSync(join(rootOnly, 'netns', 'hx-exp-empty'), { recursive: true, mode: 0o700 });
    writeFileSync(join(rootOnly, 'netns', 'hx-exp-empty', 'ledger.json'), '{}');
    const asNobody = await cli(['explain', ...args.map((a) => (a === stateDir ? rootOnly : a))], 65534);
    expect(asNobody.status, asNobody.stderr).toBe(0);
    const n = JSON.parse(asNobody.stdout) as Explanation & Record<string, unknown>;
    expect(n.source).toBe('config');
    expect(n.assumptions[0]).toMatch(
      /^cannot read the ledger .*ledger\.json as uid 65534 \(EACCES\).*: explaining the current config's plan instead; run as root to explain the installed rules$/,
    );

    const missing = await cli(['explain', ...args.map((a) => (a === 'hx-exp-empty' ? 'hx-exp-nope' : a))]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain(
      'meshctl: NETNS_NOT_FOUND: network namespace "hx-exp-nope" (from --netns) does not exist',
    );
    const config = await loadConfig({ file: join(work, 'config.json') });
    const error = await readExplainRules({ config, netns: 'hx-exp-nope', stateDir }).catch((e: unknown) => e);
    expect(isMeshctlError(error, 'NETNS_NOT_FOUND')).toBe(true);
  });
});
