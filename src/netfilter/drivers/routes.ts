// The non-netfilter host changes a plan may need: policy routes for TPROXY (`ip rule fwmark … lookup T` plus
// `local default dev lo table T`) and loopback addresses (`::6` for the proxy's IPv6 inbound passthrough). They are
// added before the rules go live and removed after the rules are gone; only what meshctl added is recorded as ours,
// so an address or route that already existed is never removed.
import type { Family } from '../../values/ip.js';
import type { LoopbackAddress, PolicyRoute } from '../../capture/model.js';
import { cidrText } from '../../values/ip.js';
import { MeshctlError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { NetfilterRunner } from './runner.js';

export interface HostExtras {
  readonly routes: readonly PolicyRoute[];
  readonly loopbackAddresses: readonly LoopbackAddress[];
}

export const NO_EXTRAS: HostExtras = { routes: [], loopbackAddresses: [] };

const flag = (family: Family): string => (family === 'ipv4' ? '-4' : '-6');
const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;
// Tables are compared by number: `ip -N` prints numbers where iproute2 would print a name (253 default, 254 main,
// 255 local, and any table named in /etc/iproute2/rt_tables), so uninstall's check of what is left is honest.

function ruleSelector(route: PolicyRoute): string[] {
  const mark = route.mask >>> 0 === 0xffffffff ? hex(route.mark) : `${hex(route.mark)}/${hex(route.mask)}`;
  return ['fwmark', mark, 'lookup', String(route.table), 'priority', String(route.priority)];
}

function sameRoute(a: PolicyRoute, b: PolicyRoute): boolean {
  return (
    a.family === b.family && a.mark === b.mark && a.mask === b.mask && a.table === b.table && a.priority === b.priority
  );
}

function sameAddress(a: LoopbackAddress, b: LoopbackAddress): boolean {
  return a.family === b.family && cidrText(a.cidr) === cidrText(b.cidr);
}

async function ip(runner: NetfilterRunner, args: string[], what: string): Promise<void> {
  const result = await runner.exec('ip', args);
  if (result.exitCode !== 0) {
    throw new MeshctlError(
      'COMMAND_FAILED',
      `ip ${args.join(' ')} failed while meshctl tried to ${what} (exit ${result.exitCode})`,
      'check the stderr shown above; `meshctl doctor` reports missing privileges and disabled IPv6',
      { details: [`command: ip ${args.join(' ')}`, `stderr:  ${result.stderr.trim()}`] },
    );
  }
}

/** Whether an `ip rule` line looks up `table` (a whole number: `lookup 13` is not `lookup 133`). */
const looksUp = (line: string, table: number): boolean => new RegExp(`\\blookup ${table}(\\s|$)`).test(line);

/**
 * The lines of a table's routes (asked for by number, which the lines do not repeat; not `-N`, which would print
 * the route type `local` as a number). A table that has never held a route does not exist yet: no lines.
 */
async function tableRoutes(runner: NetfilterRunner, family: Family, table: number): Promise<string[]> {
  const args = [flag(family), 'route', 'show', 'table', String(table)];
  const shown = await runner.exec('ip', args);
  if (shown.exitCode !== 0 && /table does not exist/i.test(shown.stderr)) return [];
  if (shown.exitCode !== 0) await ip(runner, args, `read routing table ${table}`);
  return shown.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/** Every `ip rule` of the family, numerically. */
async function ruleLines(runner: NetfilterRunner, family: Family, selector: string[] = []): Promise<string[]> {
  const args = ['-N', flag(family), 'rule', 'show', ...selector];
  const shown = await runner.exec('ip', args);
  if (shown.exitCode !== 0) await ip(runner, args, 'read the policy routing rules');
  return shown.stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

async function routeExists(runner: NetfilterRunner, route: PolicyRoute): Promise<{ rule: boolean; local: boolean }> {
  const mark = route.mask >>> 0 === 0xffffffff ? hex(route.mark) : `${hex(route.mark)}/${hex(route.mask)}`;
  const rules = await ruleLines(runner, route.family, ['priority', String(route.priority)]);
  const rule = rules.some((l) => l.includes(`fwmark ${mark} lookup `) && looksUp(l, route.table));
  const local = (await tableRoutes(runner, route.family, route.table)).some((l) => /^local default dev lo\b/.test(l));
  return { rule, local };
}

/**
 * Refuses (ROUTE_TABLE_IN_USE) a policy route to a table that something else uses in the namespace: an `ip rule`
 * looks it up, or it holds routes. meshctl's `local default` route would join that table and every lookup of it
 * would see it. A table meshctl already owns (`owned`, from the ledger) is not checked. Changes nothing.
 */
export async function refuseTablesInUse(
  runner: NetfilterRunner,
  want: HostExtras,
  owned: HostExtras,
  where: string,
): Promise<void> {
  for (const route of want.routes) {
    if (owned.routes.some((o) => o.family === route.family && o.table === route.table)) continue;
    const rules = (await ruleLines(runner, route.family)).filter((l) => looksUp(l, route.table));
    const routes = await tableRoutes(runner, route.family, route.table);
    if (rules.length === 0 && routes.length === 0) continue;
    throw new MeshctlError(
      'ROUTE_TABLE_IN_USE',
      `capture.inbound.tproxyRouteTable: ${route.family} routing table ${route.table} is already in use in ${where} (${rules.length} ip rule(s) look it up, it holds ${routes.length} route(s)); nothing was changed`,
      `choose a free table (no \`ip rule show\` line looks it up, \`ip route show table N\` is empty) and set capture.inbound.tproxyRouteTable to it`,
      { details: [...rules.map((l) => `ip rule: ${l}`), ...routes.map((l) => `route in table ${route.table}: ${l}`)] },
    );
  }
}

async function addressExists(runner: NetfilterRunner, address: LoopbackAddress): Promise<boolean> {
  const shown = await runner.exec('ip', [flag(address.family), 'addr', 'show', 'dev', 'lo']);
  return shown.stdout.includes(` ${cidrText(address.cidr)} `);
}

async function ipv6Disabled(runner: NetfilterRunner): Promise<boolean> {
  const result = await runner.exec('cat', ['/proc/sys/net/ipv6/conf/lo/disable_ipv6']);
  return result.exitCode !== 0 || result.stdout.trim() === '1';
}

/**
 * Removes what `owned` has and `want` lacks, adds what `want` has and the host lacks; returns what meshctl owns
 * afterwards. Throws COMMAND_FAILED (the caller rolls back).
 */
export async function reconcileExtras(
  runner: NetfilterRunner,
  want: HostExtras,
  owned: HostExtras,
  log: Logger,
): Promise<HostExtras> {
  const rlog = log.child({ component: 'routes' });
  const routes: PolicyRoute[] = [];
  const loopbackAddresses: LoopbackAddress[] = [];
  for (const route of owned.routes) {
    if (want.routes.some((w) => sameRoute(w, route))) continue;
    await removeRoute(runner, route);
    rlog.info({ route }, 'removed policy route');
  }
  for (const address of owned.loopbackAddresses) {
    if (want.loopbackAddresses.some((w) => sameAddress(w, address))) continue;
    await removeAddress(runner, address);
    rlog.info({ address: cidrText(address.cidr) }, 'removed loopback address');
  }
  for (const route of want.routes) {
    const ours = owned.routes.some((o) => sameRoute(o, route));
    const exists = await routeExists(runner, route);
    if (!exists.rule)
      await ip(
        runner,
        [flag(route.family), 'rule', 'add', ...ruleSelector(route)],
        `add the TPROXY policy rule for mark ${hex(route.mark)}`,
      );
    if (!exists.local)
      await ip(
        runner,
        [flag(route.family), 'route', 'add', 'local', 'default', 'dev', 'lo', 'table', String(route.table)],
        `add the TPROXY local route in table ${route.table}`,
      );
    if (ours || !exists.rule || !exists.local) routes.push(route);
  }
  for (const address of want.loopbackAddresses) {
    const ours = owned.loopbackAddresses.some((o) => sameAddress(o, address));
    if (await addressExists(runner, address)) {
      if (ours) loopbackAddresses.push(address);
      continue;
    }
    if (address.family === 'ipv6' && (await ipv6Disabled(runner))) {
      rlog.warn(
        { address: cidrText(address.cidr) },
        'IPv6 is disabled here; not adding the IPv6 inbound passthrough address',
      );
      continue;
    }
    await ip(
      runner,
      [flag(address.family), 'addr', 'add', `${cidrText(address.cidr)}`, 'dev', 'lo'],
      `add the inbound passthrough address ${cidrText(address.cidr)} to lo`,
    );
    loopbackAddresses.push(address);
  }
  return { routes, loopbackAddresses };
}

async function removeRoute(runner: NetfilterRunner, route: PolicyRoute): Promise<void> {
  const exists = await routeExists(runner, route);
  if (exists.rule)
    await ip(
      runner,
      [flag(route.family), 'rule', 'del', ...ruleSelector(route)],
      `remove the TPROXY policy rule for mark ${hex(route.mark)}`,
    );
  if (exists.local)
    await ip(
      runner,
      [flag(route.family), 'route', 'del', 'local', 'default', 'dev', 'lo', 'table', String(route.table)],
      `remove the TPROXY local route in table ${route.table}`,
    );
}

async function removeAddress(runner: NetfilterRunner, address: LoopbackAddress): Promise<void> {
  if (!(await addressExists(runner, address))) return;
  await ip(
    runner,
    [flag(address.family), 'addr', 'del', cidrText(address.cidr), 'dev', 'lo'],
    `remove ${cidrText(address.cidr)} from lo`,
  );
}

const describeRoute = (route: PolicyRoute): string =>
  `${route.family} policy route fwmark ${hex(route.mark)} table ${route.table}`;
const describeAddress = (address: LoopbackAddress): string => `address ${cidrText(address.cidr)} on lo`;

/** What of `extras` is still on the host, even partly (after uninstall: must be nothing). */
export async function remainingExtras(runner: NetfilterRunner, extras: HostExtras): Promise<string[]> {
  const left: string[] = [];
  for (const route of extras.routes) {
    const exists = await routeExists(runner, route);
    if (exists.rule || exists.local) left.push(describeRoute(route));
  }
  for (const address of extras.loopbackAddresses)
    if (await addressExists(runner, address)) left.push(describeAddress(address));
  return left;
}

/** What of `extras` is missing from the host, even partly (drift of an install). */
export async function missingExtras(runner: NetfilterRunner, extras: HostExtras): Promise<string[]> {
  const missing: string[] = [];
  for (const route of extras.routes) {
    const exists = await routeExists(runner, route);
    if (!exists.rule || !exists.local) missing.push(describeRoute(route));
  }
  for (const address of extras.loopbackAddresses)
    if (!(await addressExists(runner, address))) missing.push(describeAddress(address));
  return missing;
}
