// No function in src/ runs over 80 lines unless it says why: a one-line `// long: <reason>` comment in the comment
// block directly above it (issue 13, "Functions that do one thing"). A long function is split by responsibility;
// one that legitimately stays whole (a switch over a closed union) names its reason where a reader meets it.
// Every function with a body counts: declarations, methods, constructors, accessors, and arrow functions or
// function expressions wherever they sit (assigned to a const, a property, or passed as a callback).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const SRC = fileURLToPath(new URL('../../src', import.meta.url));
const MAX_LINES = 80;
const REASON = /^\/\/ long: \S/;

interface LongFunction {
  /** `capture/parse-save.ts:138 parseRuleArgs (160 lines)` */
  readonly where: string;
  /** `capture/parse-save.ts parseRuleArgs` */
  readonly key: string;
  readonly lines: number;
  readonly reason: string | null;
}

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith('.ts') ? [path] : [];
  });
}

/** The name a reader would search for: the function's own, or that of the const / property / class member holding it. */
function nameOf(node: ts.FunctionLikeDeclaration, sf: ts.SourceFile): string {
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  if (node.name) return node.name.getText(sf);
  const parent = node.parent;
  if (
    (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) &&
    parent.name
  )
    return parent.name.getText(sf);
  return '<anonymous>';
}

/** The node whose comments describe the function: the whole `const x = () => …` statement, or the function itself. */
function anchorOf(node: ts.FunctionLikeDeclaration): ts.Node {
  const parent = node.parent;
  if (
    ts.isVariableDeclaration(parent) &&
    ts.isVariableDeclarationList(parent.parent) &&
    ts.isVariableStatement(parent.parent.parent)
  )
    return parent.parent.parent;
  if (ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) return parent;
  return node;
}

/** The `// long: …` line in the comment block right above `line` (0-based), or null. */
function reasonAbove(lines: readonly string[], line: number): string | null {
  for (let k = line - 1; k >= 0; k--) {
    const text = lines[k]!.trim();
    if (REASON.test(text)) return text;
    if (!(text.startsWith('//') || text.startsWith('/*') || text.startsWith('*'))) return null;
  }
  return null;
}

/** Every function in `text` longer than MAX_LINES lines (first to last line of the node, inclusive). */
function longFunctions(text: string, file: string): LongFunction[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const lines = text.split('\n');
  const found: LongFunction[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const fn = node as ts.FunctionLikeDeclaration;
      const start = sf.getLineAndCharacterOfPosition(fn.getStart(sf)).line;
      const count = sf.getLineAndCharacterOfPosition(fn.end).line - start + 1;
      if (count > MAX_LINES) {
        const name = nameOf(fn, sf);
        const anchorLine = sf.getLineAndCharacterOfPosition(anchorOf(fn).getStart(sf)).line;
        found.push({
          where: `${file}:${start + 1} ${name} (${count} lines)`,
          key: `${file} ${name}`,
          lines: count,
          reason: reasonAbove(lines, anchorLine),
        });
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

const body = (n: number): string => Array.from({ length: n }, (_, i) => `  const v${i} = ${i};`).join('\n');
/** A function of exactly `n` lines (signature and closing brace included). */
const fn = (head: string, n: number): string => `${head} {\n${body(n - 2)}\n}`;

describe('the function length check', () => {
  it('flags a declaration, a method, a const arrow and a callback over 80 lines, and not one of exactly 80', () => {
    const text = [
      fn('function exactly()', 80),
      fn('function declared()', 81),
      `class K {\n${fn('  method()', 81)}\n}`,
      `${fn('const arrow = () =>', 81)};`,
      `setTimeout(${fn('() =>', 81)});`,
    ].join('\n');
    expect(longFunctions(text, 'x.ts').map((f) => [f.key, f.lines, f.reason])).toEqual([
      ['x.ts declared', 81, null],
      ['x.ts method', 81, null],
      ['x.ts arrow', 81, null],
      ['x.ts <anonymous>', 81, null],
    ]);
  });

  it('accepts a one-line reason in the comment block right above, past a TSDoc block, but not one separated by code or a blank line', () => {
    const text = [
      '// long: a switch over the closed Match union',
      '/** Parses. */',
      fn('export function withReason()', 81),
      '// long: detached',
      '',
      fn('function blankBetween()', 81),
      '// long:',
      fn('function emptyReason()', 81),
      '// long: in the wrong place',
      'const x = 1;',
      `${fn('const afterCode = () =>', 81)};`,
    ].join('\n');
    expect(longFunctions(text, 'y.ts').map((f) => [f.key, f.reason])).toEqual([
      ['y.ts withReason', '// long: a switch over the closed Match union'],
      ['y.ts blankBetween', null],
      ['y.ts emptyReason', null],
      ['y.ts afterCode', null],
    ]);
  });
});

describe('functions in src/', () => {
  const all = sources(SRC).flatMap((path) => longFunctions(readFileSync(path, 'utf8'), relative(SRC, path)));

  it(`are at most ${MAX_LINES} lines, or say why in a "// long: <reason>" line directly above`, () => {
    expect(all.filter((f) => f.reason === null).map((f) => f.where)).toEqual([]);
  });
});
