// The scenario table shared by golden tests, kernel-load tests and explain-vs-kernel tests: every shipped example
// config, resolved against a fixed host (users, groups, SSH ports) so results do not depend on this machine.
import { readFileSync, readdirSync } from 'node:fs';
import { configFromObject } from '../src/config/load.js';
import type { HostFacts } from '../src/config/host-facts.js';
import type { Config } from '../src/config/types.js';

const users = [
  { name: 'root', uid: 0, gid: 0 },
  { name: 'meshproxy', uid: 1337, gid: 1337 },
  { name: 'app', uid: 1000, gid: 1000 },
  { name: 'backup', uid: 34, gid: 34 },
  { name: 'nobody', uid: 65534, gid: 65534 },
];
const groups = [
  { name: 'root', gid: 0 },
  { name: 'meshproxy', gid: 1337 },
  { name: 'app', gid: 1000 },
  { name: 'apps', gid: 2000 },
  { name: 'batch', gid: 2100 },
  { name: 'docker', gid: 999 },
  { name: 'nogroup', gid: 65534 },
];

/** systemd units of the scenarios, in a slice of their own (`Slice=meshtest.slice`); the kernel tests create them. */
export const TEST_UNITS: Readonly<Record<string, string>> = {
  'app.service': '/meshtest.slice/app.service',
  'backup.service': '/meshtest.slice/backup.service',
  'metrics.service': '/meshtest.slice/metrics.service',
};

/** A host with a fixed user database, sshd on port 22 only, and the units of TEST_UNITS. */
export const testHost: HostFacts = {
  userDb: {
    user: (ref) => users.find((u) => u.name === ref || u.uid === ref || String(u.uid) === ref) ?? null,
    group: (ref) => groups.find((g) => g.name === ref || g.gid === ref || String(g.gid) === ref) ?? null,
  },
  detectSshPorts: () => ({ ports: [22], source: 'default' }),
  unitCgroup: (name) => {
    const cgroup = TEST_UNITS[name];
    return cgroup ? { cgroup, source: 'systemd' } : { problem: `unit "${name}" is not known to the test host` };
  },
};

export interface Case {
  readonly name: string;
  readonly file: string;
  readonly raw: unknown;
  readonly config: Config;
}

const dir = new URL('../rules/examples/', import.meta.url);

/** Loads an example (or any raw object) the way the CLI would, against testHost and an empty environment. */
export function loadCase(name: string, raw: unknown, overrides: { host?: HostFacts } = {}): Config {
  return configFromObject(raw, { file: `rules/examples/${name}.json`, host: overrides.host ?? testHost, env: {} });
}

export const cases: readonly Case[] = readdirSync(dir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((file) => {
    const name = file.replace(/\.json$/, '');
    const raw: unknown = JSON.parse(readFileSync(new URL(file, dir), 'utf8'));
    return { name, file: `rules/examples/${file}`, raw, config: loadCase(name, raw) };
  });
