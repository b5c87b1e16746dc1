// V8 settings of the proxy process itself, applied by the CLI before the proxy's modules load. With one worker the
// data plane runs in this process (src/proxy/workers.ts LocalPool), which then lacks the flags cluster workers are
// started with (workerExecArgv): a node process cannot take command-line V8 flags after it has started, and a
// re-exec would cost a second start. V8 reads its young generation's growth factor each time it grows the
// semi-spaces, though, so setting it to 1 before anything is allocated keeps them at their initial 1 MiB, as
// --max-semi-space-size=1 does for the workers: startup garbage no longer grows them to 4–16 MiB that stay
// resident (idle proxy, 5 starts each: 67.0 → 64.3 MiB RSS), and the in-process data plane has the young
// generation whose RSS per idle connection workerExecArgv's comment measures.
import { setFlagsFromString } from 'node:v8';

/** The young-generation flags an operator may give (command line or NODE_OPTIONS); any of them wins over ours. */
const OPERATOR_CHOICE = /(^|\s)--(max-semi-space-size|min-semi-space-size|semi-space-growth-factor)\b/;

/**
 * The V8 flag the proxy process sets, or null when the operator chose the young generation's size themselves
 * (`execArgv`: process.execArgv; `nodeOptions`: NODE_OPTIONS, which execArgv does not show).
 */
export function proxyHeapFlag(execArgv: readonly string[], nodeOptions: string | undefined): string | null {
  if (execArgv.some((arg) => OPERATOR_CHOICE.test(arg)) || OPERATOR_CHOICE.test(nodeOptions ?? '')) return null;
  return '--semi-space-growth-factor=1';
}

/** Applies proxyHeapFlag to this process (call it before the proxy's modules load); returns what it set. */
export function tuneProxyHeap(): string | null {
  const flag = proxyHeapFlag(process.execArgv, process.env.NODE_OPTIONS);
  if (flag !== null) setFlagsFromString(flag);
  return flag;
}
