// The shape a ledger must have before meshctl acts on it, checked with ajv like the config: a ledger edited by
// hand or truncated to `null` is LEDGER_CORRUPT naming what is wrong, never a TypeError deep inside uninstall.
// It requires what the code reads (and allows fields it does not know, so a newer meshctl's ledger still loads).
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';

const family = { enum: ['ipv4', 'ipv6'] };
const table = { enum: ['raw', 'mangle', 'nat', 'filter'] };
const text = { type: 'string' };
const nullableText = { type: ['string', 'null'] };
const cidr = {
  type: 'object',
  required: ['family', 'address', 'prefix'],
  properties: { family, address: text, prefix: { type: 'integer', minimum: 0, maximum: 128 } },
};

const rule = {
  type: 'object',
  required: ['table', 'chain', 'matches', 'target', 'purpose', 'origin'],
  properties: {
    table,
    chain: text,
    matches: { type: 'array', items: { type: 'object', required: ['kind'], properties: { kind: text } } },
    target: { type: 'object', required: ['kind'] },
    purpose: text,
    origin: text,
  },
};
const plan = {
  type: 'object',
  required: ['families', 'routes', 'loopbackAddresses'],
  properties: {
    families: {
      type: 'array',
      items: {
        type: 'object',
        required: ['family', 'chains', 'rules'],
        properties: {
          family,
          chains: {
            type: 'array',
            items: { type: 'object', required: ['table', 'name'], properties: { table, name: text } },
          },
          rules: { type: 'array', items: rule },
        },
      },
    },
    routes: {
      type: 'array',
      items: {
        type: 'object',
        required: ['family', 'mark', 'mask', 'table', 'priority'],
        properties: {
          family,
          mark: { type: 'integer' },
          mask: { type: 'integer' },
          table: { type: 'integer' },
          priority: { type: 'integer' },
        },
      },
    },
    loopbackAddresses: {
      type: 'array',
      items: { type: 'object', required: ['family', 'cidr'], properties: { family, cidr } },
    },
  },
};
const owned = {
  oneOf: [
    {
      type: 'object',
      required: ['kind', 'families'],
      properties: {
        kind: { const: 'xtables' },
        families: {
          type: 'array',
          items: {
            type: 'object',
            required: ['family', 'tables'],
            properties: {
              family,
              tables: {
                type: 'array',
                items: {
                  type: 'object',
                  required: ['table', 'chains', 'rules'],
                  properties: {
                    table,
                    chains: { type: 'array', items: text },
                    rules: {
                      type: 'array',
                      items: { type: 'object', required: ['chain', 'raw'], properties: { chain: text, raw: text } },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
    { type: 'object', required: ['kind', 'listing'], properties: { kind: { const: 'nftables' }, listing: text } },
  ],
};
const snapshot = {
  oneOf: [
    {
      type: 'object',
      required: ['kind', 'families'],
      properties: {
        kind: { const: 'xtables' },
        families: {
          type: 'array',
          items: {
            type: 'object',
            required: ['family', 'tables'],
            properties: {
              family,
              tables: {
                type: 'array',
                items: { type: 'object', required: ['table', 'text'], properties: { table: text, text } },
              },
            },
          },
        },
        nftInventory: { type: ['array', 'null'], items: text },
      },
    },
    { type: 'object', required: ['kind', 'ruleset'], properties: { kind: { const: 'nftables' }, ruleset: text } },
  ],
};
const extras = {
  type: 'object',
  required: ['routes', 'loopbackAddresses'],
  properties: { routes: { type: 'array' }, loopbackAddresses: { type: 'array' } },
};
const config = {
  type: 'object',
  required: ['hash', 'proxy', 'capture', 'safety', 'stateDir'],
  properties: {
    hash: text,
    flags: { type: 'array', items: text },
    proxy: {
      type: 'object',
      required: ['user', 'outboundPort', 'inboundPort', 'adminPort', 'adminAddress'],
      properties: {
        user: {
          type: 'object',
          required: ['uid', 'gid'],
          properties: { uid: { type: 'integer' }, gid: { type: 'integer' } },
        },
        adminAddress: text,
        adminPort: { type: 'integer' },
      },
    },
    capture: { type: 'object', required: ['ipv6', 'inbound', 'outbound', 'dns'] },
    safety: { type: 'object' },
    stateDir: text,
  },
};
const generation = {
  type: 'object',
  required: ['configHash', 'configFile', 'config', 'plan', 'objects', 'extras'],
  properties: {
    configHash: text,
    configFile: nullableText,
    config,
    plan,
    objects: { oneOf: [{ type: 'null' }, owned] },
    extras,
    proxyCheck: { type: 'object', required: ['kind'] },
    units: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name', 'cgroup', 'id'],
        properties: { name: text, cgroup: text, id: { type: ['integer', 'null'] } },
      },
    },
  },
};
const confirm = {
  type: 'object',
  required: ['deadline', 'mechanism', 'unit', 'pid', 'pidStartTime', 'confirmedAt'],
  properties: {
    deadline: text,
    mechanism: { enum: ['systemd-timer', 'detached-process'] },
    unit: nullableText,
    pid: { type: ['integer', 'null'] },
    pidStartTime: nullableText,
    confirmedAt: nullableText,
    revertFailed: {
      oneOf: [
        { type: 'null' },
        {
          type: 'object',
          required: ['at', 'attempts', 'error'],
          properties: { at: text, attempts: { type: 'integer' }, error: text },
        },
      ],
    },
  },
};

export const LEDGER_SCHEMA = {
  type: 'object',
  required: [
    'format',
    'installId',
    'state',
    'operation',
    'backend',
    'netns',
    'toolVersion',
    'createdAt',
    'updatedAt',
    'current',
    'previous',
    'before',
    'snapshot',
    'confirm',
  ],
  properties: {
    format: { type: 'integer' },
    installId: text,
    state: { enum: ['in-progress', 'installed'] },
    operation: { enum: ['install', 'reinstall', 'uninstall'] },
    backend: { enum: ['iptables-legacy', 'iptables-nft', 'nftables'] },
    netns: nullableText,
    toolVersion: text,
    createdAt: text,
    updatedAt: text,
    current: generation,
    previous: { oneOf: [{ type: 'null' }, generation] },
    before: owned,
    snapshot,
    confirm: { oneOf: [{ type: 'null' }, confirm] },
  },
};

let compiled: ValidateFunction | undefined;

/**
 * The ledger schema, compiled on first use: ajv and the compile (~10 MiB of short-lived heap) are loaded only by
 * commands that read a ledger, not by every command that imports the ledger's paths (the proxy, through the CLI).
 */
function validator(): ValidateFunction {
  compiled ??= new (createRequire(import.meta.url)('ajv') as typeof import('ajv')).Ajv({
    allErrors: false,
    strict: false,
  }).compile(LEDGER_SCHEMA);
  return compiled;
}

/** The first problem of a parsed ledger, as `path: message`, or null when it has the shape meshctl needs. */
export function ledgerProblem(value: unknown): string | null {
  const validate = validator();
  if (validate(value)) return null;
  const error = (validate.errors ?? [])[0] as ErrorObject | undefined;
  if (!error) return 'it does not have the shape of a ledger';
  return `${error.instancePath === '' ? '(top level)' : error.instancePath} ${error.message ?? 'is invalid'}`;
}
