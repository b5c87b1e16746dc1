// SPIFFE IDs per the SPIFFE ID spec, against hostile input: fast-check builds valid IDs from the spec's grammar
// (all accepted, parts read back), mutates them with one forbidden thing (all refused, with a reason naming it), and
// throws arbitrary strings at the parser (never an exception, and acceptance implies the grammar). Then the identity
// patterns: exact, a trailing /* below a path, nothing for plaintext.
import { Ajv } from 'ajv';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config/schema.js';
import { identityAllowed } from '../../src/mtls/spiffe-id.js';
import {
  parsePrincipal as parseIdentityPattern,
  parseSpiffeId,
  principalMatches as identityMatches,
  principalText as identityPatternText,
  spiffeIdProblem,
  type PrincipalPattern as IdentityPattern,
} from '../../src/values/spiffe-id.js';

const RUNS = Number(process.env.MESHCTL_FUZZ_RUNS ?? 300);
/** The spec's grammar, written independently of the parser. */
const GRAMMAR = /^spiffe:\/\/[a-z0-9._-]{1,255}(\/(?!\.{1,2}(\/|$))[A-Za-z0-9._-]+)*$/;

const tdChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789.-_');
const segChar = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_');
const trustDomain = fc.string({ unit: tdChar, minLength: 1, maxLength: 40 });
const segment = fc.string({ unit: segChar, minLength: 1, maxLength: 20 }).filter((s) => s !== '.' && s !== '..');
const validId = fc
  .tuple(trustDomain, fc.array(segment, { maxLength: 6 }))
  .map(([td, segs]) => ({ td, path: segs.map((s) => `/${s}`).join('') }));

