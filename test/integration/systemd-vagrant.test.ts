// The Vagrant lab's static checks, run in CI (the lab itself runs with `npm run lab:vagrant`, not in CI):
// `vagrant validate` on the shipped Vagrantfile (with and without the TCG overrides), the scripts parse, the app
// VM's config loads, and the lab's server/client apps work.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import { integrationEnabled } from '../helpers/integration.js';
import { REPO_ROOT } from '../helpers/nspawn-lab.js';

const VAGRANT_DIR = join(REPO_ROOT, 'vagrant');
const scratch = mkdtempSync(join(tmpdir(), 'ms-vagrant-'));

function validate(extraEnv: Record<string, string>): { status: number | null; out: string } {
  const env = {
    ...process.env,
    VAGRANT_HOME: join(scratch, 'home'),
    VAGRANT_DOTFILE_PATH: join(scratch, 'dot'),
    VAGRANT_CHECKPOINT_DISABLE: '1',
    ...extraEnv,
  };
  let r = spawnSync('vagrant', ['validate'], { cwd: VAGRANT_DIR, encoding: 'utf8', env, timeout: 120_000 });
  // Without the vagrant-libvirt plugin there is no usable provider; then the provider block is skipped.
  if (r.status !== 0 && /No usable default provider/.test(`${r.stdout}${r.stderr}`)) {
    r = spawnSync('vagrant', ['validate', '--ignore-provider'], {
      cwd: VAGRANT_DIR,
      encoding: 'utf8',
      env,
      timeout: 120_000,
    });
  }
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!integrationEnabled)('Vagrant lab files', () => {
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));

  it('vagrant validate accepts the Vagrantfile with its defaults (standard box, KVM)', () => {
    const r = validate({});
    expect(r.out).toContain('Vagrantfile validated successfully');
    expect(r.status).toBe(0);
  });

  it('vagrant validate accepts it with the TCG, direct-kernel and network overrides lab:vagrant uses', () => {
    const r = validate({
      LAB_BOX: 'meshctl-lab/bookworm',
      LAB_DRIVER: 'qemu',
      LAB_KERNEL: '/tmp/vmlinuz',
      LAB_INITRD: '/tmp/initrd.img',
      LAB_POOL: 'p',
      LAB_MGMT_NETWORK: 'm',
      LAB_PREFIX: 'x-',
      LAB_SERIAL_DIR: '/tmp',
      LAB_NET: '192.168.99',
      LAB_MEMORY: '768',
    });
    expect(r.out).toContain('Vagrantfile validated successfully');
    expect(r.status).toBe(0);
  });

  it('catches a broken Vagrantfile (the check is not blind)', () => {
    const r = validate({ LAB_MEMORY: 'lots' });
    expect(r.status).not.toBe(0);
    expect(r.out).toMatch(/invalid value for Integer|lots/);
  });

  it('has lab scripts that parse', () => {
    for (const [cmd, args] of [
      ['bash', ['-n', join(VAGRANT_DIR, 'lab-test.sh')]],
      ['bash', ['-n', join(REPO_ROOT, 'scripts/lab-vagrant.sh')]],
      ['sh', ['-n', join(VAGRANT_DIR, 'provision.sh')]],
      [process.execPath, ['--check', join(VAGRANT_DIR, 'lab-apps.mjs')]],
    ] as const) {
      const r = spawnSync(cmd, args, { encoding: 'utf8' });
      expect(r.status, `${cmd} ${args.join(' ')}: ${r.stderr}`).toBe(0);
    }
  });

  it('ships an app VM config that loads, excludes the unmanaged port and fails closed', () => {
    const raw = parse(readFileSync(join(VAGRANT_DIR, 'app-config.yaml'), 'utf8'));
    const config = configFromObject(raw, {
      host: {
        userDb: {
          user: () => ({ name: 'meshproxy', uid: 997, gid: 997 }),
          group: () => ({ name: 'meshproxy', gid: 997 }),
        },
        detectSshPorts: () => ({ ports: [22], source: 'default' }),
      },
    });
    expect(config.proxy.user.name).toBe('meshproxy');
    expect(config.capture.outbound.excludePorts).toEqual([{ from: 9999, to: 9999 }]);
    expect(config.safety.onProxyDown).toBe('closed');
  });

  it('has lab apps whose server greets with the peer address and whose client checks the echo', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const server = spawn(process.execPath, [join(VAGRANT_DIR, 'lab-apps.mjs'), 'server', 'app', String(port)], {
      stdio: 'ignore',
    });
    try {
      let r = spawnSync(process.execPath, [join(VAGRANT_DIR, 'lab-apps.mjs'), 'client', '127.0.0.1', String(port)], {
        encoding: 'utf8',
      });
      for (let i = 0; i < 50 && r.status !== 0; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        r = spawnSync(process.execPath, [join(VAGRANT_DIR, 'lab-apps.mjs'), 'client', '127.0.0.1', String(port)], {
          encoding: 'utf8',
        });
      }
      expect(r.stdout.trim()).toBe('app saw 127.0.0.1');
    } finally {
      server.kill('SIGKILL');
    }
  });
});
