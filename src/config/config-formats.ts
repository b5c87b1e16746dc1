// The custom formats and the `maxDuration` keyword of the config schema: the checks ajv's generated validator
// (./config-validator.js, built from the schema by scripts/generate-config-validator.mjs) calls at run time.
import { checkSrvName, parseHostPort, parseResolverServer, parseServiceAddress } from '../values/addresses.js';
import { checkHttpUrl } from '../values/http-url.js';
import { parseDuration } from '../values/duration.js';
import { parseCidr } from '../values/ip.js';
import { parsePortRange } from '../values/ports.js';
import { durationBoundProblem, interfaceNameProblem } from './limits.js';

/** Why a duration text is refused anywhere in the config (not one, or longer than a timer can wait), or null. */
export function durationProblem(text: string): string | null {
  const ms = parseDuration(text);
  if (typeof ms === 'string') return ms;
  return ms === null ? null : durationBoundProblem(ms, undefined);
}

/** A format of the schema (`"format": "cidr"`): the strings it accepts. */
export interface ConfigFormat {
  readonly type: 'string';
  readonly validate: (text: string) => boolean;
}

/** Every format the schema names, by name. */
export const CONFIG_FORMATS: Readonly<Record<string, ConfigFormat>> = {
  cidr: { type: 'string', validate: (s) => typeof parseCidr(s) !== 'string' },
  'port-range': { type: 'string', validate: (s) => typeof parsePortRange(s) !== 'string' },
  duration: { type: 'string', validate: (s) => durationProblem(s) === null },
  'interface-name': { type: 'string', validate: (s) => interfaceNameProblem(s) === null },
  'service-address': { type: 'string', validate: (s) => typeof parseServiceAddress(s) !== 'string' },
  'endpoint-address': { type: 'string', validate: (s) => typeof parseHostPort(s) !== 'string' },
  'dns-name': { type: 'string', validate: (s) => checkSrvName(s) === null },
  'resolver-server': { type: 'string', validate: (s) => typeof parseResolverServer(s) !== 'string' },
  'http-url': { type: 'string', validate: (s) => checkHttpUrl(s) === null },
};

/** `maxDuration: "24h"` bounds a duration field ("off", or a value that is no duration, is not bounded by it). */
export function withinMaxDuration(bound: string, data: unknown): boolean {
  if (typeof data !== 'string') return true;
  const ms = parseDuration(data);
  return typeof ms !== 'number' || durationBoundProblem(ms, bound) === null;
}
