// The integration tests' up-front check that the unprivileged proxy user can read the checkout
// (test/helpers/integration.ts): a 0700 directory above it is named, a readable tree passes.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { integrationEnabled, unreadableByProxyUser } from '../helpers/integration.js';

describe.skipIf(!integrationEnabled)('checkout readable by the proxy user', () => {
  const base = mkdtempSync(join(tmpdir(), 'meshctl-readable-'));
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  function fakeCheckout(mode: number): string {
    const root = join(base, `m${mode.toString(8)}`);
    mkdirSync(join(root, 'bin'), { recursive: true });
    mkdirSync(join(root, 'test', 'helpers'), { recursive: true });
    for (const f of ['bin/meshctl', 'package.json', 'test/helpers/proxy-agent.mjs'])
      writeFileSync(join(root, f), 'x', { mode: 0o644 });
    chmodSync(base, 0o755);
    chmodSync(root, mode);
    return `${root}/`;
  }

  it('passes a tree that others can read and search', () => {
    expect(unreadableByProxyUser(fakeCheckout(0o755))).toBeNull();
  });

  it('names what uid 65534 cannot read under a 0700 directory', () => {
    const root = fakeCheckout(0o700);
    expect(unreadableByProxyUser(root)).toBe(`${root}bin/meshctl`);
  });
});
