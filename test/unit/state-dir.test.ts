// The state directory and its lock are trusted: a directory another user controls, a symlink, or something that
// is not a lock file where the lock belongs is refused at once with STATE_UNSAFE (never followed, never spun on).
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { ensureStateDir } from '../../src/netfilter/transaction/ledger.js';
import { acquireStateLock } from '../../src/netfilter/transaction/lock.js';

const made: string[] = [];
function base(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mn-statedir-'));
  made.push(dir);
  return dir;
}
afterEach(() => {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
});

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    if (isMeshctlError(error)) return `${error.code}: ${error.message}`;
    throw error;
  }
  return 'no error';
}

describe('the state directory', () => {
  it('is created 0700 and an existing one with read bits for others is tightened', () => {
    const root = join(base(), 'state');
    ensureStateDir(join(root, 'netns', 'x'), root);
    expect(statSync(root).mode & 0o777).toBe(0o700);
    chmodSync(root, 0o755);
    ensureStateDir(join(root, 'netns', 'x'), root);
    expect(statSync(root).mode & 0o777).toBe(0o700);
  });

  it('is refused when writable by others, a symlink, or not a directory', () => {
    const parent = base();
    const open = join(parent, 'open');
    mkdirSync(open, { mode: 0o700 });
    chmodSync(open, 0o777);
    expect(codeOf(() => ensureStateDir(join(open, 'host'), open))).toMatch(
      /^STATE_UNSAFE: the state directory .*open is writable by every user \(mode 777\)/,
    );
    const link = join(parent, 'link');
    mkdirSync(join(parent, 'real'), { mode: 0o700 });
    symlinkSync(join(parent, 'real'), link);
    expect(codeOf(() => ensureStateDir(join(link, 'host'), link))).toMatch(
      /^STATE_UNSAFE: the state directory .*link is a symlink \(not followed\)/,
    );
  });

  it.skipIf(process.getuid?.() !== 0)('is refused when another user owns it', () => {
    const theirs = join(base(), 'theirs');
    mkdirSync(theirs, { mode: 0o700 });
    chownSync(theirs, 65534, 65534);
    expect(codeOf(() => ensureStateDir(join(theirs, 'host'), theirs))).toMatch(
      /^STATE_UNSAFE: the state directory .*theirs is owned by uid 65534, not by uid 0 who runs meshctl/,
    );
  });
});

describe('the state lock', () => {
  it('refuses a directory where the lock file belongs at once instead of spinning', async () => {
    const dir = base();
    mkdirSync(join(dir, 'lock'));
    const started = Date.now();
    const error = await acquireStateLock(dir, 'test', 2000).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isMeshctlError(error, 'STATE_UNSAFE')).toBe(true);
    expect((error as Error).message).toBe(
      `the state lock ${join(dir, 'lock')} is a directory, not a lock file meshctl made`,
    );
    // Refused on sight, not after the wait bound.
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
