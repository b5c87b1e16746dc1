// Busy hosts, without root: the runner retries a command refused by a transient conflict with another writer (a
// stand-in `nft` that fails N times, then succeeds) within TRANSIENT_RETRY and never retries a real error; and the
// uninstall's foreign check blames only lines its own steps could have removed.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isMeshctlError } from '../../src/errors.js';
import { createRunner, TRANSIENT_RETRY, transientDelayMs } from '../../src/netfilter/drivers/runner.js';
import { foreignLines, touchedBy } from '../../src/netfilter/uninstall.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A directory with a fake `nft` that fails its first `failures` calls with `stderr`, then prints `ok`. */
function fakeNft(failures: number, stderr: string): { env: NodeJS.ProcessEnv; calls: () => number } {
  const dir = mkdtempSync(join(tmpdir(), 'hb-fake-nft-'));
  dirs.push(dir);
  const counter = join(dir, 'calls');
  writeFileSync(counter, '0');
  writeFileSync(
    join(dir, 'nft'),
    `#!/bin/sh
n=$(( $(cat "${counter}") + 1 )); echo $n > "${counter}"
if [ $n -le ${failures} ]; then echo '${stderr}' >&2; exit 1; fi
echo ok
`,
  );
  chmodSync(join(dir, 'nft'), 0o755);
  return { env: { PATH: `${dir}:/usr/bin:/bin` }, calls: () => Number(readFileSync(counter, 'utf8')) };
}

describe('the runner and transient conflicts', () => {
  it.each([
    'Error: Could not process rule: Device or resource busy',
    'Another app is currently holding the xtables lock. Perhaps you want to use the -w option?',
    'iptables-restore: line 4 failed: Resource temporarily unavailable',
  ])('retries "%s" and succeeds', async (stderr) => {
    const fake = fakeNft(3, stderr);
    const runner = createRunner({ env: fake.env });
    expect(await runner.list()).toBe('ok\n');
    expect(fake.calls()).toBe(4);
  });

  it('gives up after TRANSIENT_RETRY.attempts, saying how many it made', async () => {
    const fake = fakeNft(100, 'Error: Could not process rule: Device or resource busy');
    const error = await createRunner({ env: fake.env })
      .nft('add table ip x\n', { check: false })
      .catch((e: unknown) => e);
    expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
    expect(fake.calls()).toBe(TRANSIENT_RETRY.attempts);
    expect((error as { details: string[] }).details).toContain(
      `attempts: ${TRANSIENT_RETRY.attempts} (transient conflicts retried)`,
    );
  });

  it('does not retry an error that is not transient', async () => {
    const fake = fakeNft(100, 'Error: syntax error, unexpected junk');
    const error = await createRunner({ env: fake.env })
      .nft('junk\n', { check: false })
      .catch((e: unknown) => e);
    expect(isMeshctlError(error, 'RESTORE_FAILED')).toBe(true);
    expect(fake.calls()).toBe(1);
  });

  it('backs off doubling, with jitter, up to the cap', () => {
    for (let retry = 1; retry <= 10; retry++) {
      const base = Math.min(TRANSIENT_RETRY.maxDelayMs, TRANSIENT_RETRY.firstDelayMs * 2 ** (retry - 1));
      const delay = transientDelayMs(retry);
      expect(delay).toBeGreaterThanOrEqual(base / 2);
      expect(delay).toBeLessThanOrEqual(base);
    }
  });
});

describe("uninstall's foreign check", () => {
  const xtablesForeign =
    '# ipv4\n*nat\n:PREROUTING ACCEPT\n:DOCKER -\n-A DOCKER -p tcp -j RETURN\n-A OUTPUT -p tcp --dport 7 -j RETURN\nCOMMIT\n*filter\n-A OUTPUT -p tcp --dport 7 -j RETURN\nCOMMIT\n# ipv6\n';

  it('names every foreign line with its family and table (the same rule in nat and filter stays two lines)', () => {
    expect(foreignLines(xtablesForeign)).toEqual([
      'ipv4 > nat > :PREROUTING ACCEPT',
      'ipv4 > nat > :DOCKER -',
      'ipv4 > nat > -A DOCKER -p tcp -j RETURN',
      'ipv4 > nat > -A OUTPUT -p tcp --dport 7 -j RETURN',
      'ipv4 > filter > -A OUTPUT -p tcp --dport 7 -j RETURN',
    ]);
    expect(
      foreignLines(
        'table ip x {\nchain y {\ntype nat hook output priority 0; policy accept;\ntcp dport 1 drop\n}\n}\ntable inet z {\n}',
      ),
    ).toEqual([
      'table ip x',
      'table ip x > chain y',
      'table ip x > chain y > type nat hook output priority 0; policy accept;',
      'table ip x > chain y > tcp dport 1 drop',
      'table inet z',
    ]);
  });

  it('blames a step only for lines it deletes, chains it declares or deletes, and nft tables it deletes', () => {
    const ours = touchedBy([
      {
        label: 'ipv4',
        family: 'ipv4',
        text: '*nat\n:MESHCTL_OUTPUT - [0:0]\n-D OUTPUT -p tcp -m comment --comment "meshctl:x" -j MESHCTL_OUTPUT\n-X MESHCTL_OUTPUT\nCOMMIT\n',
      },
      { label: 'inet', family: null, text: 'add table inet meshctl\ndelete table inet meshctl\n' },
    ]);
    expect(ours('ipv4 > nat > -A OUTPUT -p tcp -m comment --comment "meshctl:x" -j MESHCTL_OUTPUT')).toBe(true);
    expect(ours('ipv4 > nat > -A MESHCTL_OUTPUT -j RETURN')).toBe(true);
    expect(ours('table inet meshctl > chain c > tcp dport 1 drop')).toBe(true);
    for (const line of foreignLines(xtablesForeign)) expect(ours(line)).toBe(false);
    expect(ours('ipv4 > filter > -A OUTPUT -p tcp -m comment --comment "meshctl:x" -j MESHCTL_OUTPUT')).toBe(false);
    expect(ours('ipv6 > nat > -A OUTPUT -p tcp -m comment --comment "meshctl:x" -j MESHCTL_OUTPUT')).toBe(false);
    expect(ours('table inet meshctl2 > chain c')).toBe(false);
  });
});
