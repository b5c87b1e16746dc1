// Gives memory back when the proxy becomes idle: a burst of work (start-up, a wave of connections, a reload) leaves
// garbage in the JavaScript heap and freed chunks in malloc's arenas, and an idle proxy may not collect it for
// minutes (V8 collects when it allocates; the memory reducer is off for small heaps, src/proxy/heap-flags.ts). Every
// CHECK_MS the process's CPU time (all its threads: the relay threads' work counts) says whether the last window
// was busy; the first idle window after a busy one runs releaseMemory (full collections + malloc_trim), at most
// once per MIN_RELEASE_GAP_MS, never while work goes on. Otherwise malloc is trimmed every TRIM_MS as before.
// Measured (issue 19, the bench's idle workload): an idle proxy uses ~0.5-1 ms of CPU per 2 s; after a 1 s
// connect + close warm-up the settled RSS was 57.1-61.0 MiB depending on whether V8 had collected since, and a
// release cost 16-25 ms of CPU.
import { releaseMemory, trimMalloc } from '../native/addon.js';

export const CHECK_MS = 2000;
/** A window with at most this much CPU time (ms, all threads) is idle: ~5× an idle proxy's own timers. */
export const IDLE_CPU_MS = 5;
export const MIN_RELEASE_GAP_MS = 8000;
export const TRIM_MS = 10_000;

export type IdleAction = 'release' | 'trim' | 'none';

export interface IdleState {
  /** Whether a busy window came since the last release. */
  readonly busySinceRelease: boolean;
  /** Milliseconds since the last release (or since start). */
  readonly sinceReleaseMs: number;
  /** Milliseconds since malloc was last trimmed (by a release or a trim). */
  readonly sinceTrimMs: number;
}

export const INITIAL_IDLE_STATE: IdleState = { busySinceRelease: true, sinceReleaseMs: 0, sinceTrimMs: 0 };

/** What to do after a window of `windowMs` in which the process used `cpuMs` of CPU, and the state after it. */
export function decideIdleAction(
  state: IdleState,
  windowMs: number,
  cpuMs: number,
): { action: IdleAction; state: IdleState } {
  const busy = cpuMs > IDLE_CPU_MS * (windowMs / CHECK_MS);
  const sinceReleaseMs = state.sinceReleaseMs + windowMs;
  const sinceTrimMs = state.sinceTrimMs + windowMs;
  const busySinceRelease = state.busySinceRelease || busy;
  if (!busy && busySinceRelease && sinceReleaseMs >= MIN_RELEASE_GAP_MS)
    return { action: 'release', state: { busySinceRelease: false, sinceReleaseMs: 0, sinceTrimMs: 0 } };
  if (sinceTrimMs >= TRIM_MS) return { action: 'trim', state: { busySinceRelease, sinceReleaseMs, sinceTrimMs: 0 } };
  return { action: 'none', state: { busySinceRelease, sinceReleaseMs, sinceTrimMs } };
}

const cpuMsNow = (): number => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};

/** Starts the checks in this process (unref'd: they never keep it alive); returns the function that stops them. */
export function startIdleRelease(): () => void {
  let state = INITIAL_IDLE_STATE;
  let lastCpu = cpuMsNow();
  let lastAt = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    const decision = decideIdleAction(state, now - lastAt, cpuMsNow() - lastCpu);
    state = decision.state;
    if (decision.action === 'release') releaseMemory();
    else if (decision.action === 'trim') trimMalloc();
    // The release's own CPU time is not the next window's work.
    lastCpu = cpuMsNow();
    lastAt = performance.now();
  }, CHECK_MS).unref();
  return () => clearInterval(timer);
}
