// The JSON Schema (rules/meshctl.schema.json, the single source of truth), its validator (ajv's standalone code,
// generated from the schema at build time: no ajv compiler runs when meshctl starts), and the translation of ajv
// errors into messages that name the path, the value and the source.
import { readFileSync } from 'node:fs';
import type { ErrorObject } from 'ajv';
import { parseCidr } from '../values/ip.js';
import { checkSrvName, parseHostPort, parseResolverServer, parseServiceAddress } from '../values/addresses.js';
import { checkHttpUrl } from '../values/http-url.js';
import { parseDuration } from '../values/duration.js';
import { parsePortRange } from '../values/ports.js';
import { durationProblem } from './config-formats.js';
import { validate } from './config-validator.js';
import { durationBoundProblem, interfaceNameProblem } from './limits.js';

const schemaUrl = new URL('../../rules/meshctl.schema.json', import.meta.url);
export const configSchema: Record<string, unknown> = JSON.parse(readFileSync(schemaUrl, 'utf8'));

/** One object of the schema (a property, a definition). */
export type SchemaNode = Readonly<Record<string, unknown>>;

function isNode(value: unknown): value is SchemaNode {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The node of a dotted path through `properties` (`proxy.accessLog.path`), from the root or from `from`. */
export function schemaNodeAt(path: string, from: SchemaNode = configSchema): SchemaNode | null {
  let node: SchemaNode | null = from;
  for (const key of path.split('.')) {
    const next: unknown = node !== null && isNode(node.properties) ? node.properties[key] : undefined;
    node = isNode(next) ? next : null;
  }
  return node;
}

/** A named entry of the schema's `definitions` (`service`, `tokenBucket`). */
export function schemaDefinition(name: string): SchemaNode {
  const found: unknown = isNode(configSchema.definitions) ? configSchema.definitions[name] : undefined;
  if (!isNode(found)) throw new Error(`rules/meshctl.schema.json has no definition "${name}"`);
  return found;
}

/**
 * The `default` keyword of a field (a copy, so nobody changes the schema through it): the one place a default is
 * written. Undefined when the field has none (its absence means something: detected SSH ports, the user's group).
 */
export function schemaDefault(path: string, from: SchemaNode = configSchema): unknown {
  const node = schemaNodeAt(path, from);
  return node !== null && 'default' in node ? structuredClone(node.default) : undefined;
}

/** The dotted paths of the leaves under `properties`: every field a config file can set (lists count as one). */
export function schemaLeaves(from: SchemaNode = configSchema, prefix = ''): string[] {
  const props = isNode(from.properties) ? from.properties : {};
  return Object.entries(props).flatMap(([key, node]) => {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    return isNode(node) && isNode(node.properties) ? schemaLeaves(node, path) : [path];
  });
}

/** `/capture/outbound/excludeCidrs/2` → `capture.outbound.excludeCidrs[2]`. */
export function jsonPointerToPath(pointer: string, extra?: string): string {
  const parts = pointer
    .split('/')
    .slice(1)
    .map((p) => shownKey(p.replace(/~1/g, '/').replace(/~0/g, '~')));
  if (extra !== undefined) parts.push(shownKey(extra));
  let out = '';
  for (const part of parts) out += /^\d+$/.test(part) ? `[${part}]` : out === '' ? part : `.${part}`;
  return out === '' ? '(top level)' : out;
}

/**
 * A key as error messages show it: config keys are short identifiers, so anything else (a line of /etc/shadow
 * given to --config by mistake, say) is described, never echoed.
 */
export function shownKey(key: string): string {
  return /^[A-Za-z0-9_-]{1,64}$/.test(key)
    ? key
    : `(a key of ${[...key].length} characters that is no config key, not shown)`;
}

function show(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length]![b.length]!;
}

/** Why an empty list is refused at `path`: the lists whose emptiness would silently undo what they are for. */
function emptyListMessage(path: string): string {
  if (path === 'safety.sshPorts') {
    return 'is empty: an empty list would leave every SSH port capturable; omit safety.sshPorts (and --ssh-ports) to use the ports sshd listens on, or list the SSH ports';
  }
  const section = path.slice(0, path.lastIndexOf('.'));
  if (/^capture\.(inbound\.includePorts|outbound\.(includeCidrs|includePorts|includeGids)|dns\.servers)$/.test(path)) {
    return `is empty: an empty include list would capture nothing; give "*" for all, or set ${section}.enabled: false to turn this capture off`;
  }
  return 'must not be empty';
}

/** Whether `key` is one of `known` or a near miss of one (edit distance at most 2, case ignored). */
export function isNearKey(key: string, known: readonly string[]): boolean {
  return key.length <= 64 && known.some((k) => editDistance(k.toLowerCase(), key.toLowerCase()) <= 2);
}

