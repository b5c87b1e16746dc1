// SHA-256 and DNS ids without node:crypto (src/values/digest.ts): the same digests as node:crypto, at every block
// boundary of the padding, and ids spread over the whole 16-bit range.
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { randomId16, sha256, sha256Hex } from '../../src/values/digest.js';

describe('digest', () => {
  it('computes the SHA-256 of the FIPS 180-4 examples', () => {
    expect(sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    expect(sha256Hex('')).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    expect(sha256Hex('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq')).toBe(
      '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1',
    );
  });

  it('agrees with node:crypto for every length around the padding boundaries, and for non-ASCII text', () => {
    for (let n = 0; n <= 200; n++) {
      const text = Array.from({ length: n }, (_, i) => String.fromCharCode(97 + ((i * 7 + n) % 26))).join('');
      expect(sha256Hex(text), `length ${n}`).toBe(createHash('sha256').update(text).digest('hex'));
    }
    const text = 'ünïcødé ✓ 𝄞 '.repeat(50);
    expect(sha256Hex(text)).toBe(createHash('sha256').update(text).digest('hex'));
    const bytes = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 31) & 0xff));
    expect(sha256(bytes).equals(createHash('sha256').update(bytes).digest())).toBe(true);
  });

  it('draws DNS ids over the whole 16-bit range, past a refill of the pool', () => {
    const ids = Array.from({ length: 4096 }, () => randomId16());
    for (const id of ids) expect(Number.isInteger(id) && id >= 0 && id < 0x10000).toBe(true);
    // 4096 draws from 65536 values: ~120 repeats expected; a broken source repeats far more.
    expect(new Set(ids).size).toBeGreaterThan(3800);
    expect(ids.some((id) => id >= 0x8000) && ids.some((id) => id < 0x8000)).toBe(true);
  });
});
