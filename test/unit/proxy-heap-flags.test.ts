// The proxy process's own V8 setting (src/proxy/heap-flags.ts): the young generation stays at its initial size,
// unless the operator sized it on the command line or in NODE_OPTIONS.
import { describe, expect, it } from 'vitest';
import { proxyHeapFlag, proxyReducerFlag, tunnelHeapFlag } from '../../src/proxy/heap-flags.js';
import { PROXY_UNIT_ENVIRONMENT } from '../../src/service/proxy-process.js';

describe('proxy heap flags', () => {
  it("keeps the semi-spaces from growing by default, and with the shipped unit's ceiling", () => {
    expect(proxyHeapFlag([], undefined)).toBe('--semi-space-growth-factor=1');
    expect(proxyHeapFlag([], PROXY_UNIT_ENVIRONMENT.NODE_OPTIONS)).toBe('--semi-space-growth-factor=1');
    expect(tunnelHeapFlag([], PROXY_UNIT_ENVIRONMENT.NODE_OPTIONS)).toBe('--semi-space-growth-factor=2');
    expect(proxyHeapFlag(['--enable-source-maps'], '--max-old-space-size=256')).toBe('--semi-space-growth-factor=1');
  });

  it('leaves the young generation to an operator who sized it, on the command line or in NODE_OPTIONS', () => {
    expect(proxyHeapFlag(['--max-semi-space-size=8'], undefined)).toBeNull();
    expect(proxyHeapFlag(['--semi-space-growth-factor=4'], undefined)).toBeNull();
    expect(proxyHeapFlag([], '--enable-source-maps --max-semi-space-size=16')).toBeNull();
    expect(proxyHeapFlag([], '--min-semi-space-size=2')).toBeNull();
    expect(proxyHeapFlag([], '--v8-pool-size=0 --max-semi-space-size=64')).toBeNull();
  });

  it('lets the young generation grow again (V8’s factor 2) in a proxy that runs the mTLS tunnel, unless sized by the operator', () => {
    expect(tunnelHeapFlag([], undefined)).toBe('--semi-space-growth-factor=2');
    expect(tunnelHeapFlag(['--enable-source-maps'], '--max-old-space-size=256')).toBe('--semi-space-growth-factor=2');
    expect(tunnelHeapFlag(['--max-semi-space-size=8'], undefined)).toBeNull();
    expect(tunnelHeapFlag([], '--semi-space-growth-factor=1')).toBeNull();
  });

  it("turns off the memory reducer's start-up trigger unless the operator chose about the reducer", () => {
    expect(proxyReducerFlag([], undefined)).toBe('--no-memory-reducer-for-small-heaps');
    expect(proxyReducerFlag(['--max-semi-space-size=8'], '--max-old-space-size=256')).toBe(
      '--no-memory-reducer-for-small-heaps',
    );
    expect(proxyReducerFlag(['--memory-reducer'], undefined)).toBeNull();
    expect(proxyReducerFlag(['--no-memory-reducer'], undefined)).toBeNull();
    expect(proxyReducerFlag(['--memory-reducer-for-small-heaps'], undefined)).toBeNull();
    expect(proxyReducerFlag([], '--enable-source-maps --memory-reducer-for-small-heaps')).toBeNull();
  });
});
