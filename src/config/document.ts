// Reads a config or policy document, YAML or JSON. JSON (what the bench and most generators write) is read with
// JSON.parse; YAML (the default /etc/meshctl/config.yaml), and JSON that JSON.parse refuses or that repeats a key,
// goes to the yaml library, loaded for that one read and unloaded after it: its 72 modules stayed resident in every
// proxy (~0.9 MiB of an idle one's RSS, issue 19) although the proxy reads its config only at start and reload.
import { createRequire } from 'node:module';
import { dirname } from 'node:path';

type YamlModule = typeof import('yaml');

/**
 * Runs `read` with the yaml library, then drops the library's modules from the require cache (and from the loader
 * that required them) so that nothing keeps their code alive: the next read loads it again (~20 ms, at a start or a
 * reload). Only plain values may leave `read` (toJS), never the library's objects.
 */
export function withYaml<T>(read: (yaml: YamlModule) => T): T {
  const require = createRequire(import.meta.url);
  const entry = require.resolve('yaml');
  const root = `${dirname(dirname(entry))}/`; // node_modules/yaml/ (the entry is dist/index.js)
  const wasLoaded = require.cache[entry] !== undefined;
  try {
    return read(require('yaml') as YamlModule);
  } finally {
    // Something else that loaded yaml on its own (a test, a tool) keeps it; only what this read loaded goes.
    if (!wasLoaded) for (const key of Object.keys(require.cache)) if (key.startsWith(root)) delete require.cache[key];
  }
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
