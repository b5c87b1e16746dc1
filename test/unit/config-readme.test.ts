// README.md's config field table (## Configuration) and the schema agree: every field the schema has is a row,
// every row is a field of the schema, and the default a row states is the schema's `default` (a row saying
// "Default: …" in words, or nothing, is for a field whose schema has no `default`).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { schemaDefault, schemaLeaves } from '../../src/config/schema.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

interface Row {
  readonly path: string;
  readonly text: string;
}

/** The rows of the table headed `| Field | Meaning and default |` inside `## Configuration`. */
function fieldRows(): Row[] {
  const section = readme.split(/^## /m).find((s) => s.startsWith('Configuration\n')) ?? '';
  const lines = section.split('\n');
  const header = lines.findIndex((line) => /^\| Field \| Meaning and default \|$/.test(line));
  const rows: Row[] = [];
  for (const line of lines.slice(header + 2)) {
    const match = /^\| `([^`]+)` \| (.*) \|$/.exec(line);
    if (!match) break;
    rows.push({ path: match[1]!, text: match[2]! });
  }
  return header < 0 ? [] : rows;
}

/** The literal a row states as its default (`Default 15000.`, `Default "10s".`), or `undefined`. */
function statedDefault(text: string): { readonly literal: unknown } | undefined {
  const match = /\bDefault ("[^"]*"|-?\d+(?:\.\d+)?|true|false|null|\[\])/.exec(text);
  return match ? { literal: JSON.parse(match[1]!) as unknown } : undefined;
}

describe('README.md config field table', () => {
  const rows = fieldRows();

  it('is found, with one row per field', () => {
    expect(rows.length).toBeGreaterThan(40);
    const paths = rows.map((r) => r.path);
    expect(paths.filter((p, i) => paths.indexOf(p) !== i)).toEqual([]);
  });

  it('documents every field of the schema, and only those', () => {
    const leaves = schemaLeaves();
    expect(leaves.filter((leaf) => !rows.some((r) => r.path === leaf))).toEqual([]);
    expect(rows.map((r) => r.path).filter((path) => !leaves.includes(path))).toEqual([]);
  });

  it("states each field's default as the schema's `default`", () => {
    const disagree = rows.flatMap(({ path, text }) => {
      const stated = statedDefault(text);
      const schema = schemaDefault(path);
      if (stated === undefined && schema === undefined) return [];
      if (stated !== undefined && JSON.stringify(stated.literal) === JSON.stringify(schema)) return [];
      const readmeSays = stated === undefined ? 'states no literal default' : `says ${JSON.stringify(stated.literal)}`;
      return [
        `${path}: README ${readmeSays}, schema ${schema === undefined ? 'has none' : `says ${JSON.stringify(schema)}`}`,
      ];
    });
    expect(disagree).toEqual([]);
  });
});
