// trimMalloc (src/native/memory.cc): the built addon has it, and it answers without throwing, also called again
// with nothing left to release.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { ADDON_PATH, trimMalloc } from '../../src/native/addon.js';

describe('trimMalloc', () => {
  it('is exported by the built addon (rebuild it with node-gyp when this fails)', () => {
    expect(typeof (createRequire(import.meta.url)(ADDON_PATH) as { trimMalloc?: unknown }).trimMalloc).toBe('function');
  });

  it('releases or reports nothing to release, never throwing', () => {
    const first = trimMalloc();
    expect(typeof first).toBe('boolean');
    expect(typeof trimMalloc()).toBe('boolean');
  });
});
