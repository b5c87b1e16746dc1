// The one check every --netns value passes before a command does anything: a plain namespace name, else
// CONFIG_INVALID naming the flag and the value; a well-formed name that `ip netns` does not know is NETNS_NOT_FOUND.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { assertNetnsExists, assertNetnsName } from '../../src/values/netns.js';

function failure(fn: () => void): { code: string; message: string } {
  try {
    fn();
  } catch (error) {
    if (isMeshctlError(error)) return { code: error.code, message: error.message };
    throw error;
  }
  throw new Error('expected a MeshctlError');
}

describe('assertNetnsName', () => {
  it.each(['hc-lab', 'ns1', 'a.b', '.hidden', 'x_y@z+1:2', 'a'.repeat(255)])('accepts %s', (name) => {
    expect(() => assertNetnsName(name)).not.toThrow();
  });

  it.each([
    ['', 'it is empty'],
    ['.', '"." names a directory'],
    ['..', '".." names a directory'],
    ['a/b', 'it contains "/"'],
    ['../../etc', 'it contains "/"'],
    ['a\0b', 'it contains "\\u0000"'],
    ['a b', 'it contains " "'],
    ['a\nb', 'it contains "\\n"'],
    ['-n', 'it starts with "-"'],
    ['a'.repeat(256), 'it is 256 bytes long (at most 255)'],
  ])('refuses %j: %s', (name, why) => {
    const error = failure(() => assertNetnsName(name, '--peer-netns'));
    expect(error.code).toBe('CONFIG_INVALID');
    expect(error.message).toContain(`--peer-netns ${JSON.stringify(name)} is not a network namespace name: ${why}`);
  });
});

describe('assertNetnsExists', () => {
  it('refuses a malformed name before looking under /run/netns', () => {
    expect(failure(() => assertNetnsExists('..')).code).toBe('CONFIG_INVALID');
  });

  it('names a well-formed namespace that does not exist, and the flag it came from', () => {
    const error = failure(() => assertNetnsExists('hc-unit-no-such-ns', '--netns'));
    expect(error).toEqual({
      code: 'NETNS_NOT_FOUND',
      message:
        'network namespace "hc-unit-no-such-ns" (from --netns) does not exist: /run/netns/hc-unit-no-such-ns is missing',
    });
  });
});

describe('a stray file under /run/netns', () => {
  it.skipIf(process.getuid?.() !== 0)('is not taken for a namespace', () => {
    const name = `hs-stray-${process.pid}`;
    mkdirSync('/run/netns', { recursive: true });
    writeFileSync(`/run/netns/${name}`, '');
    try {
      const error = failure(() => assertNetnsExists(name));
      expect(error.code).toBe('NETNS_NOT_FOUND');
      expect(error.message).toBe(
        `network namespace "${name}" (from --netns) does not exist: /run/netns/${name} is a file, not a namespace mount`,
      );
    } finally {
      rmSync(`/run/netns/${name}`, { force: true });
    }
  });
});
