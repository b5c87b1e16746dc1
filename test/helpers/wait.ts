// Bounded polling for tests: wait for a condition (a file written, a log line, a counter), never for a fixed time,
// and on timeout say what was last seen, so a failure under load reads as "waited 10 s for X, saw Y".
import { inspect } from 'node:util';

export interface WaitOptions {
  /** What to show on timeout instead of the check's last result (e.g. the tail of a log). */
  readonly seen?: () => unknown;
  /** Pause between checks; the default suits in-process state and cheap reads. */
  readonly intervalMs?: number;
}

/**
 * Calls `check` until it returns a truthy value and returns that value. A check that throws (ENOENT before a
 * file exists, ECONNREFUSED before a server listens) counts as "not yet". After `timeoutMs` it throws
 * `timed out after N ms waiting for <what>; last seen: <value, error or options.seen()>`.
 */
export async function waitUntil<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 10_000,
  options: WaitOptions = {},
): Promise<NonNullable<T>> {
  const interval = options.intervalMs ?? 20;
  const deadline = performance.now() + timeoutMs;
  let last: unknown = 'nothing (the check never completed)';
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
      last = value;
    } catch (error) {
      last = error instanceof Error ? `${error.name}: ${error.message}` : error;
    }
    if (performance.now() >= deadline) {
      const shown = options.seen ? safely(options.seen) : last;
      const text = typeof shown === 'string' ? shown : inspect(shown, { depth: 4, breakLength: 120 });
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${text.length > 4000 ? `…${text.slice(-4000)}` : text}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

function safely(seen: () => unknown): unknown {
  try {
    return seen();
  } catch (error) {
    return `(could not read: ${error instanceof Error ? error.message : String(error)})`;
  }
}
