// `meshctl demo` as a library call: build the lab, start servers and the proxy, install capture, run the scripted
// connections, collect the access log and /stats, explain one flow, and always tear the lab down.
import { MeshctlError } from '../errors.js';
import { DemoLab, IDENTITIES, PORTS, type LabOptions } from './lab.js';
import {
  formatReport,
  parseAccessLog,
  recordFor,
  stepOk,
  type AccessLine,
  type DemoStep,
  type StatsView,
} from './report.js';

export interface DemoOptions extends LabOptions {
  /** Register the lab's teardown so a signal handler can run it (Ctrl-C). */
  readonly onLab?: (lab: DemoLab) => void;
  /** Things the user should see even with --quiet (leftovers of an interrupted run). Default: progress. */
  readonly notice?: (line: string) => void;
}

export interface DemoResult {
  readonly report: string;
  readonly ok: boolean;
  readonly steps: readonly DemoStep[];
  /** What teardown could not undo; empty when nothing is left behind. */
  readonly leftovers: readonly string[];
}

async function awaitRecord(find: () => AccessLine | null, expectRecord: boolean): Promise<AccessLine | null> {
  // Access-log lines are written asynchronously at close; give them a moment (only when one is expected).
  const deadline = Date.now() + (expectRecord ? 5000 : 500);
  for (;;) {
    const record = find();
    if (record || Date.now() > deadline) return record;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export function requireDemoRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new MeshctlError(
      'NOT_ROOT',
      `meshctl demo needs root (running as uid ${process.getuid?.()}): it creates two network namespaces, starts the proxy in one of them and installs netfilter rules there. Nothing outside those namespaces is changed, and they are deleted at the end`,
      'run it with sudo: `sudo npm run demo` or `sudo meshctl demo`',
    );
  }
}

/** A connection the demo makes, and what it should show. */
type PlannedStep = Omit<DemoStep, 'client' | 'record' | 'tunnel'> & {
  mode: 'http' | 'banner' | 'whoami';
  host: string;
  port: number;
  fromNs: 'app' | 'peer';
  tunneled?: boolean;
};

/**
 * The demo's five connections: HTTP and a server-first banner out, one in, one to an excluded port, and one to the
 * mesh host through the mTLS tunnel.
 */
function demoPlan({ app, peer, mesh }: DemoLab['addresses']): PlannedStep[] {
  return [
    {
      title: 'HTTP out',
      direction: 'outbound',
      from: 'app',
      to: `${peer}:${PORTS.http}`,
      expect: 'intercepted',
      why: 'every outbound TCP connection is captured by default (capture.outbound)',
      mode: 'http',
      host: peer,
      port: PORTS.http,
      fromNs: 'app',
    },
    {
      title: 'banner out',
      direction: 'outbound',
      from: 'app',
      to: `${peer}:${PORTS.banner}`,
      expect: 'intercepted',
      why: 'the server spoke first and its greeting still came through the proxy',
      mode: 'banner',
      host: peer,
      port: PORTS.banner,
      fromNs: 'app',
    },
    {
      title: 'inbound in',
      direction: 'inbound',
      from: 'peer',
      to: `${app}:${PORTS.appService}`,
      expect: 'intercepted',
      why: 'inbound connections to the app host are captured too (capture.inbound); the app saw the proxy, not the peer',
      mode: 'whoami',
      host: app,
      port: PORTS.appService,
      fromNs: 'peer',
    },
    {
      title: 'excluded',
      direction: 'outbound',
      from: 'app',
      to: `${peer}:${PORTS.excluded}`,
      expect: 'direct',
      why: `capture.outbound.excludePorts lists ${PORTS.excluded}, so the kernel let it go direct`,
      mode: 'http',
      host: peer,
      port: PORTS.excluded,
      fromNs: 'app',
    },
    {
      title: 'mTLS out',
      direction: 'outbound',
      from: 'app',
      to: `${mesh}:${PORTS.meshService}`,
      expect: 'intercepted',
      why: `mtls.peers lists ${mesh}/32, a host that runs meshctl, so the connection goes through its tunnel`,
      mode: 'http',
      host: mesh,
      port: PORTS.meshService,
      fromNs: 'app',
      tunneled: true,
    },
  ];
}

