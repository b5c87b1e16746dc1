// Typed loader for the native addon (build/Release/meshctl_native.node, built by `npm ci` through node-gyp).
// All argument validation happens here, before the C++ side sees a value; the addon's own errors carry
// `errno` and `syscall`, and this module adds Node's usual `code` ('ENOENT', ...) to them.
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MeshctlError } from '../errors.js';

export type AddonFamily = 4 | 6;

export interface OriginalDstResult {
  readonly address: string;
  readonly port: number;
}

/** A failed system call in the addon, shaped like Node's own system errors. */
export interface NativeSystemError extends Error {
  errno: number;
  code: string;
  syscall: string;
}

interface NativeBinding {
  originalDst(fd: number, family: AddonFamily): OriginalDstResult;
}

// Same relative path from src/native (vitest) and dist/native (built CLI): both sit two levels below the root.
const ADDON_PATH = fileURLToPath(new URL('../../build/Release/meshctl_native.node', import.meta.url));

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

let binding: NativeBinding | undefined;

function loadBinding(): NativeBinding {
  if (binding) return binding;
  try {
    binding = createRequire(import.meta.url)(ADDON_PATH) as NativeBinding;
  } catch (error) {
    throw new MeshctlError(
      'ADDON_UNAVAILABLE',
      `the native addon could not be loaded from ${ADDON_PATH}`,
      'run `npm ci` (or `npx node-gyp rebuild`) in the meshctl directory; it needs g++, make and Node headers',
      { cause: error },
    );
  }
  return binding;
}

/** True when the addon file exists and loads; never throws. */
export function isAddonAvailable(): boolean {
  try {
    loadBinding();
    return true;
  } catch {
    return false;
  }
}

/**
 * getsockopt(SO_ORIGINAL_DST) (family 4) or getsockopt(IP6T_SO_ORIGINAL_DST) (family 6) on `fd`.
 * Throws TypeError for bad arguments, MeshctlError ADDON_UNAVAILABLE when the addon is not built, and the
 * system error (`errno`, `code`, `syscall`) from the kernel otherwise (ENOENT: the connection was not NATed).
 */
export function originalDst(fd: number, family: AddonFamily): OriginalDstResult {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new TypeError(`originalDst: fd must be an integer between 0 and 2147483647, got ${String(fd)}`);
  }
  if (family !== 4 && family !== 6) {
    throw new TypeError(`originalDst: family must be 4 or 6, got ${String(family)}`);
  }
  try {
    return loadBinding().originalDst(fd, family);
  } catch (error) {
    if (error instanceof Error && typeof (error as Partial<NativeSystemError>).errno === 'number') {
      const systemError = error as NativeSystemError;
      systemError.code = errnoNames.get(systemError.errno) ?? `E${systemError.errno}`;
    }
    throw error;
  }
}
