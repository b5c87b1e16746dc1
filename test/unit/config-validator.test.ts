// The config validator is ajv standalone code generated from the schema at build time: the committed
// src/config/config-validator.js must be exactly what the generator makes of the current schema (so it is never
// stale and never edited by hand), and it must judge configs as a validator compiled at run time would.
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { CONFIG_FORMATS, withinMaxDuration } from '../../src/config/config-formats.js';
import { validate } from '../../src/config/config-validator.js';
import { configSchema } from '../../src/config/schema.js';
import { generateConfigValidator } from '../../src/config/validator-codegen.js';

const committed = new URL('../../src/config/config-validator.js', import.meta.url);

describe('generated config validator', () => {
  it('is what `npm run build` generates from rules/meshctl.schema.json', () => {
    const fresh = generateConfigValidator();
    const current = readFileSync(committed, 'utf8');
    // Not toBe: a 200 KB diff says nothing; the message says what to do.
    expect(current === fresh, 'src/config/config-validator.js is stale: run `npm run build` and commit it').toBe(true);
  });

  it('accepts and refuses the same documents, with the same errors, as ajv compiling the schema at run time', () => {
    const ajv = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true });
    for (const [name, format] of Object.entries(CONFIG_FORMATS)) ajv.addFormat(name, format);
    ajv.addKeyword({ keyword: 'maxDuration', schemaType: 'string', validate: withinMaxDuration });
    const compiled = ajv.compile(configSchema);
    const documents: unknown[] = [
      {},
      { proxy: { outboundPort: 70000, workers: 'auto', drainTimeout: '48h' } },
      { capture: { outbound: { excludeCidrs: ['10.0.0.0/8', 'nope'], excludePorts: [22, '8000-7000'] } } },
      { proxy: { idleTimeout: 'soon', accessLog: { periodicInterval: '25h' } }, unknownKey: 1 },
      { safety: { sshPorts: [] }, capture: { dns: { servers: ['1.1.1.1', 'bad server'] } } },
      [],
      'text',
    ];
    // Only {} is a valid config: every other document exercises the error path.
    expect(documents.map((doc) => compiled(doc))).toEqual([true, false, false, false, false, false, false]);
    for (const doc of documents) {
      const ok = validate(doc);
      expect(ok, JSON.stringify(doc)).toBe(compiled(doc));
      const strip = (errors: typeof validate.errors) =>
        (errors ?? []).map(({ instancePath, keyword, params, message, data }) => ({
          instancePath,
          keyword,
          params,
          message,
          data,
        }));
      expect(strip(validate.errors), JSON.stringify(doc)).toEqual(strip(compiled.errors));
    }
  });
});