describe('SPIFFE IDs', () => {
  it('accepts every ID of the grammar and reads its parts back', () => {
    fc.assert(
      fc.property(validId, ({ td, path }) => {
        const id = parseSpiffeId(`spiffe://${td}${path}`);
        expect(id).toEqual({ text: `spiffe://${td}${path}`, trustDomain: td, path });
      }),
      { numRuns: RUNS },
    );
  });

  const mutations: { name: string; apply: (td: string, path: string) => string; reason: RegExp }[] = [
    { name: 'an uppercase scheme', apply: (td, p) => `SPIFFE://${td}${p}`, reason: /lowercase "spiffe/ },
    { name: 'another scheme', apply: (td, p) => `https://${td}${p}`, reason: /does not start with/ },
    { name: 'a port', apply: (td, p) => `spiffe://${td}:8443${p}`, reason: /port/ },
    { name: 'userinfo', apply: (td, p) => `spiffe://user@${td}${p}`, reason: /userinfo/ },
    { name: 'an uppercase trust domain', apply: (td, p) => `spiffe://X${td}${p}`, reason: /lowercase/ },
    { name: 'a query', apply: (td, p) => `spiffe://${td}${p}?x=1`, reason: /query/ },
    { name: 'a fragment', apply: (td, p) => `spiffe://${td}${p}#f`, reason: /fragment/ },
    { name: 'a trailing slash', apply: (td, p) => `spiffe://${td}${p}/`, reason: /ends with "\/"/ },
    { name: 'an empty segment', apply: (td, p) => `spiffe://${td}//x${p}`, reason: /empty segment/ },
    { name: 'a dot segment', apply: (td, p) => `spiffe://${td}/.${p}`, reason: /"\." segment/ },
    { name: 'a dot-dot segment', apply: (td, p) => `spiffe://${td}${p}/..`, reason: /"\.\." segment/ },
    { name: 'a percent-encoded byte', apply: (td, p) => `spiffe://${td}${p}/a%2Fb`, reason: /"%"/ },
    { name: 'a space', apply: (td, p) => `spiffe://${td}${p}/a b`, reason: /" "/ },
    { name: 'a non-ASCII letter', apply: (td, p) => `spiffe://${td}${p}/é`, reason: /"é"/ },
    { name: 'no trust domain', apply: (_td, p) => `spiffe://${p}`, reason: /trust domain/ },
    { name: 'an over-long trust domain', apply: (_td, p) => `spiffe://${'a'.repeat(256)}${p}`, reason: /255/ },
    { name: 'more than 2048 bytes', apply: (td, p) => `spiffe://${td}${p}/${'a'.repeat(2048)}`, reason: /2048/ },
  ];

  it.each(mutations)('refuses $name with a reason', ({ apply, reason }) => {
    fc.assert(
      fc.property(validId, ({ td, path }) => {
        const text = apply(td, path);
        expect(spiffeIdProblem(text), text).toMatch(reason);
        expect(typeof parseSpiffeId(text)).toBe('string');
      }),
      { numRuns: Math.ceil(RUNS / 10) },
    );
  });

  it('never throws on arbitrary input, and accepts only what the grammar allows', () => {
    const hostile = fc.oneof(
      fc.string({ maxLength: 300 }),
      fc.string({ unit: 'binary', maxLength: 300 }).map((s) => `spiffe://${s}`),
      fc.tuple(validId, fc.string({ unit: 'grapheme', maxLength: 5 }), fc.nat(60)).map(([{ td, path }, junk, at]) => {
        const id = `spiffe://${td}${path}`;
        const i = Math.min(at, id.length);
        return id.slice(0, i) + junk + id.slice(i);
      }),
    );
    fc.assert(
      fc.property(hostile, (text) => {
        const problem = spiffeIdProblem(text);
        const bytes = Buffer.byteLength(text);
        expect(problem === null, JSON.stringify(text)).toBe(GRAMMAR.test(text) && bytes <= 2048);
        expect(parseIdentityPattern(text)).toBeDefined();
      }),
      { numRuns: RUNS * 3 },
    );
  });
});

describe('identity patterns', () => {
  const pattern = (text: string): IdentityPattern => {
    const p = parseIdentityPattern(text);
    if (typeof p === 'string') throw new Error(p);
    return p;
  };

  it('matches exactly, or strictly below a path with a trailing /*', () => {
    const exact = pattern('spiffe://td/ns/web');
    const below = pattern('spiffe://td/ns/*');
    const all = pattern('spiffe://td/*');
    const table: [IdentityPattern, string | null, boolean][] = [
      [exact, 'spiffe://td/ns/web', true],
      [exact, 'spiffe://td/ns/web/x', false],
      [exact, 'spiffe://td/ns/we', false],
      [below, 'spiffe://td/ns/web', true],
      [below, 'spiffe://td/ns/a/b', true],
      [below, 'spiffe://td/ns', false],
      [below, 'spiffe://td/nsx/web', false],
      [below, 'spiffe://other/ns/web', false],
      [all, 'spiffe://td/x', true],
      [all, 'spiffe://td', false],
      [all, 'spiffe://tdx/x', false],
      [all, null, false],
    ];
    expect(table.map(([p, id]) => `${identityPatternText(p)} ${id}: ${identityMatches(p, id)}`)).toEqual(
      table.map(([p, id, want]) => `${identityPatternText(p)} ${id}: ${want}`),
    );
  });

  it('allows any workload ID of the trust domain when no pattern is given', () => {
    expect(identityAllowed([], 'spiffe://td/a', 'td')).toBe(true);
    expect(identityAllowed([], 'spiffe://td', 'td')).toBe(false);
    expect(identityAllowed([], 'spiffe://tdx/a', 'td')).toBe(false);
    expect(identityAllowed([], null, 'td')).toBe(false);
    expect(identityAllowed([pattern('spiffe://td/a')], 'spiffe://td/b', 'td')).toBe(false);
  });

  it('refuses malformed patterns, a * anywhere but at the end, and round-trips the text of valid ones', () => {
    for (const bad of ['spiffe://td/*/x', 'spiffe://td/a*', 'spiffe://*', '*', 'spiffe://td/a/', 'spiffe://TD/a'])
      expect(typeof parseIdentityPattern(bad), bad).toBe('string');
    fc.assert(
      fc.property(validId, fc.boolean(), ({ td, path }, wildcard) => {
        const text = `spiffe://${td}${path}${wildcard ? '/*' : ''}`;
        expect(identityPatternText(pattern(text))).toBe(text);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('the schema and the parser agree on principals', () => {
  // The schema checks the config's shape first and the resolver trusts it: a principal the schema let through and
  // the parser refused would be an INTERNAL error, one the schema refused and the parser took a needless refusal.
  const definitions = (configSchema as { definitions: Record<string, object> }).definitions;
  const schemaAccepts = new Ajv({ strict: true }).compile(definitions.principal!);

  it('accepts and refuses the same strings, valid, mutated or arbitrary', () => {
    const mutated = fc
      .tuple(validId, fc.boolean(), fc.string({ unit: 'grapheme-ascii', maxLength: 4 }), fc.nat(80))
      .map(([{ td, path }, wildcard, junk, at]) => {
        const text = `spiffe://${td}${path}${wildcard ? '/*' : ''}`;
        const i = Math.min(at, text.length);
        return text.slice(0, i) + junk + text.slice(i);
      });
    const edges = fc.constantFrom(
      'spiffe://td/*',
      'spiffe://td/a/*',
      'spiffe://td/*/a',
      'spiffe://td/./a',
      'spiffe://td/../*',
      'spiffe://td/.../a',
      'spiffe://td/a/..',
      'spiffe://td/a.',
      `spiffe://${'a'.repeat(255)}/x`,
      `spiffe://${'a'.repeat(256)}/x`,
      `spiffe://td/${'a'.repeat(2036)}`,
      `spiffe://td/${'a'.repeat(2036)}/*`,
      `spiffe://td/${'a'.repeat(2037)}`,
      'spiffe://td',
      'spiffe://',
    );
    fc.assert(
      fc.property(
        fc.oneof(
          mutated,
          edges,
          fc.string({ maxLength: 40 }).map((t) => `spiffe://${t}`),
        ),
        (text) => {
          expect(schemaAccepts(text), text).toBe(typeof parseIdentityPattern(text) !== 'string');
        },
      ),
      { numRuns: RUNS * 3 },
    );
  });
});
