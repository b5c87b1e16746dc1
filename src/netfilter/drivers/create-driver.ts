// The one place that picks a backend's driver: kept out of driver.ts (the interface), which both drivers import.
import type { Backend } from '../../config/types.js';
import type { Logger } from '../../log.js';
import type { BackendDriver } from './driver.js';
import { createNftDriver } from './nft-driver.js';
import type { NetfilterRunner } from './runner.js';
import { createXtablesDriver } from './xtables-driver.js';

export function createDriver(backend: Backend, runner: NetfilterRunner, log: Logger): BackendDriver {
  return backend === 'nftables' ? createNftDriver(runner, log) : createXtablesDriver(backend, runner, log);
}
