// The proxy unit's environment has one source (src/service/proxy-process.ts): the shipped unit file holds exactly
// its Environment= lines, and the helper the bench uses returns the same settings over a base environment.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { SHIPPED_UNIT_DIR, UNITS } from '../../src/service/layout.js';
import {
  PROXY_UNIT_ENVIRONMENT,
  proxyUnitEnvironment,
  renderProxyUnitEnvironment,
} from '../../src/service/proxy-process.js';

const unitLines = (unit: string) =>
  readFileSync(join(SHIPPED_UNIT_DIR, unit), 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('Environment='));

describe('proxy process settings', () => {
  it("are the shipped proxy unit's Environment= lines, in order, and nothing else", () => {
    expect(unitLines(UNITS.proxy)).toEqual(renderProxyUnitEnvironment());
    expect(renderProxyUnitEnvironment()).toEqual([
      'Environment=NODE_ENV=production',
      'Environment=MALLOC_ARENA_MAX=2',
      'Environment="NODE_OPTIONS=--v8-pool-size=0 --max-semi-space-size=32"',
    ]);
  });

  it('overlay a base environment for running the proxy as shipped, without changing the base', () => {
    const base = { PATH: '/usr/bin', NODE_OPTIONS: '--inspect', MALLOC_ARENA_MAX: '8' };
    const env = proxyUnitEnvironment(base);
    expect(env).toEqual({
      PATH: '/usr/bin',
      NODE_ENV: 'production',
      MALLOC_ARENA_MAX: '2',
      NODE_OPTIONS: '--v8-pool-size=0 --max-semi-space-size=32',
    });
    expect(base.MALLOC_ARENA_MAX).toBe('8');
    expect(Object.isFrozen(PROXY_UNIT_ENVIRONMENT)).toBe(true);
  });
});
