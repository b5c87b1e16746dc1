// The pino factory: JSON to stderr (never stdout, which carries command output), one child per component.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(options: { level?: string; destination?: number | string } = {}): Logger {
  const level = options.level ?? process.env.MESHCTL_LOG_LEVEL ?? 'info';
  return pino(
    { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime },
    pino.destination({ dest: options.destination ?? 2, sync: false }),
  );
}

/** A logger that discards everything, for library calls from tests and pure commands. */
export const silentLogger: Logger = pino({ level: 'silent' });
