// The flow table shared by the explain-vs-kernel tests: ~85 connections (outbound as different uids/gids to remote,
// loopback and own addresses, excluded and included ports/CIDRs/interfaces, both families; inbound from a peer
// namespace over veth), how explain's verdict reads in the words of an observed landing, where each connection
// really landed, and running them all against a lab with observers standing in for the proxy and the servers.
import type { Explanation, Flow, HostContext } from '../../src/capture/explain.js';
import { cidrContains, formatIp, parseCidr, parseIp } from '../../src/values/ip.js';
import type { Cidr } from '../../src/values/ip.js';
import type { Config } from '../../src/config/types.js';
import type { ClientResult } from './kernel-client.js';
import { runClient, startObserver, type Lab, type Observer } from './kernel-lab.js';
import type { ObservedConnection } from './kernel-observer.js';
import { cgroupProcsFile, ownCgroup } from './unit-cgroups.js';
import { TEST_UNITS } from '../cases.js';

/** Servers on the peer's lo (routed from the host through the peer): inside and outside the examples' CIDR lists. */
export const REMOTE = {
  far4: '203.0.113.10',
  far6: '2001:db8::10',
  metadata4: '169.254.169.254',
  metadata6: 'fd00:ec2::254',
  excluded250: '10.250.0.10',
  excluded96: '10.100.0.10',
  included192: '192.168.1.10',
  excluded192: '192.168.122.10',
  excluded198: '198.51.100.7',
  included198: '198.51.100.20',
  excludedDead: 'fd00:dead::10',
  wg: '192.168.50.10',
} as const;
export const WG_ROUTES = ['192.168.50.0/24'];
export const PEER_TCP = [22, 25, 53, 80, 443, 3306, 5432, 8080, 8500, 9092];
export const HOST_TCP = [22, 80, 111, 2200, 2222, 6010, 8080, 8443, 9005, 9010, 9011, 9050, 9100, 9105];
// No flow in the table is expected to time out (nothing DROPs a new connection), so this only bounds failures.
export const FLOW_TIMEOUT_MS = 3000;

