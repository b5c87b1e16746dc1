// The addon's contract without a namespace: argument validation (TS first, C++ as a backstop) and system errors
// shaped like Node's ({ errno, code, syscall }). Redirected sockets are covered in test/integration/proxy-addon.
import { openSync, closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { isAddonAvailable, originalDst } from '../../src/native/addon.js';
import { readOriginalDst } from '../../src/native/original-dst.js';
import { isMeshctlError } from '../../src/errors.js';

const binding = createRequire(import.meta.url)('../../build/Release/meshctl_native.node') as {
  originalDst: (...args: unknown[]) => unknown;
};

describe('originalDst argument validation', () => {
  it.each([
    ['a negative fd', -1, 4],
    ['a fractional fd', 1.5, 4],
    ['an fd given as a string', '3', 4],
    ['an fd above int32', 2 ** 31, 4],
    ['NaN', Number.NaN, 4],
    ['family 5', 3, 5],
    ['family given as a string', 3, 'ipv4'],
  ])('rejects %s with a TypeError before reaching the addon', (_name, fd, family) => {
    expect(() => originalDst(fd as number, family as 4)).toThrow(TypeError);
  });

  it('the addon itself rejects wrong argument types with a TypeError instead of aborting', () => {
    expect(() => binding.originalDst()).toThrow(TypeError);
    expect(() => binding.originalDst('3', 4)).toThrow(TypeError);
    expect(() => binding.originalDst(3, 7)).toThrow(TypeError);
    expect(() => binding.originalDst(-2, 4)).toThrow(TypeError);
  });
});

describe('originalDst system errors', () => {
  it('is built and loadable', () => {
    expect(isAddonAvailable()).toBe(true);
  });

  it('reports getsockopt on a file (not a socket) as ENOTSOCK with errno and syscall', () => {
    const fd = openSync(new URL(import.meta.url), 'r');
    try {
      let caught: unknown;
      try {
        originalDst(fd, 4);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(Error);
      expect(caught).toMatchObject({ errno: constants.errno.ENOTSOCK, code: 'ENOTSOCK', syscall: 'getsockopt' });
      expect(() => originalDst(fd, 6)).toThrow(expect.objectContaining({ code: 'ENOTSOCK' }) as Error);
    } finally {
      closeSync(fd);
    }
  });

  it('reports a closed fd as EBADF', () => {
    const fd = openSync(new URL(import.meta.url), 'r');
    closeSync(fd);
    expect(() => originalDst(fd, 4)).toThrow(
      expect.objectContaining({ code: 'EBADF', syscall: 'getsockopt' }) as Error,
    );
  });

  it('readOriginalDst refuses a socket that has no fd with NO_ORIGINAL_DST', () => {
    const socket = new Socket();
    let caught: unknown;
    try {
      readOriginalDst(socket);
    } catch (error) {
      caught = error;
    }
    expect(isMeshctlError(caught, 'NO_ORIGINAL_DST')).toBe(true);
    socket.destroy();
  });
});
