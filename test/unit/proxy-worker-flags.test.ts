// Node flags and malloc settings of the cluster workers (src/proxy/workers.ts), unless the operator chose their own.
import { describe, expect, it } from 'vitest';
import { workerExecArgv, workerMallocTunables } from '../../src/proxy/workers.js';

describe('worker node flags', () => {
  it('adds 1 MiB semi-spaces to the primary’s flags, and no memory reducer with the relay thread', () => {
    expect(workerExecArgv(['--enable-source-maps'], 'native')).toEqual([
      '--enable-source-maps',
      '--max-semi-space-size=1',
      '--no-memory-reducer',
    ]);
  });

  it('keeps the memory reducer for the streams relay, whose heap churns', () => {
    expect(workerExecArgv([], 'node')).toEqual(['--max-semi-space-size=1']);
  });

  it('keeps an operator’s own semi-space size and memory reducer choice', () => {
    expect(workerExecArgv(['--max-semi-space-size=8'], 'node')).toEqual(['--max-semi-space-size=8']);
    expect(workerExecArgv(['--memory-reducer'], 'native')).toEqual(['--memory-reducer', '--max-semi-space-size=1']);
    expect(workerExecArgv(['--no-memory-reducer', '--max-semi-space-size=2'], 'native')).toEqual([
      '--no-memory-reducer',
      '--max-semi-space-size=2',
    ]);
  });
});

describe('worker malloc tunables', () => {
  it('keeps freed heap mapped (64 MiB trim threshold, 16 MiB top pad) by default', () => {
    expect(workerMallocTunables({}, 'node')).toBe('glibc.malloc.trim_threshold=67108864:glibc.malloc.top_pad=16777216');
  });

  it('leaves an operator’s GLIBC_TUNABLES alone', () => {
    expect(workerMallocTunables({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }, 'node')).toBe(
      'glibc.malloc.arena_max=2',
    );
    // The relay thread reuses its own chunks: glibc keeps its defaults unless the operator set something.
    expect(workerMallocTunables({}, 'native')).toBeUndefined();
    expect(workerMallocTunables({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }, 'native')).toBe(
      'glibc.malloc.arena_max=2',
    );
  });
});
