// The parsers of the field table (./fields.ts): each turns one schema-checked raw value (from the file, a flag or the
// schema's default) into its typed value, renders it back in the form the file accepts (`meshctl config validate`),
// and says how a command-line flag spells it. A value the schema should have refused is a bug, not a user error.
import type { UserDb } from './host-facts.js';
import type { Cidr } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import type { CidrSelection, PortSelection } from './types.js';
import { cidrText, parseCidr } from '../values/ip.js';
import { parseDuration } from '../values/duration.js';
import { parsePortRange } from '../values/ports.js';
import { durationBoundProblem, MAX_TIMER_MS } from './limits.js';
import { schemaNodeAt } from './schema.js';
import { systemUnitCgroup, type UnitCgroupResolver } from './unit-cgroups.js';
import type { SystemdUnit } from './types.js';
import { unitNameProblem } from '../values/systemd-unit.js';

export interface ParseContext {
  /** The field's dotted path, for problems. */
  readonly path: string;
  readonly userDb: UserDb;
  /** Records a problem with the value (the load fails after every field and check has run). */
  problem(path: string, message: string): void;
  /** Where a systemd unit's cgroup is (default: ask systemctl, ./unit-cgroups.ts). */
  readonly unitCgroup?: UnitCgroupResolver;
}

/**
 * How a flag's text becomes a raw value: a number when it is one, a comma list, a switch, the text, or the text
 * with "-" for null (`nullable`).
 */
export type FlagKind = 'port' | 'id' | 'list' | 'true' | 'string' | 'nullable';

export interface Parser<T> {
  readonly flag: FlagKind;
  /** The allowed values of an enum (the flag offers them as choices). */
  readonly choices?: readonly string[];
  parse(raw: unknown, context: ParseContext): T;
  /** The value as the file writes it; `names` (when given) turns ids back into user and group names. */
  render(value: T, names: UserDb | null): unknown;
}

/** Thrown when a value the schema should have refused reaches a parser: a schema/parser mismatch, not user input. */
function unexpected(context: ParseContext, raw: unknown, what: string): never {
  throw new Error(`${context.path}: the schema let through ${JSON.stringify(raw)}, which is not ${what}`);
}

const list = (raw: unknown, context: ParseContext): readonly unknown[] =>
  Array.isArray(raw) ? raw : unexpected(context, raw, 'a list');

export const number: Parser<number> = {
  flag: 'port',
  parse: (raw, context) => (typeof raw === 'number' ? raw : unexpected(context, raw, 'a number')),
  render: (value) => value,
};

export const port: Parser<number> = number;

export const boolean: Parser<boolean> = {
  flag: 'true',
  parse: (raw, context) => (typeof raw === 'boolean' ? raw : unexpected(context, raw, 'a boolean')),
  render: (value) => value,
};

export const text: Parser<string> = {
  flag: 'string',
  parse: (raw, context) => (typeof raw === 'string' ? raw : unexpected(context, raw, 'a string')),
  render: (value) => value,
};

export const textOrNull: Parser<string | null> = {
  flag: 'nullable',
  parse: (raw, context) =>
    raw === null || typeof raw === 'string' ? raw : unexpected(context, raw, 'a string or null'),
  render: (value) => value,
};

export const texts: Parser<readonly string[]> = {
  flag: 'list',
  parse: (raw, context) => list(raw, context).map((item) => text.parse(item, context)),
  render: (value) => [...value],
};

/** One of `values`, which the schema's `enum` of the field must equal (test/unit/config-fields.test.ts). */
export function oneOf<T extends string>(values: readonly T[]): Parser<T> {
  return {
    flag: 'string',
    choices: values,
    parse: (raw, context) => values.find((v) => v === raw) ?? unexpected(context, raw, `one of ${values.join(', ')}`),
    render: (value) => value,
  };
}

export const workers: Parser<number | 'auto'> = {
  flag: 'port',
  parse: (raw, context) =>
    raw === 'auto' || typeof raw === 'number' ? raw : unexpected(context, raw, '"auto" or a number'),
  render: (value) => value,
};

function portRange(item: unknown, context: ParseContext): PortRange {
  if (typeof item === 'number') return { from: item, to: item };
  const range = parsePortRange(String(item));
  return typeof range === 'string' ? unexpected(context, item, 'a port range') : range;
}

/** A port as the file writes it: 8080, or "8000-8100" for a range. */
export const portRaw = (range: PortRange): number | string =>
  range.from === range.to ? range.from : `${range.from}-${range.to}`;

export const ports: Parser<readonly PortRange[]> = {
  flag: 'list',
  parse: (raw, context) => list(raw, context).map((item) => portRange(item, context)),
  render: (value) => value.map(portRaw),
};

export const portNumbers: Parser<readonly number[]> = {
  flag: 'list',
  parse: (raw, context) => list(raw, context).map((item) => number.parse(item, context)),
  render: (value) => [...value],
};

/** "*" (every one) or a list: `all` or the parsed list. */
function selection<T>(items: Parser<readonly T[]>): Parser<'all' | readonly T[]> {
  return {
    flag: 'list',
    parse: (raw, context) => (raw === '*' ? 'all' : items.parse(raw, context)),
    render: (value, names) => (value === 'all' ? '*' : items.render(value, names)),
  };
}

export const portSelection: Parser<PortSelection> = selection(ports);

