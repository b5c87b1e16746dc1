// The identity watcher: files replaced by rename (as `meshctl ca issue`, spiffe-helper and cert-manager do) and a
// Kubernetes-style `..data` symlink swap are picked up and become the current identity; a replacement that is
// invalid (expired, a key of another certificate) is refused with its reason and the old identity stays.
import { mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { initCa, issueIdentity } from '../../src/mtls/ca.js';
import { identityPathsIn, loadIdentity, type Identity } from '../../src/mtls/identity.js';
import type { IdentityError } from '../../src/mtls/reasons.js';
import { watchIdentity, type IdentityWatcher } from '../../src/mtls/watch.js';
import { removeTempDirs, tempDir } from '../helpers/mtls-certs.js';
import { waitUntil } from '../helpers/wait.js';

const HOUR = 3600_000;
const watchers: IdentityWatcher[] = [];
afterEach(() => {
  for (const w of watchers.splice(0)) w.close();
});
afterAll(removeTempDirs);

function start(dir: string, paths = identityPathsIn(dir)) {
  const reloads: Identity[] = [];
  const rejects: IdentityError[] = [];
  const initial = loadIdentity(paths);
  // The poll is out of reach: only the directory watch can find the changes.
  const watcher = watchIdentity(paths, initial, {
    log: silentLogger,
    onReload: (identity) => reloads.push(identity),
    onReject: (error) => rejects.push(error),
    debounceMs: 50,
    pollMs: HOUR,
  });
  watchers.push(watcher);
  return { initial, watcher, reloads, rejects };
}

/** Moves the three files of `from` over those of `to`, each by rename. */
function replaceByRename(from: string, to: string): void {
  for (const name of ['svid_bundle.pem', 'svid_key.pem', 'svid.pem']) renameSync(join(from, name), join(to, name));
}

describe('the identity watcher', () => {
  it('reloads files replaced by rename, and keeps the old identity when the new files are invalid', async () => {
    const caDir = join(tempDir(), 'ca');
    await initCa(caDir, { trustDomain: 'example.org' });
    const dir = tempDir();
    await issueIdentity({ caDir, id: 'spiffe://example.org/a', outDir: dir });
    const { initial, watcher, reloads, rejects } = start(dir);

    // meshctl ca issue into the same directory: three atomic renames.
    const second = await issueIdentity({ caDir, id: 'spiffe://example.org/a', outDir: dir });
    await waitUntil('the reissued certificate to become current', () => reloads.length > 0, 10_000, {
      seen: () => ({ reloads: reloads.length, rejects: rejects.map((r) => r.reason) }),
    });
    expect(watcher.current().certificate.serialNumber).toBe(second.serialNumber.toUpperCase());
    expect(watcher.current().certificate.serialNumber).not.toBe(initial.certificate.serialNumber);

    // An expired certificate replaces it: refused, the second one stays.
    const staging = tempDir();
    const now = Date.now();
    await issueIdentity({
      caDir,
      id: 'spiffe://example.org/a',
      outDir: staging,
      validity: { notBefore: new Date(now - 2 * HOUR), notAfter: new Date(now - HOUR) },
    });
    replaceByRename(staging, dir);
    await waitUntil(
      'the expired replacement to be refused',
      () => rejects.some((r) => r.reason === 'expired'),
      10_000,
      {
        seen: () => rejects.map((r) => r.reason),
      },
    );
    expect(watcher.current().certificate.serialNumber).toBe(second.serialNumber.toUpperCase());
    expect(reloads.length).toBe(1);

    // A key of another certificate: refused too.
    const other = tempDir();
    await issueIdentity({ caDir, id: 'spiffe://example.org/a', outDir: other });
    await issueIdentity({ caDir, id: 'spiffe://example.org/a', outDir: staging });
    writeFileSync(join(staging, 'svid_key.pem'), readFileSync(join(other, 'svid_key.pem')));
    replaceByRename(staging, dir);
    await waitUntil(
      'the mismatched key to be refused',
      () => rejects.some((r) => r.reason === 'key-mismatch'),
      10_000,
      {
        seen: () => rejects.map((r) => r.reason),
      },
    );
    expect(watcher.current().certificate.serialNumber).toBe(second.serialNumber.toUpperCase());

    // A valid set after the refused ones becomes current.
    const fourth = await issueIdentity({ caDir, id: 'spiffe://example.org/a', outDir: staging });
    replaceByRename(staging, dir);
    await waitUntil('a valid replacement after refused ones', () => reloads.length === 2, 10_000, {
      seen: () => ({ reloads: reloads.length, rejects: rejects.map((r) => r.reason) }),
    });
    expect(watcher.current().certificate.serialNumber).toBe(fourth.serialNumber.toUpperCase());
  });

  it('follows a Kubernetes secret volume: files are symlinks into ..data, which is swapped by rename', async () => {
    const caDir = join(tempDir(), 'ca');
    await initCa(caDir, { trustDomain: 'example.org' });
    const volume = tempDir();
    const first = join(volume, '..2026_01_01_a');
    await issueIdentity({ caDir, id: 'spiffe://example.org/k8s', outDir: first });
    symlinkSync('..2026_01_01_a', join(volume, '..data'));
    for (const name of ['svid.pem', 'svid_key.pem', 'svid_bundle.pem'])
      symlinkSync(join('..data', name), join(volume, name));
    const { initial, watcher, reloads } = start(volume);

    const next = join(volume, '..2026_01_02_b');
    mkdirSync(next);
    const issued = await issueIdentity({ caDir, id: 'spiffe://example.org/k8s', outDir: next });
    symlinkSync('..2026_01_02_b', join(volume, '..data_tmp'));
    renameSync(join(volume, '..data_tmp'), join(volume, '..data'));
    await waitUntil('the swapped ..data to become current', () => reloads.length > 0, 10_000, {
      seen: () => watcher.current().certificate.serialNumber,
    });
    expect(watcher.current().certificate.serialNumber).toBe(issued.serialNumber.toUpperCase());
    expect(watcher.current().certificate.serialNumber).not.toBe(initial.certificate.serialNumber);
  });
  it('logs, on its poll, when the certificate enters its warning third and when it expires', async () => {
    const caDir = join(tempDir(), 'ca');
    await initCa(caDir, { trustDomain: 'example.org' });
    const dir = tempDir();
    await issueIdentity({ caDir, id: 'spiffe://example.org/clock', outDir: dir });
    const paths = identityPathsIn(dir);
    const initial = loadIdentity(paths);
    const lines: { msg: string; secondsLeft?: number }[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line) as (typeof lines)[0]) });
    let clock = initial.notBefore.getTime() + 1000;
    const watcher = watchIdentity(paths, initial, {
      log,
      onReload: () => undefined,
      pollMs: 20,
      now: () => new Date(clock),
    });
    watchers.push(watcher);
    const messages = () => lines.map((l) => l.msg);
    clock = initial.notAfter.getTime() - 3600_000; // an hour left of 24: past the warning point (8 h left)
    await waitUntil(
      'the warning',
      () => messages().includes('identity certificate expires soon and has not been rotated'),
      10_000,
      { seen: messages },
    );
    expect(lines.find((l) => l.msg.includes('expires soon'))!.secondsLeft).toBe(3600);
    clock = initial.notAfter.getTime() + 1000;
    await waitUntil('the expiry', () => messages().includes('identity certificate has expired'), 10_000, {
      seen: messages,
    });
    // Unchanged files are no reload to refuse: the expiry is reported once, and the identity stays what it was.
    expect(messages().filter((m) => m.includes('refused'))).toEqual([]);
    expect(watcher.current()).toBe(initial);
  });
});
