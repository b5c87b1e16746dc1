// `node --import ./test/helpers/kernel-ts-register.mjs file.ts` runs a TypeScript entry point in a child process.
import { register } from 'node:module';

register('./kernel-ts-hooks.mjs', import.meta.url);
