// How bin/meshctl ends on its own arguments: --version prints package.json's version (exit 0), --help exits 0,
// and every usage error, at the top level or in a subcommand, exits 2 (README: "2 usage error").
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { builtCli, meshctl, ROOT } from '../helpers/netfilter-lab.js';

describe('bin/meshctl exit statuses for its own arguments', () => {
  beforeAll(() => builtCli());

  it('prints the version from package.json with --version and -V, exit 0', () => {
    const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const result = meshctl([flag]);
      expect(result).toMatchObject({ status: 0, stdout: `${version}\n`, stderr: '' });
    }
  });

  it('exits 0 for --help, at the top and in a subcommand', () => {
    expect(meshctl(['--help']).status).toBe(0);
    expect(meshctl(['service', 'install', '--help']).status).toBe(0);
  });

  it.each([
    { name: 'an unknown command', args: ['nosuch'], stderr: "error: unknown command 'nosuch'" },
    { name: 'an unknown subcommand', args: ['service', 'nosuch'], stderr: "error: unknown command 'nosuch'" },
    { name: 'an unknown top-level option', args: ['--nosuch'], stderr: "error: unknown option '--nosuch'" },
    {
      name: 'an unknown option of a command',
      args: ['install', '--nosuch'],
      stderr: "error: unknown option '--nosuch'",
    },
    {
      name: 'an unknown option of a nested command',
      args: ['config', 'validate', '--nosuch'],
      stderr: "error: unknown option '--nosuch'",
    },
    {
      name: 'a missing required option',
      args: ['explain', '--in'],
      stderr: "error: required option '--dst <address:port>' not specified",
    },
    {
      name: 'a value outside the choices',
      args: ['render', '--family', 'ipv5'],
      stderr: "error: option '--family <family>' argument 'ipv5' is invalid",
    },
    {
      name: 'an option without its value',
      args: ['status', '--netns'],
      stderr: "error: option '--netns <name>' argument missing",
    },
    { name: 'no command at all', args: [], stderr: 'Usage: meshctl [options] [command]' },
  ])('exits 2 for $name', ({ args, stderr }) => {
    const result = meshctl(args);
    expect(result.stderr).toContain(stderr);
    expect(result.status).toBe(2);
  });

  it('lists in `meshctl proxy --help` only the config flags the proxy reads, and refuses the others', () => {
    const help = meshctl(['proxy', '--help']);
    expect(help.status).toBe(0);
    const flags = [...help.stdout.matchAll(/^\s+(?:-\w, )?(--[\w-]+)/gm)].map((m) => m[1]);
    for (const flag of [
      '--config',
      '--proxy-user',
      '--proxy-group',
      '--proxy-outbound-port',
      '--proxy-inbound-port',
      '--proxy-admin-port',
      '--ipv6',
      '--inbound-mode',
      '--dns',
      '--dns-port',
      '--proxy-workers',
    ]) {
      expect(flags).toContain(flag);
    }
    for (const flag of [
      '--backend',
      '--outbound-exclude-ports',
      '--inbound-include-ports',
      '--exclude-uids',
      '--ssh-ports',
      '--unsafe-capture-ssh',
      '--state-dir',
      '--drop-invalid',
    ]) {
      expect(flags).not.toContain(flag);
    }
    const refused = meshctl(['proxy', '--outbound-exclude-ports', '22']);
    expect(refused.stderr).toContain("error: unknown option '--outbound-exclude-ports'");
    expect(refused.status).toBe(2);
  });

  it('keeps exit 1 for an error of the command itself', () => {
    const result = meshctl(['render', '--config', '/nonexistent/hc-meshctl.yaml']);
    expect(result.stderr).toContain('meshctl: CONFIG_NOT_FOUND: cannot read config file /nonexistent/hc-meshctl.yaml');
    expect(result.status).toBe(1);
  });
});
