// Limits the kernel and the runtime put on config values, checked at load so that no value reaches a renderer or a
// timer that would silently misread it: the longest timer Node keeps, and the Linux interface-name rules.
import { parseDuration } from '../values/duration.js';

/** The longest delay Node's timers keep; a longer one fires after 1 ms (with a TimeoutOverflowWarning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Why `ms` is too long for a field bounded by `bound` (a duration text such as "24h", or none: only the timer
 * limit), or null when it is not.
 */
export function durationBoundProblem(ms: number, bound: string | undefined): string | null {
  const limit = bound === undefined ? null : parseDuration(bound);
  if (typeof limit === 'number' && ms > limit) return `must be at most ${bound}`;
  if (ms > MAX_TIMER_MS) return `must be at most ${MAX_TIMER_MS} ms (≈ 24.8 days, the longest timer Node keeps)`;
  return null;
}

/** The kernel's IFNAMSIZ less the terminating NUL. */
const MAX_INTERFACE_NAME_BYTES = 15;

/**
 * Why the kernel (dev_valid_name) would refuse `name` as an interface name, or why the rule renderers could not
 * quote it (a double quote or a backslash); null when it is a valid name.
 */
export function interfaceNameProblem(name: string): string | null {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes === 0) return 'an interface name is not empty';
  if (bytes > MAX_INTERFACE_NAME_BYTES)
    return `an interface name is at most ${MAX_INTERFACE_NAME_BYTES} bytes (this one has ${bytes})`;
  if (name === '.' || name === '..') return 'an interface name is not "." or ".."';
  if (/[\s/:]/.test(name)) return 'an interface name has no whitespace, "/" or ":"';
  if (/["\\]/.test(name) || /\p{Cc}/u.test(name))
    return 'an interface name here has no double quote, backslash or control character';
  return null;
}
