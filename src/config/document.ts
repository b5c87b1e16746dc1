// Reads a config or policy document, YAML or JSON. JSON (what `meshctl install`, the bench and most generators
// write) is read with JSON.parse; YAML, and JSON that JSON.parse refuses or that repeats a key, goes to the yaml
// library, loaded on first use: its 72 modules stayed resident in every proxy (~0.9 MiB of an idle one's RSS,
// issue 19) although a JSON config never needs them.
import { createRequire } from 'node:module';

type YamlModule = typeof import('yaml');

let yamlModule: YamlModule | null = null;

/** The yaml library, loaded on the first call. */
export function yaml(): YamlModule {
  yamlModule ??= createRequire(import.meta.url)('yaml') as YamlModule;
  return yamlModule;
}

/** Whether `text`, valid JSON, has an object that names a key twice (the yaml path then reports it). */
function repeatsKey(text: string): boolean {
  const objects: Array<Set<string> | null> = [];
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      const keys = objects[objects.length - 1];
      if (keys && keyNext) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (keys.has(key)) return true;
        keys.add(key);
        keyNext = false;
      }
      i = end;
    } else if (c === '{') {
      objects.push(new Set());
      keyNext = true;
    } else if (c === '[') objects.push(null);
    else if (c === '}' || c === ']') objects.pop();
    else if (c === ',') keyNext = objects[objects.length - 1] instanceof Set;
  }
  return false;
}

/** Marks a document that is not plain JSON (read it with yaml()). */
export const NOT_JSON: unique symbol = Symbol('not JSON');

/** The value of `text` when it is a JSON object or array with no repeated key; NOT_JSON otherwise. */
export function readJson(text: string): unknown {
  const first = /\S/.exec(text)?.[0];
  if (first !== '{' && first !== '[') return NOT_JSON;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return NOT_JSON;
  }
  return repeatsKey(text) ? NOT_JSON : value;
}
