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
