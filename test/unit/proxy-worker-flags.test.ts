// Node flags of the cluster workers (src/proxy/workers.ts): a small young generation unless the operator chose one.
import { describe, expect, it } from 'vitest';
import { workerExecArgv } from '../../src/proxy/workers.js';

describe('worker node flags', () => {
  it('adds 1 MiB semi-spaces to the primary’s flags', () => {
    expect(workerExecArgv(['--enable-source-maps'])).toEqual(['--enable-source-maps', '--max-semi-space-size=1']);
  });

  it('keeps an operator’s own semi-space size', () => {
    expect(workerExecArgv(['--max-semi-space-size=8'])).toEqual(['--max-semi-space-size=8']);
  });
});