export interface Owner {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** The cgroup v2 path the client runs in (a systemd unit's); default: this process's own. */
  readonly cgroup?: string;
}

export interface LabFlow {
  readonly id: string;
  readonly direction: 'outbound' | 'inbound';
  readonly protocol: 'tcp' | 'udp';
  readonly address: string;
  readonly port: number;
  /** Outbound: the socket owner. Inbound flows come from the peer as root. */
  readonly owner: Owner;
  /** Outbound: the local address to bind. */
  readonly bind?: string;
  /** Inbound: the link the connection arrives on. */
  readonly link?: 'main' | 'wg0';
}

export function owners(config: Config): Record<string, Owner> {
  const { uid, gid } = config.proxy.user;
  return {
    app: { name: 'app', uid: 1000, gid: 1000 },
    root: { name: 'root', uid: 0, gid: 0 },
    proxy: { name: 'proxy', uid, gid },
    proxyGid: { name: 'app-with-proxy-gid', uid: 1000, gid },
    nobody: { name: 'nobody', uid: 65534, gid: 65534 },
    backup: { name: 'backup', uid: 34, gid: 34 },
    dockerGid: { name: 'app-with-docker-gid', uid: 1000, gid: 999 },
    apps: { name: 'app-in-apps', uid: 1000, gid: 2000 },
    batch: { name: 'app-in-batch', uid: 1000, gid: 2100 },
    appUnit: { name: 'app-in-app.service', uid: 1000, gid: 1000, cgroup: TEST_UNITS['app.service']! },
    backupUnit: { name: 'app-in-backup.service', uid: 1000, gid: 1000, cgroup: TEST_UNITS['backup.service']! },
  };
}

function namesUnits(config: Config): boolean {
  const out = config.capture.outbound;
  return out.excludeUnits.length > 0 || out.includeUnits !== 'all';
}

/** The flow table: the same ~80 flows for every example (each example decides differently about them), plus flows
 * from processes inside units where the example names units. */
export function flowTable(lab: Lab, config: Config): LabFlow[] {
  const o = owners(config);
  const flows: LabFlow[] = [];
  const out = (id: string, owner: Owner, address: string, port: number, extra: Partial<LabFlow> = {}) =>
    flows.push({
      id: `out ${id} as ${owner.name}`,
      direction: 'outbound',
      protocol: 'tcp',
      address,
      port,
      owner,
      ...extra,
    });
  const inb = (id: string, address: string, port: number, link: 'main' | 'wg0' = 'main') =>
    flows.push({ id: `in ${id}`, direction: 'inbound', protocol: 'tcp', address, port, owner: o.root!, link });
  for (const f of ['4', '6'] as const) {
    const remote = f === '4' ? lab.peer4 : lab.peer6;
    const own = f === '4' ? lab.host4 : lab.host6;
    const localhost = f === '4' ? '127.0.0.1' : '::1';
    const passthrough =
      f === '4' ? config.proxy.inboundPassthroughSource.ipv4 : config.proxy.inboundPassthroughSource.ipv6;
    const far = f === '4' ? REMOTE.far4 : REMOTE.far6;
    out(`v${f} remote:80`, o.app!, remote, 80);
    out(`v${f} remote:8080`, o.app!, remote, 8080);
    out(`v${f} remote:443`, o.root!, remote, 443);
    out(`v${f} remote:80`, o.proxy!, remote, 80);
    out(`v${f} remote:80`, o.proxyGid!, remote, 80);
    out(`v${f} localhost:8080`, o.app!, localhost, 8080);
    out(`v${f} own-address:8080`, o.app!, own, 8080);
    out(`v${f} own-address:8080`, o.proxy!, own, 8080);
    out(`v${f} own-address:22`, o.proxy!, own, 22);
    out(`v${f} own-address:8080 from ${passthrough}`, o.proxy!, own, 8080, { bind: passthrough });
    out(`v${f} far:443`, o.app!, far, 443);
    out(`v${f} remote:22`, o.app!, remote, 22);
    out(`v${f} remote:53 (dns over tcp)`, o.app!, remote, 53);
    out(`v${f} remote:5432`, o.nobody!, remote, 5432);
    out(`v${f} remote:80`, o.backup!, remote, 80);
    out(`v${f} remote:80`, o.apps!, remote, 80);
    out(`v${f} remote:22`, o.apps!, remote, 22);
    out(`v${f} remote:443`, o.apps!, remote, 443);
    out(`v${f} remote:8500`, o.batch!, remote, 8500);
    // Processes inside the scenarios' units, only where the config names units: their cgroups must exist first
    // (test/helpers/unit-cgroups.ts createTestUnitCgroups).
    if (namesUnits(config)) {
      out(`v${f} remote:80`, o.appUnit!, remote, 80);
      out(`v${f} remote:80`, o.backupUnit!, remote, 80);
    }
    out(`v${f} remote:5432`, o.batch!, remote, 5432);
    for (const port of [8080, 22, config.proxy.inboundPort, 9005, 80, 9050, 2222, 6010, 9100])
      inb(`v${f} own-address:${port}`, own, port);
  }
  out('v4 metadata:80', o.app!, REMOTE.metadata4, 80);
  out('v4 metadata:80', o.root!, REMOTE.metadata4, 80);
  out('v6 metadata:80', o.app!, REMOTE.metadata6, 80);
  out('v4 10.250/16:80', o.app!, REMOTE.excluded250, 80);
  out('v4 10.96/12:80', o.app!, REMOTE.excluded96, 80);
  out('v4 192.168/16:80', o.app!, REMOTE.included192, 80);
  out('v4 192.168.122/24:80', o.app!, REMOTE.excluded192, 80);
  out('v4 198.51.100.7:80', o.app!, REMOTE.excluded198, 80);
  out('v4 198.51.100/24:80', o.app!, REMOTE.included198, 80);
  out('v6 fd00:dead::/32:80', o.app!, REMOTE.excludedDead, 80);
  out('v4 remote:3306', o.app!, lab.peer4, 3306);
  out('v4 remote:9092', o.app!, lab.peer4, 9092);
  out('v4 remote:25', o.app!, lab.peer4, 25);
  out('v4 remote:80', o.dockerGid!, lab.peer4, 80);
  out('v4 via wg0:80', o.app!, REMOTE.wg, 80);
  out('v4 via wg0:80', o.apps!, REMOTE.wg, 80);
  inb('v4 over wg0 own-address:8080', lab.wg!.host4, 8080, 'wg0');
  for (const port of [9105, 111, 2200, 8443, 9010, 9011]) inb(`v4 own-address:${port}`, lab.host4, port);
  const udp = (id: string, owner: Owner, address: string) =>
    flows.push({
      id: `out ${id} (udp) as ${owner.name}`,
      direction: 'outbound',
      protocol: 'udp',
      address,
      port: 53,
      owner,
    });
  udp('v4 remote:53', o.app!, lab.peer4);
  udp('v4 remote:53', o.proxy!, lab.peer4);
  udp('v6 remote:53', o.app!, lab.peer6);
  udp('v6 remote:53', o.proxy!, lab.peer6);
  udp('v4 metadata:53', o.root!, REMOTE.metadata4);
  return flows;
}

const ip = (text: string) => parseIp(text)!;
export const endpoint = (address: string, port: number) => {
  const a = formatIp(ip(address));
  return a.includes(':') ? `[${a}]:${port}` : `${a}:${port}`;
};

export function hostContext(lab: Lab): HostContext {
  const wgNets = WG_ROUTES.map((c) => parseCidr(c) as Cidr);
  return {
    localAddresses: [lab.host4, lab.host6, lab.wg!.host4, '127.0.0.1', '::1', '::6'],
    route: (destination) => {
      const dst = ip(destination);
      if (wgNets.some((n) => cidrContains(n, dst))) return { interface: 'wg0', source: lab.wg!.host4 };
      return { interface: lab.hostIf, source: dst.family === 'ipv4' ? lab.host4 : lab.host6 };
    },
  };
}

export function isHostAddress(lab: Lab, address: string): boolean {
  const a = formatIp(ip(address));
  return [lab.host4, lab.host6, lab.wg!.host4, '127.0.0.1', '::1'].map((x) => formatIp(ip(x))).includes(a);
}

export function toExplainFlow(lab: Lab, flow: LabFlow): Flow {
  const destination = { address: flow.address, port: flow.port };
  if (flow.direction === 'inbound') {
    const v4 = ip(flow.address).family === 'ipv4';
    const source = flow.link === 'wg0' ? lab.wg!.peer4 : v4 ? lab.peer4 : lab.peer6;
    return {
      direction: 'inbound',
      protocol: flow.protocol,
      destination,
      source: { address: source },
      inInterface: flow.link === 'wg0' ? 'wg0' : lab.hostIf,
    };
  }
  return {
    direction: 'outbound',
    protocol: flow.protocol,
    destination,
    uid: flow.owner.uid,
    gid: flow.owner.gid,
    // The client runs in its owner's unit, else in this process's cgroup (children inherit it).
    cgroup: flow.owner.cgroup ?? ownCgroup(),
    ...(flow.bind ? { source: { address: flow.bind } } : {}),
  };
}

/** What the kernel should do according to explain, in the same words `observed` uses. */
export function predicted(lab: Lab, flow: LabFlow, e: Explanation): string {
  const dst = endpoint(flow.address, flow.port);
  switch (e.verdict) {
    case 'redirected':
      return `redirected to :${e.toPort}, original ${dst}`;
    case 'tproxied':
      return `tproxied to :${e.toPort}, original ${dst}`;
    case 'bypassed':
      return `direct to ${isHostAddress(lab, flow.address) ? 'host' : 'peer'} ${dst}`;
    case 'rejected':
      return 'rejected (connection refused)';
    case 'dropped':
      return 'dropped (timeout)';
  }
}

/** Where the connection really landed. */
export function observed(flow: LabFlow, result: ClientResult): string {
  if (result.error) {
    if (result.error === 'ECONNREFUSED') return 'rejected (connection refused)';
    if (result.error === 'TIMEOUT') return 'dropped (timeout)';
    return `error ${result.error}`;
  }
  if (flow.protocol === 'udp') {
    const answer = result.answer as { where: string; listener: number };
    const from = endpoint(result.from!.address.replace(/^::ffff:/, ''), result.from!.port);
    if (answer.where === 'host' && answer.listener !== flow.port)
      return `redirected to :${answer.listener}, original ${from}`;
    return `direct to ${answer.where} ${from}`;
  }
  const c = result.answer as unknown as ObservedConnection;
  const local = endpoint(c.local.address, c.local.port);
  if (c.where === 'peer') return `direct to peer ${local}`;
  // TPROXY leaves the packet's destination alone: the accepted socket's local address is the original destination.
  if (c.transparent && c.local.port !== c.listener) return `tproxied to :${c.listener}, original ${local}`;
  if (c.orig && endpoint(c.orig.address, c.orig.port) !== local)
    return `redirected to :${c.listener}, original ${endpoint(c.orig.address, c.orig.port)}`;
  return `direct to host ${local}`;
}

/**
 * Makes every flow for real: an observer on the host (the proxy's ports, as the proxy's user; TPROXY listeners when
 * `tproxy`) and one on the peer (`extraPeerTcp` added to its ports), one client per socket owner. Returns where
 * each flow landed, by flow id.
 */
export async function runFlows(
  lab: Lab,
  config: Config,
  flows: readonly LabFlow[],
  options: { tproxy: boolean; extraPeerTcp?: readonly number[] },
): Promise<Map<string, ClientResult>> {
  const observers: Observer[] = [];
  try {
    const proxyPorts = [
      config.proxy.outboundPort,
      config.capture.dns.port,
      ...(options.tproxy ? [] : [config.proxy.inboundPort]),
    ];
    observers.push(
      await startObserver(lab.host, {
        where: 'host',
        tcp: [...new Set([...HOST_TCP, ...proxyPorts])],
        udp: [config.capture.dns.port],
        // Per address, so a reply leaves from the address the query was redirected to (127.0.0.1 / ::1) and
        // conntrack maps it back to the original destination, as a real DNS proxy's reply would be.
        udpAddresses: ['127.0.0.1', '::1', lab.host4, lab.host6],
        ...(options.tproxy ? { transparentPort: config.proxy.inboundPort } : {}),
        runAs: { uid: config.proxy.user.uid, gid: config.proxy.user.gid },
      }),
      await startObserver(lab.peer, {
        where: 'peer',
        tcp: [...new Set([...PEER_TCP, ...(options.extraPeerTcp ?? [])])],
        udp: [53],
        udpAddresses: [lab.peer4, lab.peer6, ...Object.values(REMOTE)],
      }),
    );
    const groups = new Map<string, LabFlow[]>();
    for (const flow of flows) {
      const key =
        flow.direction === 'inbound' ? 'peer' : `host ${flow.owner.uid}:${flow.owner.gid}:${flow.owner.cgroup ?? ''}`;
      groups.set(key, [...(groups.get(key) ?? []), flow]);
    }
    const results = new Map<string, ClientResult>();
    await Promise.all(
      [...groups].map(async ([key, group]) => {
        const ns = key === 'peer' ? lab.peer : lab.host;
        const owner: Owner = key === 'peer' ? { name: 'root', uid: 0, gid: 0 } : group[0]!.owner;
        const out = await runClient(ns, {
          uid: owner.uid,
          gid: owner.gid,
          ...(owner.cgroup ? { cgroupProcs: cgroupProcsFile(owner.cgroup) } : {}),
          timeoutMs: FLOW_TIMEOUT_MS,
          flows: group.map((f) => ({
            id: f.id,
            protocol: f.protocol,
            address: f.address,
            port: f.port,
            ...(f.bind ? { localAddress: f.bind } : {}),
          })),
        });
        for (const r of out) results.set(r.id, r);
      }),
    );
    return results;
  } finally {
    for (const o of observers) o.stop();
  }
}
