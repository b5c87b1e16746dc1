// Keeps README.md true: every config field in the schema and every error code in the catalogue is documented.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../../src/errors.js';
import { configSchema } from '../../src/config/schema.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

function fieldPaths(props: Record<string, { properties?: Record<string, unknown> }>, prefix = ''): string[] {
  return Object.entries(props).flatMap(([key, value]) => {
    const path = prefix ? `${prefix}.${key}` : key;
    return value.properties
      ? fieldPaths(value.properties as Record<string, { properties?: Record<string, unknown> }>, path)
      : [path];
  });
}

describe('README.md', () => {
  it('documents every config field of the schema', () => {
    const missing = fieldPaths(
      configSchema.properties as Record<string, { properties?: Record<string, unknown> }>,
    ).filter((p) => !readme.includes(`\`${p}\``));
    expect(missing).toEqual([]);
  });

  it('documents every error code with a fix', () => {
    const missing = Object.keys(ERROR_CODES).filter(
      (code) => !new RegExp(`^\\| \`${code}\` \\|.+\\|.+\\|$`, 'm').test(readme),
    );
    expect(missing).toEqual([]);
  });
});
