// npm run build, after tsc: writes the config validator (ajv standalone code generated from
// rules/meshctl.schema.json by src/config/validator-codegen.ts) to src/config/config-validator.js, where the
// sources and the tests import it, and to dist/config/, where the built CLI does (tsc does not copy .js files).
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';

const root = new URL('../', import.meta.url);
const { generateConfigValidator } = await import(new URL('dist/config/validator-codegen.js', root).href);
const source = generateConfigValidator();
const target = new URL('src/config/config-validator.js', root);
let current = null;
try {
  current = readFileSync(target, 'utf8');
} catch {
  // first build
}
if (current !== source) writeFileSync(target, source);
copyFileSync(target, new URL('dist/config/config-validator.js', root));
