// When the proxy gives memory back (src/proxy/idle-release.ts): once per burst of work, in the first idle window
// after it and no sooner than MIN_RELEASE_GAP_MS after the last release, never while busy; malloc trims between.
import { describe, expect, it } from 'vitest';
import {
  CHECK_MS,
  decideIdleAction,
  IDLE_CPU_MS,
  INITIAL_IDLE_STATE,
  MIN_RELEASE_GAP_MS,
  TRIM_MS,
  type IdleAction,
  type IdleState,
} from '../../src/proxy/idle-release.js';

const BUSY = IDLE_CPU_MS * 40;
const IDLE = IDLE_CPU_MS / 5;

/** The actions for a run of windows of CHECK_MS with these CPU times. */
function actions(cpuMs: readonly number[], start: IdleState = INITIAL_IDLE_STATE): IdleAction[] {
  let state = start;
  return cpuMs.map((cpu) => {
    const decision = decideIdleAction(state, CHECK_MS, cpu);
    state = decision.state;
    return decision.action;
  });
}

describe('idle release', () => {
  const gapWindows = MIN_RELEASE_GAP_MS / CHECK_MS;

  it('releases in the first idle window after start-up, once the minimum gap has passed', () => {
    const seen = actions([BUSY, BUSY, ...Array<number>(gapWindows + 3).fill(IDLE)]);
    expect(seen.indexOf('release')).toBe(gapWindows - 1);
    expect(seen.filter((a) => a === 'release')).toHaveLength(1);
  });

  it('releases again after each later burst, never in a busy window', () => {
    const quiet = Array<number>(gapWindows).fill(IDLE);
    const seen = actions([...quiet, BUSY, BUSY, BUSY, IDLE, IDLE, ...quiet, BUSY, IDLE]);
    expect(seen.filter((a) => a === 'release')).toHaveLength(3);
    const cpu = [...quiet, BUSY, BUSY, BUSY, IDLE, IDLE, ...quiet, BUSY, IDLE];
    seen.forEach((action, i) => {
      if (action === 'release') expect(cpu[i], `window ${i}`).toBe(IDLE);
    });
  });

  it('waits out the minimum gap when bursts come close together', () => {
    const seen = actions([...Array<number>(gapWindows).fill(IDLE), BUSY, IDLE, BUSY, IDLE, IDLE, IDLE]);
    const releases = seen.flatMap((a, i) => (a === 'release' ? [i] : []));
    expect(releases.length).toBe(2);
    expect((releases[1]! - releases[0]!) * CHECK_MS).toBeGreaterThanOrEqual(MIN_RELEASE_GAP_MS);
  });

  it('only trims malloc every TRIM_MS while busy or while idle with nothing new', () => {
    const busy = actions(Array<number>((3 * TRIM_MS) / CHECK_MS).fill(BUSY));
    expect(busy.filter((a) => a === 'release')).toEqual([]);
    expect(busy.filter((a) => a === 'trim')).toHaveLength(3);
    const idle = actions(Array<number>((3 * TRIM_MS) / CHECK_MS).fill(IDLE), {
      busySinceRelease: false,
      sinceReleaseMs: 0,
      sinceTrimMs: 0,
    });
    expect(idle.filter((a) => a === 'trim')).toHaveLength(3);
    expect(idle.filter((a) => a === 'release')).toEqual([]);
  });

  it('scales the idle bound with a late timer (a longer window may hold more CPU)', () => {
    expect(
      decideIdleAction(
        { busySinceRelease: true, sinceReleaseMs: MIN_RELEASE_GAP_MS, sinceTrimMs: 0 },
        2 * CHECK_MS,
        1.5 * IDLE_CPU_MS,
      ).action,
    ).toBe('release');
  });
});
