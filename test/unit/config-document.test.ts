// Reading a config or policy document (src/config/document.ts): plain JSON without the yaml library, everything
// else (YAML, invalid JSON, a repeated key) left to it, so its errors and its unique-key check still apply.
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { NOT_JSON, readJson, withYaml } from '../../src/config/document.js';

describe('config document', () => {
  it('reads JSON objects and arrays as JSON.parse does', () => {
    const text =
      '{"proxy": {"user": "nobody", "accessLog": {"enabled": false}}, "services": [{"name": "a,b{"}, {"name": "c\\"}"}]}';
    expect(readJson(text)).toEqual(JSON.parse(text));
    expect(readJson('  \n[1, {"a": [2]}]')).toEqual([1, { a: [2] }]);
  });

  it('agrees with the yaml library on every JSON it reads', () => {
    for (const text of [
      '{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}',
      '{"k\\u0041": "v", "kA ": 1}',
      '[]',
      '{}',
    ])
      expect(readJson(text)).toEqual(withYaml((yaml) => yaml.parse(text)));
  });

  it('leaves repeated keys to the yaml library, at any depth, also when escaped differently', () => {
    expect(readJson('{"a": 1, "a": 2}')).toBe(NOT_JSON);
    expect(readJson('{"x": [{"b": 1}, {"c": {"d": 1, "d": 2}}]}')).toBe(NOT_JSON);
    expect(readJson('{"kA": 1, "k\\u0041": 2}')).toBe(NOT_JSON);
    // The same key in sibling objects, or as a value, is no repetition.
    expect(readJson('{"a": {"b": 1}, "c": {"b": "a"}}')).toEqual({ a: { b: 1 }, c: { b: 'a' } });
    expect(withYaml((yaml) => yaml.parseDocument('{"a": 1, "a": 2}', { uniqueKeys: true }).errors.length)).not.toBe(0);
  });

  it('leaves YAML and invalid JSON to the yaml library', () => {
    expect(readJson('proxy:\n  user: nobody\n')).toBe(NOT_JSON);
    expect(readJson('{"a": 1,}')).toBe(NOT_JSON);
    expect(readJson('{a: 1}')).toBe(NOT_JSON);
    expect(readJson('"text"')).toBe(NOT_JSON);
    expect(readJson('')).toBe(NOT_JSON);
  });

  it('unloads the yaml library after each read, so a proxy that read a YAML config keeps none of it', () => {
    const cache = createRequire(import.meta.url).cache;
    const yamlKeys = () => Object.keys(cache).filter((k) => k.includes('/node_modules/yaml/'));
    const yamlModules = () => yamlKeys().length;
    // Other test files in this worker may have required yaml (withYaml leaves a library it did not load): start as a
    // proxy does, with none of it loaded.
    for (const key of yamlKeys()) delete cache[key];
    const value = withYaml((yaml) => {
      expect(yamlModules()).toBeGreaterThan(10);
      return yaml.parse('proxy:\n  user: nobody\n') as unknown;
    });
    expect(value).toEqual({ proxy: { user: 'nobody' } });
    expect(yamlModules()).toBe(0);
  });
});
