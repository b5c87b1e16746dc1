// trimMalloc (src/native/memory.cc): the built addon has it, and it answers without throwing, also called again
// with nothing left to release; releaseMemory collects the JavaScript heap's garbage.
import { createRequire } from 'node:module';
import { getHeapStatistics } from 'node:v8';
import { describe, expect, it } from 'vitest';
import { ADDON_PATH, releaseMemory, trimMalloc } from '../../src/native/addon.js';

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

describe('releaseMemory', () => {
  it('is exported by the built addon (rebuild it with node-gyp when this fails)', () => {
    expect(typeof (createRequire(import.meta.url)(ADDON_PATH) as { releaseMemory?: unknown }).releaseMemory).toBe(
      'function',
    );
  });

  it('collects the garbage of the JavaScript heap', () => {
    // ~16 MiB of objects that become garbage at once, more than a young-generation collection alone would leave.
    let garbage: number[][] | null = Array.from({ length: 2000 }, (_, i) => new Array<number>(1000).fill(i + 0.5));
    const held = getHeapStatistics().used_heap_size;
    expect(garbage.length).toBe(2000);
    garbage = null;
    releaseMemory();
    const after = getHeapStatistics().used_heap_size;
    expect(held - after, `used heap ${held} bytes before, ${after} after`).toBeGreaterThan(12 * 1024 * 1024);
  });
});
