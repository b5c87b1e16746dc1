// Hostile or malformed values on the command line end in a coded error naming the value, never INTERNAL and
// never a silently wrong answer.
import { describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { builtCli, meshctl } from '../helpers/netfilter-lab.js';

describe.skipIf(!integrationEnabled)('explain refuses ids that are not ids', () => {
  it.each([
    ['--gid', 'abc'],
    ['--gid', '-7'],
    ['--uid', '4294967296'],
    ['--uid', '1e3'],
    ['--uid', ''],
  ])('%s %j', (flag, value) => {
    builtCli();
    const r = meshctl([
      'explain',
      '--out',
      '--dst',
      '192.0.2.1:80',
      flag,
      value,
      '--ssh-ports',
      '22',
      '--proxy-user',
      'nobody',
      '--plan',
    ]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      `meshctl: EXPLAIN_INPUT: ${flag} ${JSON.stringify(value)} is not a ${flag === '--uid' ? 'uid' : 'gid'}`,
    );
    expect(r.stderr).not.toContain('INTERNAL');
  });

  it('takes the largest id the kernel can hold', () => {
    const r = meshctl([
      'explain',
      '--out',
      '--dst',
      '192.0.2.1:80',
      '--uid',
      '4294967294',
      '--gid',
      '0',
      '--ssh-ports',
      '22',
      '--proxy-user',
      'nobody',
      '--plan',
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain('uid 4294967294 gid 0');
  });
});

describe.skipIf(!integrationEnabled)("durations on the command line are bounded like the config's", () => {
  it.each([
    ['install', '--confirm-within', '600h'],
    ['proxy-ready', '--timeout', '25d'],
    ['proxy-ready', '--timeout', '597h'],
  ])('%s %s %s', (command, flag, value) => {
    const r = meshctl([
      command,
      flag,
      value,
      ...(command === 'install'
        ? ['--dry-run', '--proxy-user', 'nobody', '--ssh-ports', '22']
        : ['--admin', '127.0.0.1:1']),
    ]);
    expect(r.status, r.stderr).not.toBe(0);
    expect(r.stderr).toMatch(
      new RegExp(
        `meshctl: CONFIG_INVALID: ${flag} "${value}": (${value} is longer than a timer can wait \\(at most 2147483647 ms|expected a number with a unit)`,
      ),
    );
  });
});
