// The suite's prerequisite check (test/helpers/prerequisites.mjs, vitest's globalSetup and `npm test`'s first step):
// one line naming what is missing and the package to install, root required for `npm test`, and the README's
// apt-get line covering every tool it checks.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { APT_LINE, integrationWanted, missingPrerequisite, TOOLS } from '../helpers/prerequisites.mjs';

describe('test prerequisites', () => {
  it('names every missing tool and its package in one line', () => {
    const line = missingPrerequisite({ env: { PATH: '/nonexistent' }, uid: 0 });
    expect(line).toMatch(
      /^missing prerequisites: ip, ss, iptables-restore, .* \(apt-get install iproute2 iptables nftables .*\)$/,
    );
    expect(line).not.toContain('\n');
    for (const command of Object.keys(TOOLS)) expect(line).toContain(command);
  });

  it('names a single missing tool with its package', () => {
    // A PATH holding every tool but wrk (links to the machine's own; tools it lacks are left out too).
    const dir = mkdtempSync(join(tmpdir(), 'ht-prereq-'));
    try {
      const missingHere: string[] = [];
      for (const command of Object.keys(TOOLS)) {
        const found = spawnSync('/bin/sh', ['-c', 'command -v "$1"', 'sh', command], {
          encoding: 'utf8',
        }).stdout.trim();
        if (found === '') missingHere.push(command);
        else if (command !== 'wrk') symlinkSync(found, join(dir, command));
      }
      const line = missingPrerequisite({ env: { PATH: dir }, uid: 0 });
      if (missingHere.length === 0) expect(line).toBe('missing prerequisite: wrk (apt-get install wrk)');
      else expect(line).toContain('wrk');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a non-root user for `npm test` and says how to run the unit tests alone', () => {
    expect(missingPrerequisite({ env: {}, uid: 1000, requireRoot: true })).toBe(
      process.platform === 'linux'
        ? 'the integration tests need root (they create network namespaces): run `sudo npm test`, or `npm run test:unit` for the unit tests alone'
        : 'the integration tests need Linux (network namespaces, netfilter); run `npm run test:unit` for the unit tests alone',
    );
    expect(missingPrerequisite({ env: { MESHCTL_INTEGRATION: '1' }, uid: 1000 })).toMatch(/need (root|Linux)/);
    expect(missingPrerequisite({ env: {}, uid: 1000 })).toBeNull(); // an ad-hoc `npx vitest run` as a user: unit tests only
    expect(missingPrerequisite({ env: { MESHCTL_INTEGRATION: '0', PATH: '/nonexistent' }, uid: 0 })).toBeNull();
  });

  it('runs the integration tests as root on Linux unless MESHCTL_INTEGRATION=0', () => {
    expect(integrationWanted({}, 0)).toBe(process.platform === 'linux');
    expect(integrationWanted({}, 1000)).toBe(false);
    expect(integrationWanted({ MESHCTL_INTEGRATION: '0' }, 0)).toBe(false);
    expect(integrationWanted({ MESHCTL_INTEGRATION: '1' }, 1000)).toBe(true);
  });

  it("is the README's one apt-get line", () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    expect(readme).toContain(APT_LINE.replace('apt-get install ', 'apt-get install -y nodejs '));
  });
});
