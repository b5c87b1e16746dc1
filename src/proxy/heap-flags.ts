// V8 settings of the proxy process itself, applied by the CLI before the proxy's modules load. With one worker the
// data plane runs in this process (src/proxy/workers.ts LocalPool), which then lacks the flags cluster workers are
// started with (workerExecArgv): a node process cannot take command-line V8 flags after it has started, and a
// re-exec would cost a second start. V8 reads its young generation's growth factor each time it grows the
// semi-spaces, though, so setting it to 1 before anything is allocated keeps them at their initial 1 MiB, as
// --max-semi-space-size=1 does for the workers: startup garbage no longer grows them to 4–16 MiB that stay
// resident (idle proxy, 5 starts each: 67.0 → 64.3 MiB RSS), and the in-process data plane has the young
// generation whose RSS per idle connection workerExecArgv's comment measures.
//
// The same applies to the workers' --no-memory-reducer: in one process, V8's memory reducer is on, and its start-up
// trigger (the old generation grew by 1 MiB before any full GC: module loading) runs two or three compacting GCs
// ~8 s after start, in every sidecar of a host at about the same moment, while the relay threads carry traffic
// (bench/notes.md, "The paced tail through two sidecars"). --memory-reducer itself is read only when the heap is set
// up, but --memory-reducer-for-small-heaps, which gates that trigger, is read when it fires: turning it off before
// the modules load removes those GCs. The reducer still runs after a full GC that grew the heap (a burst of mTLS
// streams, the streams relay), and then shrinks it back as before.
import { setFlagsFromString } from 'node:v8';

/** The young-generation flags an operator may give (command line or NODE_OPTIONS); any of them wins over ours. */
const OPERATOR_CHOICE = /(^|\s)--(max-semi-space-size|min-semi-space-size|semi-space-growth-factor)\b/;

/**
 * The young generation's ceiling that the shipped unit gives node in NODE_OPTIONS (src/service/proxy-process.ts).
 * V8 reads it only when the heap is set up, so the tunnel cannot raise it when it starts. It changes nothing while the
 * semi-spaces may not grow (factor 1: a proxy without the mTLS tunnel keeps them at 1 MiB). With the tunnel's factor
 * 2, they grow to 32 MiB instead of V8's 16. Through two mTLS sidecars, bulk-1 rose 4.24 → 4.65 Gbit/s and the
 * sidecars' CPU per GB fell 3.01 → 2.75 s: three alternated rounds of 2 repetitions each, the ceiling higher in every
 * round (bench/notes.md, "The tunnel's young generation, part 2"). It is ours, not the operator's: proxyHeapFlag does
 * not read it as a choice.
 */
export const TUNNEL_MAX_SEMI_SPACE_FLAG = '--max-semi-space-size=32';

/** NODE_OPTIONS without the unit's own ceiling (TUNNEL_MAX_SEMI_SPACE_FLAG): what the operator added. */
function operatorNodeOptions(nodeOptions: string | undefined): string {
  return (nodeOptions ?? '')
    .split(/\s+/)
    .filter((token) => token !== TUNNEL_MAX_SEMI_SPACE_FLAG)
    .join(' ');
}

/**
 * The V8 flag the proxy process sets, or null when the operator chose the young generation's size themselves
 * (`execArgv`: process.execArgv; `nodeOptions`: NODE_OPTIONS, which execArgv does not show).
 */
export function proxyHeapFlag(execArgv: readonly string[], nodeOptions: string | undefined): string | null {
  if (execArgv.some((arg) => OPERATOR_CHOICE.test(arg)) || OPERATOR_CHOICE.test(operatorNodeOptions(nodeOptions)))
    return null;
  return '--semi-space-growth-factor=1';
}

/** The memory-reducer flags an operator may give; any of them wins over ours. */
const OPERATOR_REDUCER_CHOICE = /(^|\s)--(no-)?memory-reducer\b/;

/**
 * The V8 flag that keeps the memory reducer's start-up GCs out of the proxy process, or null when the operator
 * chose about the memory reducer themselves (command line or NODE_OPTIONS).
 */
export function proxyReducerFlag(execArgv: readonly string[], nodeOptions: string | undefined): string | null {
  if (execArgv.some((arg) => OPERATOR_REDUCER_CHOICE.test(arg)) || OPERATOR_REDUCER_CHOICE.test(nodeOptions ?? ''))
    return null;
  return '--no-memory-reducer-for-small-heaps';
}

/**
 * The young generation's growth for a proxy that runs the mTLS tunnel (V8's default factor, 2), or null when the
 * operator sized it. The tunnel's TLS and HTTP/2 run on the JS thread and allocate per record and frame: with
 * 1 MiB semi-spaces that was a 0.15-0.7 ms scavenge every ~36 ms at 10k req/s, which the paced tail through two
 * sidecars felt (bench/notes.md, "The tunnel's young generation"). Grown, the semi-spaces cost up to a few tens of
 * MiB under load; the idle release's full collections shrink them again. Read by V8 whenever it grows them, so
 * setting it when the tunnel starts is in time; cluster workers keep --max-semi-space-size=1 regardless.
 */
export function tunnelHeapFlag(execArgv: readonly string[], nodeOptions: string | undefined): string | null {
  return proxyHeapFlag(execArgv, nodeOptions) === null ? null : '--semi-space-growth-factor=2';
}

/** Applies tunnelHeapFlag to this process (when the mTLS tunnel starts); returns it. */
export function tuneHeapForTunnel(): string | null {
  const flag = tunnelHeapFlag(process.execArgv, process.env.NODE_OPTIONS);
  if (flag !== null) setFlagsFromString(flag);
  return flag;
}

/** Applies proxyHeapFlag and proxyReducerFlag to this process (before the proxy's modules load); returns them. */
export function tuneProxyHeap(): string[] {
  const flags = [
    proxyHeapFlag(process.execArgv, process.env.NODE_OPTIONS),
    proxyReducerFlag(process.execArgv, process.env.NODE_OPTIONS),
  ].filter((flag): flag is string => flag !== null);
  for (const flag of flags) setFlagsFromString(flag);
  return flags;
}

// Applied when this module is evaluated, for `meshctl proxy`: the CLI imports it first (src/cli/main.ts), because
// the memory reducer's start-up trigger fires while the CLI's other imports load (the flag set after them came too
// late: the reducer's GCs still ran ~8 s after start).
if (process.argv.slice(2).find((arg) => !arg.startsWith('-')) === 'proxy') tuneProxyHeap();