/** Makes each planned connection and finds the proxy's record of it (if it was intercepted). */
async function connectAll(lab: DemoLab, plan: readonly PlannedStep[], options: DemoOptions): Promise<DemoStep[]> {
  const steps: DemoStep[] = [];
  for (const p of plan) {
    const client = lab.connect(p.fromNs, p.mode, p.host, p.port);
    const mine = () => recordFor(parseAccessLog(lab.proxyStdout), client.local);
    const record = client.ok ? await awaitRecord(mine, p.expect === 'intercepted') : null;
    const { mode: _m, host: _h, port: _p, fromNs: _f, tunneled, ...rest } = p;
    const from = p.fromNs === 'app' ? lab.addresses.appNs : lab.addresses.peerNs;
    if (!tunneled) {
      steps.push({ ...rest, from, client, record });
    } else {
      // The mesh host's proxy sees the stream inside the tunnel: its inbound record for the carried destination.
      const theirs = () =>
        parseAccessLog(lab.meshProxyStdout).find((r) => r.direction === 'inbound' && r.originalDst === p.to) ?? null;
      const remoteRecord = client.ok ? await awaitRecord(theirs, true) : null;
      steps.push({
        ...rest,
        from,
        client,
        record,
        tunnel: { local: IDENTITIES.app, remote: IDENTITIES.mesh, remoteRecord },
      });
    }
    options.progress(`connection ${steps.length}/${plan.length} done: ${p.title}`);
  }
  return steps;
}

/** Builds the lab, makes the connections and writes the report; the caller tears the lab down. */
async function runInLab(lab: DemoLab, options: DemoOptions): Promise<Omit<DemoResult, 'leftovers'>> {
  lab.build();
  await lab.issueIdentities();
  await lab.startServers();
  await lab.startProxy();
  const installOut = lab.installCapture();
  const backend = /with (iptables-legacy|iptables-nft|nftables)/.exec(installOut)?.[1] ?? 'the detected backend';
  const { peer } = lab.addresses;
  const steps = await connectAll(lab, demoPlan(lab.addresses), options);
  const stats = lab.stats() as StatsView;
  const explainTarget = `${peer}:${PORTS.http}`;
  const report = formatReport({
    addresses: lab.addresses,
    proxyUser: options.proxyUser,
    steps,
    stats,
    explainTarget,
    explain: lab.explain(peer, PORTS.http),
    backendLine: `installed in ${lab.addresses.appNs} with ${backend}: outbound TCP → :15001, inbound TCP → :15006 (except :22 and the proxy's ports)`,
  });
  return { report, ok: steps.every(stepOk), steps };
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  requireDemoRoot();
  const stale = DemoLab.leftovers(options.prefix);
  if (stale.length > 0) {
    (options.notice ?? options.progress)(`removing what an interrupted earlier demo left behind: ${stale.join(', ')}`);
    DemoLab.removeLeftovers(options.prefix);
  }
  const lab = new DemoLab(options);
  options.onLab?.(lab);
  let failure: unknown = null;
  let result: Omit<DemoResult, 'leftovers'> | null = null;
  try {
    result = await runInLab(lab, options);
  } catch (error) {
    failure = error;
  }
  const leftovers = await lab.teardown();
  if (failure) {
    if (leftovers.length > 0 && failure instanceof MeshctlError) {
      throw new MeshctlError(failure.code, failure.message, failure.hint, {
        cause: failure.cause,
        details: [...failure.details, ...leftovers.map((l) => `teardown: ${l}`)],
      });
    }
    throw failure;
  }
  return { ...result!, leftovers };
}
