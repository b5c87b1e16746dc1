// Entry point of a cluster worker process: runs one ProxyWorker and answers the primary's IPC messages.
// It drains on the primary's request, on SIGTERM/SIGINT (systemd signals the whole cgroup) and when the
// primary disappears, then exits.
import { createLogger } from '../log.js';
import { isMeshctlError } from '../errors.js';
import type { FromWorker, ToWorker } from './workers.js';
import { startIdleRelease } from './idle-release.js';
import { ProxyWorker } from './worker.js';

const index = Number(process.env.MESHCTL_WORKER_INDEX ?? '0');
const log = createLogger().child({ component: 'proxy', worker: index });
let worker: ProxyWorker | null = null;
let drainTimeoutMs = 20_000;
let draining: Promise<void> | null = null;
/** Self-loop reports to the primary are at most one per SELF_LOOP_REPORT_MS: it only needs to know they go on. */
const SELF_LOOP_REPORT_MS = 250;
let lastSelfLoopReport = 0;

function send(message: FromWorker): void {
  // The primary may be gone (EPIPE); a worker then only has its own drain left to do.
  if (process.connected) process.send?.(message, undefined, undefined, () => {});
}

function drainAndExit(timeoutMs: number): Promise<void> {
  draining ??= (async () => {
    const result = worker ? await worker.drain(timeoutMs) : { cut: 0 };
    worker?.close();
    send({ t: 'drained', cut: result.cut });
    // Give the async access-log destination a moment to finish its last write.
    setTimeout(() => process.exit(0), 50);
  })();
  return draining;
}

process.on('message', (message: ToWorker) => {
  void (async () => {
    switch (message.t) {
      case 'start': {
        drainTimeoutMs = message.config.proxy.drainTimeoutMs;
        const w = new ProxyWorker(message.config, message.specs, log, message.index);
        w.onSelfLoop = (event) => {
          const now = Date.now();
          if (now - lastSelfLoopReport < SELF_LOOP_REPORT_MS) return;
          lastSelfLoopReport = now;
          send({ t: 'self-loop', event });
        };
        try {
          await w.start();
          worker = w;
          // Like the primary (src/cli/proxy.ts): garbage and freed malloc chunks go back once a burst is over.
          startIdleRelease();
          send({ t: 'started' });
        } catch (error) {
          const e = error as Error;
          send({
            t: 'start-failed',
            code: isMeshctlError(error) ? error.code : 'INTERNAL',
            message: e.message,
            ...(isMeshctlError(error) && error.hint ? { hint: error.hint } : {}),
          });
          setTimeout(() => process.exit(1), 50);
        }
        return;
      }
      case 'reload':
        try {
          drainTimeoutMs = message.config.proxy.drainTimeoutMs;
          await worker?.reload(message.config, message.specs);
          send({ t: 'reply', seq: message.seq, ok: true });
        } catch (error) {
          send({ t: 'reply', seq: message.seq, ok: false, message: (error as Error).message });
        }
        return;
      case 'stats':
        send({ t: 'reply', seq: message.seq, ok: true, data: await worker?.settledStats() });
        return;
      case 'connections':
        send({ t: 'reply', seq: message.seq, ok: true, data: worker?.connectionTable(message.limit) ?? [] });
        return;
      case 'lookup':
        send({ t: 'reply', seq: message.seq, ok: true, data: (await worker?.lookupSource(message.source)) ?? [] });
        return;
      case 'drain':
        await drainAndExit(message.timeoutMs);
        return;
    }
  })();
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, () => void drainAndExit(drainTimeoutMs));
// SIGHUP goes to the primary, which reloads the config and tells every worker; a worker ignores its own copy.
process.on('SIGHUP', () => {});
process.on('disconnect', () => void drainAndExit(drainTimeoutMs));
send({ t: 'hello' });