function formatMessage(error: ErrorObject, path: string): string {
  const value = error.data;
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = (error.params as { additionalProperty: string }).additionalProperty;
      if (shownKey(key) !== key)
        return `unknown key ${shownKey(key)}; allowed: ${Object.keys(((error.parentSchema as { properties?: object }).properties ?? {}) as object).join(', ')}`;
      const known = Object.keys(((error.parentSchema as { properties?: object }).properties ?? {}) as object);
      const near = known.filter((k) => editDistance(k.toLowerCase(), key.toLowerCase()) <= 2);
      return `unknown key "${key}"${near.length > 0 ? ` (did you mean "${near[0]}"?)` : ''}; allowed: ${known.join(', ')}`;
    }
    case 'format': {
      const format = (error.params as { format: string }).format;
      const text = String(value);
      if (format === 'cidr') return `${show(value)} is not a CIDR (${parseCidr(text) as string})`;
      if (format === 'port-range') return `${show(value)} is not a port range (${parsePortRange(text) as string})`;
      if (format === 'service-address')
        return `${show(value)} is not a service address (${parseServiceAddress(text) as string})`;
      if (format === 'endpoint-address') return `${show(value)} is not an endpoint (${parseHostPort(text) as string})`;
      if (format === 'dns-name') return checkSrvName(text)!;
      if (format === 'resolver-server')
        return `${show(value)} is not a DNS server (${parseResolverServer(text) as string})`;
      if (format === 'http-url') return checkHttpUrl(text)!;
      if (format === 'interface-name')
        return `${show(value)} is not an interface name (${interfaceNameProblem(text)!})`;
      return typeof parseDuration(text) === 'number'
        ? `${show(value)} is too long: ${durationProblem(text)!}`
        : `${show(value)} is not a duration (${durationProblem(text)!})`;
    }
    case 'enum':
      return `must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.map(show).join(', ')}; got ${show(value)}`;
    case 'oneOf':
    case 'const':
    case 'type': {
      const description = (error.parentSchema as { description?: string }).description;
      const expected =
        error.keyword === 'type'
          ? `must be ${(error.params as { type: string }).type}`
          : description
            ? `must be ${description.replace(/\.$/, '')}`
            : (error.message ?? 'is invalid');
      return `${expected}; got ${show(value)}`;
    }
    case 'minItems':
      return (error.params as { limit: number }).limit === 1
        ? emptyListMessage(path)
        : `${error.message ?? 'too few items'}, got ${show(value)}`;
    case 'maxDuration':
      return `${show(value)} is too long: ${durationBoundProblem(parseDuration(String(value)) as number, String(error.schema))}`;
    case 'not': {
      const description = ((error.schema ?? {}) as { description?: string }).description;
      return description
        ? `${show(value)} is ${description}; choose another`
        : `${error.message ?? 'is invalid'}, got ${show(value)}`;
    }
    case 'minimum':
    case 'maximum':
      return `${error.message ?? 'out of range'}, got ${show(value)}`;
    case 'pattern':
      return `${show(value)} is not allowed here (must match ${(error.params as { pattern: string }).pattern})`;
    case 'uniqueItems':
      return `has a duplicate: items ${(error.params as { j: number; i: number }).j} and ${(error.params as { i: number }).i} are equal`;
    default:
      return `${error.message ?? 'is invalid'}, got ${show(value)}`;
  }
}

const PRIORITY: Record<string, number> = {
  additionalProperties: 0,
  maxDuration: 0.5,
  format: 1,
  not: 2,
  minimum: 2,
  maximum: 2,
  pattern: 2,
  minLength: 2,
  minItems: 2,
  uniqueItems: 2,
  enum: 3,
  type: 4,
  const: 5,
  oneOf: 6,
};

/**
 * Validates raw config against the schema. Returns one problem per offending path, the most specific first:
 * errors from oneOf branches are folded so that `70000` in a port list reports "must be <= 65535", not three
 * branch failures. Each problem is `{ path, message }` with `path` in dotted form.
 */
export function validateSchema(raw: unknown): { path: string; message: string }[] {
  if (validate(raw)) return [];
  const errors = validate.errors ?? [];
  const paths = new Set(errors.map((e) => e.instancePath));
  const deeper = (p: string) => [...paths].some((q) => q !== p && q.startsWith(`${p}/`));
  const byPath = new Map<string, ErrorObject[]>();
  for (const error of errors) {
    if (error.keyword !== 'additionalProperties' && deeper(error.instancePath)) continue;
    const list = byPath.get(error.instancePath) ?? [];
    list.push(error);
    byPath.set(error.instancePath, list);
  }
  const problems: { path: string; message: string }[] = [];
  for (const [pointer, list] of byPath) {
    list.sort((a, b) => (PRIORITY[a.keyword] ?? 9) - (PRIORITY[b.keyword] ?? 9));
    const oneOf = list.find((e) => e.keyword === 'oneOf');
    // A type/const failure inside a oneOf branch says less than the oneOf's own description.
    const best = oneOf && (list[0]!.keyword === 'type' || list[0]!.keyword === 'const') ? oneOf : list[0]!;
    const group =
      best.keyword === 'additionalProperties' ? list.filter((e) => e.keyword === 'additionalProperties') : [best];
    for (const error of group) {
      const extra =
        error.keyword === 'additionalProperties'
          ? (error.params as { additionalProperty: string }).additionalProperty
          : undefined;
      const path = jsonPointerToPath(pointer, extra);
      problems.push({ path, message: formatMessage(error, path) });
    }
  }
  return problems;
}
