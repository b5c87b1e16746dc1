// Finds rules no connection can reach: a rule every packet it matches is already decided by an earlier one (a
// shadowed rule, e.g. a loopback include behind the lo RETURN). Pure. It asks explain's interpreter: for each rule it
// builds the first packets of connections that satisfy the rule's own matches, taking every other attribute from the
// values the plan itself names (addresses, ports, owners, interfaces) plus ordinary ones, and walks them; a rule
// that matches in none of those walks is unreachable. The interpreter models a connection's first packet only, so
// rules about later packets (conntrack state other than NEW, `--socket --transparent`, `! --syn`, marks) and the
// chains only they jump to are out of its reach and reported apart, never as shadowed.
import type { CapturePlan, FamilyPlan, Match, Rule } from './model.js';
import { explainFlow, type Flow, type HostContext } from './explain.js';
import { renderRule } from './render-iptables.js';
import { isLoopback, parseIp, type Family } from '../values/ip.js';

export interface RuleReach {
  readonly family: Family;
  readonly rule: Rule;
  /** The rule as iptables-save would print it after `-A CHAIN`. */
  readonly text: string;
}

export interface ShadowReport {
  /** Rules in the first-packet model that no connection reaches. */
  readonly unreachable: readonly RuleReach[];
  /** Rules about later packets, which the first-packet model cannot judge. */
  readonly outOfModel: readonly RuleReach[];
}

const GENERIC: Record<Family, readonly string[]> = {
  ipv4: ['10.77.0.1', '127.0.0.1', '127.0.0.9'],
  ipv6: ['2001:db8:77::1', '::1'],
};
const HOST: HostContext = { localAddresses: [], route: () => null };
/** A rule that finds no witness within this many walks is reported unreachable. */
const MAX_WALKS = 20_000;

/** True for a match the first packet of a new connection can never satisfy in the interpreter's model. */
function laterPacketOnly(m: Match): boolean {
  switch (m.kind) {
    case 'ctState':
      return m.negate ? m.states.includes('NEW') : !m.states.includes('NEW');
    case 'socketTransparent':
      return true;
    case 'tcpSyn':
      return m.negate === true;
    case 'mark':
    case 'connmark':
      return m.negate ? m.value === 0 : m.value !== 0;
    default:
      return false;
  }
}

/** Chains entered only through out-of-model rules are out of the model too. */
function modelRules(plan: FamilyPlan): Set<Rule> {
  const entered = new Set<string>();
  const key = (table: string, chain: string) => `${table} ${chain}`;
  const inModel = new Set<Rule>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const rule of plan.rules) {
      if (inModel.has(rule)) continue;
      const reachableChain = !rule.chain.startsWith('MESHCTL_') || entered.has(key(rule.table, rule.chain));
      if (!reachableChain || rule.matches.some(laterPacketOnly)) continue;
      inModel.add(rule);
      grew = true;
      if (rule.target.kind === 'jump') entered.add(key(rule.table, rule.target.chain));
    }
  }
  return inModel;
}

const isLoopbackText = (address: string): boolean => {
  const ip = parseIp(address);
  return ip !== null && isLoopback(ip);
};
const iface = (name: string): string => (name.endsWith('+') ? `${name.slice(0, -1)}0` : name);
const uniq = <T>(list: readonly T[]): T[] => [...new Set(list)];

/** The values worth trying per attribute, from the plan's own constants first. */
function domains(plan: FamilyPlan) {
  const all = plan.rules.flatMap((r) => r.matches);
  const cidrs = all.flatMap((m) => (m.kind === 'destination' || m.kind === 'source' ? [m.cidr.address] : []));
  const ports = all.flatMap((m) =>
    m.kind === 'destinationPort' || m.kind === 'sourcePort' ? m.ports.flatMap((r) => [r.from, r.to]) : [],
  );
  return {
    protocol: ['tcp', 'udp'] as const,
    address: uniq([...GENERIC[plan.family], ...cidrs]),
    port: uniq([80, ...ports, 40000]),
    owner: uniq([
      1000,
      ...all.flatMap((m) => (m.kind === 'uidOwner' ? [m.uid] : m.kind === 'gidOwner' ? [m.gid] : [])),
    ]),
    iface: uniq([
      'eth0',
      'lo',
      ...all.flatMap((m) => (m.kind === 'inInterface' || m.kind === 'outInterface' ? [iface(m.name)] : [])),
    ]),
    // A process in no listed unit, then each unit's own cgroup.
    cgroup: uniq(['/user.slice/session-1.scope', ...all.flatMap((m) => (m.kind === 'cgroup' ? [m.path] : []))]),
  };
}

/** Candidate values of one attribute for a rule: its positive match's value alone, else the domain. */
function pick<T>(positive: T | undefined, domain: readonly T[]): readonly T[] {
  return positive !== undefined ? [positive] : domain;
}

