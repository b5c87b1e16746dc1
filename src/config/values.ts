// Parsers for the scalar value formats of the config (ports, port ranges, durations). Each returns the value or a
// reason string, so the caller names its own field in the error.
import type { PortRange } from '../capture/model.js';

export function parsePortRange(text: string): PortRange | string {
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(text.trim());
  if (!m) return 'expected a port like 8080 or a range like 8000-8100';
  const from = Number(m[1]);
  const to = m[2] === undefined ? from : Number(m[2]);
  if (from < 1 || from > 65535 || to < 1 || to > 65535) return 'ports must be 1..65535';
  if (to < from) return `range end ${to} is below its start ${from}`;
  return { from, to };
}

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

export function portText(range: PortRange): string {
  return range.from === range.to ? String(range.from) : `${range.from}-${range.to}`;
}

export function portInRanges(port: number, ranges: readonly PortRange[]): boolean {
  return ranges.some((r) => port >= r.from && port <= r.to);
}

export function rangesOverlap(a: PortRange, b: PortRange): boolean {
  return a.from <= b.to && b.from <= a.to;
}
