// Module hooks that let a child `node` run the project's TypeScript sources (tests only; see kernel-ts-register.mjs):
// `./x.js` resolves to `./x.ts` when only the .ts exists, and .ts files are transpiled with the project's typescript.
// Transpiled output is cached in MG_TS_CACHE (keyed by path, size and mtime) so later children skip loading typescript.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

let ts;

export async function resolve(specifier, context, next) {
  if (
    specifier.endsWith('.js') &&
    context.parentURL?.startsWith('file:') &&
    (specifier.startsWith('.') || specifier.startsWith('/'))
  ) {
    const url = new URL(specifier, context.parentURL);
    const tsUrl = new URL(url.href.replace(/\.js$/, '.ts'));
    if (!existsSync(url) && existsSync(tsUrl)) return { url: tsUrl.href, format: 'module', shortCircuit: true };
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context);
  const file = fileURLToPath(url);
  const stat = statSync(file);
  const cacheDir = process.env.MG_TS_CACHE;
  const key = createHash('sha256').update(`${file}:${stat.size}:${stat.mtimeMs}`).digest('hex');
  const cached = cacheDir ? join(cacheDir, `${key}.js`) : null;
  if (cached && existsSync(cached))
    return { format: 'module', source: readFileSync(cached, 'utf8'), shortCircuit: true };
  ts ??= (await import('typescript')).default;
  const { outputText } = ts.transpileModule(readFileSync(file, 'utf8'), {
    fileName: file,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false },
  });
  if (cached) {
    mkdirSync(cacheDir, { recursive: true });
    writeFileSync(cached, outputText);
  }
  return { format: 'module', source: outputText, shortCircuit: true };
}