/**
 * The match lists a packet must satisfy to meet the rule: its own matches, plus those of a rule jumping to its
 * chain (one list per path from a built-in chain, the rule's own matches first).
 */
function constraintSets(rule: Rule, plan: FamilyPlan, inModel: ReadonlySet<Rule>, depth = 0): Match[][] {
  if (!rule.chain.startsWith('MESHCTL_') || depth > 8) return [[...rule.matches]];
  const jumpers = plan.rules.filter(
    (r) => inModel.has(r) && r.table === rule.table && r.target.kind === 'jump' && r.target.chain === rule.chain,
  );
  return jumpers.flatMap((j) => constraintSets(j, plan, inModel, depth + 1).map((set) => [...rule.matches, ...set]));
}

function* flowsFor(matches: readonly Match[], plan: FamilyPlan): Generator<Flow> {
  const d = domains(plan);
  const first = <K extends Match['kind']>(kind: K) =>
    matches.find((m): m is Extract<Match, { kind: K }> => m.kind === kind && !('negate' in m && m.negate));
  const protocols = pick(first('protocol')?.protocol, d.protocol);
  const destinations = pick(first('destination')?.cidr.address, d.address);
  const sources: (string | undefined)[] = [undefined, ...pick(first('source')?.cidr.address, d.address)];
  const dports = pick(first('destinationPort')?.ports[0]!.from, d.port);
  const sports: (number | undefined)[] = [undefined, ...pick(first('sourcePort')?.ports[0]!.from, d.port)];
  const uids = pick(first('uidOwner')?.uid, d.owner);
  const gids = pick(first('gidOwner')?.gid, d.owner);
  const oifs = pick(first('outInterface') ? iface(first('outInterface')!.name) : undefined, d.iface);
  const iifs = pick(first('inInterface') ? iface(first('inInterface')!.name) : undefined, d.iface);
  const cgroups = pick(first('cgroup')?.path, d.cgroup);
  for (const protocol of protocols)
    for (const address of destinations)
      for (const port of dports) {
        for (const src of sources)
          for (const sport of src === undefined ? [undefined] : sports) {
            const source =
              src === undefined ? undefined : { address: src, ...(sport === undefined ? {} : { port: sport }) };
            const base = { protocol, destination: { address, port }, ...(source ? { source } : {}) };
            // Loopback addresses only ever travel over lo: a packet to or from one on another interface does not exist.
            const onLo = isLoopbackText(address) || (src !== undefined && isLoopbackText(src));
            for (const inInterface of iifs)
              if (!onLo || inInterface === 'lo') yield { ...base, direction: 'inbound', inInterface };
            for (const uid of uids)
              for (const gid of gids)
                for (const outInterface of oifs)
                  for (const cgroup of cgroups)
                    if (!onLo || outInterface === 'lo')
                      yield { ...base, direction: 'outbound', uid, gid, outInterface, cgroup };
          }
      }
}

function* chained<T>(parts: readonly (() => Iterable<T>)[]): Generator<T> {
  for (const part of parts) yield* part();
}

/** At most MAX_WALKS flows of one constraint set. */
function* boundedFlows(matches: readonly Match[], plan: FamilyPlan): Generator<Flow> {
  let n = 0;
  for (const flow of flowsFor(matches, plan)) {
    if (++n > MAX_WALKS) return;
    yield flow;
  }
}

function reached(rule: Rule, plan: FamilyPlan, text: string, inModel: ReadonlySet<Rule>): boolean {
  const single: CapturePlan = { families: [plan], routes: [], loopbackAddresses: [] };
  let walks = 0;
  for (const flow of chained(constraintSets(rule, plan, inModel).map((set) => () => boundedFlows(set, plan)))) {
    if (++walks > MAX_WALKS * 4) return false;
    let trace;
    try {
      trace = explainFlow(single, flow, HOST).trace;
    } catch {
      continue; // an address pair of different families
    }
    if (
      trace.some(
        (t) =>
          t.matched &&
          t.table === rule.table &&
          t.chain === rule.chain &&
          t.rule === text &&
          t.purpose === rule.purpose,
      )
    )
      return true;
  }
  return false;
}

/** Every rule of the plan no first packet reaches, and the rules the first-packet model cannot judge. */
export function shadowedRules(plan: CapturePlan): ShadowReport {
  const unreachable: RuleReach[] = [];
  const outOfModel: RuleReach[] = [];
  for (const family of plan.families) {
    const inModel = modelRules(family);
    for (const rule of family.rules) {
      const entry = { family: family.family, rule, text: renderRule(rule, family.family) };
      if (!inModel.has(rule)) outOfModel.push(entry);
      else if (!reached(rule, family, entry.text, inModel)) unreachable.push(entry);
    }
  }
  return { unreachable, outOfModel };
}