export const cidrs: Parser<readonly Cidr[]> = {
  flag: 'list',
  parse: (raw, context) =>
    list(raw, context).map((item) => {
      const cidr = parseCidr(String(item));
      return typeof cidr === 'string' ? unexpected(context, item, 'a CIDR') : cidr;
    }),
  render: (value) => value.map(cidrText),
};

export const cidrSelection: Parser<CidrSelection> = selection(cidrs);

const UNIT_MS: readonly [string, number][] = [
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
];

/** Milliseconds as the shortest exact duration text: 10000 → "10s", 1500 → "1500ms", null → "off". */
export function durationText(ms: number | null): string {
  if (ms === null) return 'off';
  const [unit, size] = UNIT_MS.find(([, size]) => ms % size === 0) ?? ['ms', 1];
  return `${ms / size}${unit}`;
}

/** Milliseconds, null for "off"; longer than the field's `maxDuration` (or a timer can wait) is a problem. */
function parseMs(raw: unknown, context: ParseContext): number | null {
  const ms = parseDuration(String(raw));
  if (typeof ms === 'string') return unexpected(context, raw, 'a duration');
  if (ms === null) return null;
  const bound = schemaNodeAt(context.path)?.maxDuration;
  const tooLong = durationBoundProblem(ms, typeof bound === 'string' ? bound : undefined);
  if (tooLong === null) return ms;
  context.problem(context.path, `${JSON.stringify(raw)} is too long: ${tooLong}`);
  return MAX_TIMER_MS;
}

/** A duration in milliseconds; "off" is a problem here (the field needs a bound). */
export const duration: Parser<number> = {
  flag: 'string',
  parse: (raw, context) => {
    const ms = parseMs(raw, context);
    if (ms !== null) return ms;
    context.problem(context.path, '"off" is not allowed here; give a duration such as "30s"');
    return 0;
  },
  render: durationText,
};

/** A duration in milliseconds, or null for "off". */
export const durationOrOff: Parser<number | null> = { flag: 'string', parse: parseMs, render: durationText };

type IdKind = 'user' | 'group';

function lookupId(kind: IdKind, db: UserDb, ref: string | number): number | null {
  if (kind === 'user') return db.user(ref)?.uid ?? null;
  return db.group(ref)?.gid ?? null;
}

/** The id's name when the database has one that leads back to the same id; else the number. */
export function idName(kind: IdKind, id: number, names: UserDb | null): string | number {
  const name = names === null ? undefined : kind === 'user' ? names.user(id)?.name : names.group(id)?.name;
  return name !== undefined && names !== null && lookupId(kind, names, name) === id ? name : id;
}

/** Users or groups by name or numeric id, resolved to ids; a name the database lacks is a problem. */
function ids(kind: IdKind): Parser<readonly number[]> {
  return {
    flag: 'list',
    parse: (raw, context) =>
      list(raw, context).flatMap((ref, i) => {
        if (typeof ref === 'number') return [ref];
        const id =
          typeof ref === 'string' ? lookupId(kind, context.userDb, ref) : unexpected(context, ref, 'a name or id');
        if (id !== null) return [id];
        const database = kind === 'user' ? 'passwd' : 'group';
        context.problem(
          `${context.path}[${i}]`,
          `${kind} "${String(ref)}" does not exist in the ${database} database; use a numeric id or create it`,
        );
        return [];
      }),
    render: (value, names) => value.map((id) => idName(kind, id, names)),
  };
}

export const userIds: Parser<readonly number[]> = ids('user');
export const groupIds: Parser<readonly number[]> = ids('group');
export const groupSelection: Parser<'all' | readonly number[]> = selection(groupIds);

/**
 * systemd units by name, each resolved to its cgroup v2 path on the live host. A name outside the unit name grammar
 * (or of a unit that owns no cgroup) and a unit systemd cannot run are problems naming the value.
 */
export const units: Parser<readonly SystemdUnit[]> = {
  flag: 'list',
  parse: (raw, context) =>
    list(raw, context).flatMap((item, i) => {
      const name = typeof item === 'string' ? item : unexpected(context, item, 'a unit name');
      const problem = unitNameProblem(name);
      if (problem !== null) {
        context.problem(`${context.path}[${i}]`, `${JSON.stringify(name)} ${problem}`);
        return [];
      }
      const found = (context.unitCgroup ?? systemUnitCgroup)(name);
      if ('problem' in found) {
        context.problem(`${context.path}[${i}]`, found.problem);
        return [];
      }
      return [{ name, cgroup: found.cgroup }];
    }),
  render: (value) => value.map((unit) => unit.name),
};

export const unitSelection: Parser<'all' | readonly SystemdUnit[]> = selection(units);

/** A user or group as written (name or id); resolved by the step that needs it (the proxy user). */
export const idRef: Parser<string | number> = {
  flag: 'id',
  parse: (raw, context) =>
    typeof raw === 'string' || typeof raw === 'number' ? raw : unexpected(context, raw, 'a name or id'),
  render: (value) => value,
};

/** A field with no default whose absence means something (detected SSH ports, the user's own group). */
export function optional<T>(parser: Parser<T>): Parser<T | undefined> {
  return {
    flag: parser.flag,
    parse: (raw, context) => (raw === undefined ? undefined : parser.parse(raw, context)),
    render: (value, names) => (value === undefined ? undefined : parser.render(value, names)),
  };
}
