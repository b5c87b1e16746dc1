// The tunnel's wire constants written as numbers (src/proxy/tunnel-wire.ts does not import node:http2, so that a
// proxy without mTLS does not load HTTP/2 and TLS) are node:http2's.
import { constants } from 'node:http2';
import { describe, expect, it } from 'vitest';
import { RST_CODE } from '../../src/proxy/tunnel-wire.js';

describe('tunnel wire constants', () => {
  it('resets a stream with CONNECT_ERROR, as node:http2 numbers it', () => {
    expect(RST_CODE).toBe(constants.NGHTTP2_CONNECT_ERROR);
  });
});
