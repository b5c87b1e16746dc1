// The npm tarball (issue 14): `npm pack` ships the built program (dist/ prebuilt: installing runs no tsc) and the
// addon's sources, and `npm install -g ./meshctl-*.tgz` builds the addon and gives a working `meshctl`. Packed with
// --ignore-scripts from this checkout's dist/ (npm pack's own prepack/prepare would rebuild dist/ under the other
// tests' feet); installed into a temporary prefix, never the machine's global one.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { integrationEnabled } from '../helpers/integration.js';
import { REPO_ROOT } from '../helpers/nspawn-lab.js';

const scratch = mkdtempSync(join(tmpdir(), 'hp-npm-'));

function npm(args: readonly string[], cwd: string): string {
  return execFileSync('npm', [...args, '--no-audit', '--no-fund', '--loglevel=error'], {
    cwd,
    encoding: 'utf8',
    timeout: 300_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe.skipIf(!integrationEnabled)('npm pack and npm install -g of the tarball', () => {
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('packs the built program, the addon sources and the units, and nothing of the tests, benchmarks or TypeScript', () => {
    const [report] = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], REPO_ROOT)) as [
      { files: { path: string }[] },
    ];
    const files = report.files.map((f) => f.path);
    for (const needed of [
      'bin/meshctl',
      'dist/cli/main.js',
      'dist/proxy/worker-main.js',
      'rules/meshctl.schema.json',
      'binding.gyp',
      'scripts/build-addon.mjs',
      'systemd/meshctl-proxy.service',
      'systemd/meshctl.sysusers.conf',
      'package.json',
      'README.md',
    ]) {
      expect(files, needed).toContain(needed);
    }
    expect(files.filter((f) => f.startsWith('src/native/') && f.endsWith('.cc')).length).toBeGreaterThan(0);
    expect(
      files.filter((f) => /^(test|bench|vagrant|packaging|node_modules|build)\//.test(f) || /\.ts$|\.map$/.test(f)),
    ).toEqual([]);
  });

  it('installs globally from the tarball into a prefix, building the addon, and the installed meshctl runs', () => {
    const packed = (
      JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', scratch], REPO_ROOT)) as [
        { filename: string },
      ]
    )[0].filename;
    const prefix = join(scratch, 'prefix');
    npm(['install', '-g', '--prefer-offline', '--prefix', prefix, join(scratch, packed)], scratch);
    const meshctl = join(prefix, 'bin/meshctl');
    const version = spawnSync(meshctl, ['--version'], { encoding: 'utf8' });
    expect(version.stdout.trim(), version.stderr).toMatch(/^\d+\.\d+\.\d+/);
    const render = spawnSync(meshctl, ['render', '--proxy-user', 'nobody'], { encoding: 'utf8' });
    expect(render.stdout, render.stderr).toContain(':MESHCTL_OUTPUT');
    const addon = join(prefix, 'lib/node_modules/meshctl/build/Release/meshctl_native.node');
    const load = spawnSync(
      process.execPath,
      ['-e', `require(${JSON.stringify(addon)}).originalDst ?? process.exit(3)`],
      { encoding: 'utf8' },
    );
    expect(load.status, load.stderr).toBe(0);
  }, 300_000);
});
