// Durations in the config ("500ms", "10s", "1.5m", "2h", or "off"): parsed to milliseconds, or a reason string so
// the caller names its own field in the error.

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "500ms" | "10s" | "1.5m" | "2h" → milliseconds; "off" → null. */
export function parseDuration(text: string): number | null | string {
  if (text === 'off') return null;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  if (!m) return 'expected a number with a unit (ms, s, m, h) such as "10s", or "off"';
  const ms = Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
  if (ms <= 0) return 'must be greater than zero (use "off" to disable)';
  return ms;
}

/** The longest wait a Node timer honours (2^31-1 ms, about 24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * A duration given on the command line for something meshctl waits on (--confirm-within, --timeout): a positive
 * number of milliseconds no longer than MAX_TIMER_MS, or a reason string naming what is wrong.
 */
export function parseFlagDuration(text: string): number | string {
  const ms = parseDuration(text);
  if (ms === null) return '"off" is not allowed here';
  if (typeof ms === 'string') return ms;
  return ms > MAX_TIMER_MS
    ? `${text} is longer than a timer can wait (at most ${MAX_TIMER_MS} ms, about 24.8 days)`
    : ms;
}
