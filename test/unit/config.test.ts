// Config loading: defaults, flags over file, and every class of bad input with its code and message.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configFromObject, loadConfig, parseSshConnection } from '../../src/config/load.js';
import { MeshctlError } from '../../src/errors.js';
import { testHost } from '../cases.js';

const load = (raw: unknown, flags: { path: string; value: unknown; flag: string }[] = []) =>
  configFromObject(raw, { file: 'config.yaml', host: testHost, env: {}, flags });

function failure(fn: () => unknown): MeshctlError {
  try {
    fn();
  } catch (error) {
    if (error instanceof MeshctlError) return error;
    throw error;
  }
  throw new Error('expected a MeshctlError');
}
const text = (e: MeshctlError) => [e.message, ...e.details].join('\n');

describe('configFromObject', () => {
  it('fills every default and resolves the proxy user to its uid and primary gid', () => {
    const c = load({ proxy: { user: 'meshproxy' } });
    expect(c.proxy.user).toEqual({ name: 'meshproxy', uid: 1337, gid: 1337 });
    expect(c.proxy.outboundPort).toBe(15001);
    expect(c.proxy.inboundPort).toBe(15006);
    expect(c.proxy.adminPort).toBe(15000);
    expect(c.proxy.connectTimeoutMs).toBe(10_000);
    expect(c.proxy.idleTimeoutMs).toBeNull();
    expect(c.proxy.halfCloseTimeoutMs).toBe(60_000);
    expect(c.capture.ipv6).toBe('intercept');
    expect(c.capture.inbound.includePorts).toBe('all');
    expect(c.capture.outbound.includeCidrs).toBe('all');
    expect(c.safety.sshPorts).toEqual([22]);
    expect(c.safety.sshPortsSource).toBe('default');
    expect(Object.isFrozen(c.capture.outbound)).toBe(true);
  });

  it('parses ports, ranges and CIDRs into canonical values', () => {
    const c = load({
      proxy: { user: 'meshproxy' },
      capture: { outbound: { excludePorts: [5432, '8000-8100'], excludeCidrs: ['10.1.2.3/8', 'FD00:0:0::1/64'] } },
    });
    expect(c.capture.outbound.excludePorts).toEqual([
      { from: 5432, to: 5432 },
      { from: 8000, to: 8100 },
    ]);
    expect(c.capture.outbound.excludeCidrs).toEqual([
      { family: 'ipv4', address: '10.0.0.0', prefix: 8 },
      { family: 'ipv6', address: 'fd00::', prefix: 64 },
    ]);
  });

  it('lets flags override the file and names the flag when a flag value is bad', () => {
    expect(
      load({ proxy: { user: 'meshproxy', outboundPort: 15001 } }, [
        { path: 'proxy.outboundPort', value: 17001, flag: '--proxy-outbound-port' },
      ]).proxy.outboundPort,
    ).toBe(17001);
    const e = failure(() =>
      load({ proxy: { user: 'meshproxy' } }, [
        { path: 'proxy.outboundPort', value: 70000, flag: '--proxy-outbound-port' },
      ]),
    );
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe('proxy.outboundPort (flag --proxy-outbound-port): must be <= 65535, got 70000');
  });

  it('changes the hash when any effective value changes', () => {
    const a = load({ proxy: { user: 'meshproxy' } });
    const b = load({ proxy: { user: 'meshproxy' }, capture: { dropInvalid: true } });
    expect(a.hash).not.toBe(b.hash);
    expect(load({ proxy: { user: 'meshproxy' } }).hash).toBe(a.hash);
  });

  it('takes the current SSH session from SSH_CONNECTION', () => {
    expect(parseSshConnection('203.0.113.9 51234 10.0.0.5 22')).toEqual({
      address: '203.0.113.9',
      port: 51234,
      localAddress: '10.0.0.5',
      localPort: 22,
    });
    expect(parseSshConnection('garbage')).toBeNull();
    const c = configFromObject(
      { proxy: { user: 'meshproxy' } },
      { host: testHost, env: { SSH_CONNECTION: '203.0.113.9 51234 10.0.0.5 22' } },
    );
    expect(c.safety.sshPeer?.address).toBe('203.0.113.9');
  });
});

describe('bad config input', () => {
  it('rejects unknown keys and suggests the near one', () => {
    const e = failure(() => load({ proxy: { user: 'meshproxy' }, capture: { outbund: {} } }));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toContain('capture.outbund (config.yaml): unknown key "outbund" (did you mean "outbound"?)');
  });

  it('rejects wrong types with the path and the value', () => {
    const e = failure(() => load({ proxy: { user: 'meshproxy' }, capture: { dropInvalid: 'yes' } }));
    expect(e.message).toBe('capture.dropInvalid (config.yaml): must be boolean; got "yes"');
  });

  it('rejects an invalid CIDR naming the list index', () => {
    const e = failure(() =>
      load({
        proxy: { user: 'meshproxy' },
        capture: { outbound: { excludeCidrs: ['10.0.0.0/8', '192.168.0.0/16', '10.0.0.300/8'] } },
      }),
    );
    expect(e.message).toBe(
      'capture.outbound.excludeCidrs[2] (config.yaml): "10.0.0.300/8" is not a CIDR ("10.0.0.300" is not an IPv4 or IPv6 address)',
    );
  });

  it('rejects invalid ports and port ranges', () => {
    expect(
      failure(() => load({ proxy: { user: 'meshproxy' }, capture: { inbound: { excludePorts: [0] } } })).message,
    ).toBe('capture.inbound.excludePorts[0] (config.yaml): must be >= 1, got 0');
    expect(
      failure(() => load({ proxy: { user: 'meshproxy' }, capture: { outbound: { excludePorts: ['9000-8000'] } } }))
        .message,
    ).toBe(
      'capture.outbound.excludePorts[0] (config.yaml): "9000-8000" is not a port range (range end 8000 is below its start 9000)',
    );
    expect(
      failure(() => load({ proxy: { user: 'meshproxy' }, capture: { outbound: { includePorts: 80 } } })).message,
    ).toContain(
      'capture.outbound.includePorts (config.yaml): must be "*" for every port, or a list of ports and ranges; got 80',
    );
  });

  it('rejects a bad duration and an enum value outside the allowed set', () => {
    expect(failure(() => load({ proxy: { user: 'meshproxy', connectTimeout: '10 seconds' } })).message).toContain(
      'proxy.connectTimeout (config.yaml): "10 seconds" is not a duration',
    );
    expect(failure(() => load({ proxy: { user: 'meshproxy', connectTimeout: 'off' } })).message).toContain(
      'proxy.connectTimeout (config.yaml): "off" is not allowed here',
    );
    expect(failure(() => load({ proxy: { user: 'meshproxy' }, capture: { ipv6: 'maybe' } })).message).toBe(
      'capture.ipv6 (config.yaml): must be one of "intercept", "block", "off"; got "maybe"',
    );
  });

  it('reports every problem at once', () => {
    const e = failure(() =>
      load({
        proxy: { user: 'meshproxy', adminPort: 'x' },
        capture: { ipv6: 1, outbound: { excludeCidrs: ['nope'] } },
      }),
    );
    expect(e.message).toBe('3 problems in the config');
    expect(e.details).toHaveLength(3);
  });

  it('refuses uid 0 as the proxy user', () => {
    const e = failure(() => load({ proxy: { user: 'root' } }));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toContain('proxy.user (config.yaml): the proxy must not run as root (uid 0)');
    expect(failure(() => load({ proxy: { user: 0, group: 1337 } })).message).toContain('must not run as root');
  });

  it('refuses a proxy user that does not exist, and a uid without passwd entry unless a group is given', () => {
    const e = failure(() => load({ proxy: { user: 'ghost' } }));
    expect(e.code).toBe('USER_NOT_FOUND');
    expect(e.message).toBe('proxy.user (config.yaml): user "ghost" does not exist');
    expect(e.hint).toContain('create the user');
    expect(failure(() => load({ proxy: { user: 4242 } })).message).toContain('uid 4242 has no passwd entry');
    expect(load({ proxy: { user: 4242, group: 4242 } }).proxy.user).toEqual({ name: null, uid: 4242, gid: 4242 });
    expect(
      failure(() => load({ proxy: { user: 'meshproxy' }, capture: { outbound: { excludeUids: ['nosuchuser'] } } }))
        .message,
    ).toContain('capture.outbound.excludeUids[0] (config.yaml): user "nosuchuser" does not exist');
  });

  it('refuses conflicting include and exclude lists', () => {
    expect(
      failure(() =>
        load({
          proxy: { user: 'meshproxy' },
          capture: { outbound: { includePorts: [80, 443], excludePorts: ['400-500'] } },
        }),
      ).message,
    ).toContain(
      'capture.outbound.includePorts[1] (config.yaml): port 443 is also excluded by capture.outbound.excludePorts[0] (400-500)',
    );
    expect(
      failure(() =>
        load({
          proxy: { user: 'meshproxy' },
          capture: { outbound: { includeCidrs: ['10.0.0.0/8'], excludeCidrs: ['10.1.0.0/8'] } },
        }),
      ).message,
    ).toContain(
      'capture.outbound.includeCidrs[0] (config.yaml): 10.0.0.0/8 is also in capture.outbound.excludeCidrs[0]',
    );
    expect(
      failure(() =>
        load({
          proxy: { user: 'meshproxy' },
          capture: { outbound: { includeGids: ['apps'], excludeGids: ['docker'] } },
        }),
      ).message,
    ).toContain('capture.outbound.includeGids (config.yaml): cannot be combined with capture.outbound.excludeGids');
    expect(failure(() => load({ proxy: { user: 'meshproxy', inboundPort: 15001 } })).message).toContain(
      'proxy.inboundPort (config.yaml): port 15001 is also proxy.outboundPort',
    );
    expect(
      failure(() => load({ proxy: { user: 'meshproxy' }, capture: { inbound: { includePorts: ['15000-15010'] } } }))
        .message,
    ).toContain("the proxy's own ports are never captured");
  });

  it('refuses inbound capture of the SSH ports unless the unsafe flag is set', () => {
    const e = failure(() =>
      load({ proxy: { user: 'meshproxy' }, capture: { inbound: { includePorts: [80, '20-30'] } } }),
    );
    expect(e.code).toBe('UNSAFE_CONFIG');
    expect(e.message).toContain('capture.inbound.includePorts[1] (config.yaml): 20-30 includes SSH port 22');
    expect(e.hint).toContain('--unsafe-capture-ssh');
    const c = load({
      proxy: { user: 'meshproxy' },
      capture: { inbound: { includePorts: [22] } },
      safety: { unsafeCaptureSsh: true },
    });
    expect(c.safety.unsafeCaptureSsh).toBe(true);
  });
});

describe('loadConfig', () => {
  const dir = mkdtempSync(join(tmpdir(), 'meshctl-config-'));

  it('reads YAML and JSON files', async () => {
    writeFileSync(join(dir, 'c.yaml'), 'proxy:\n  user: meshproxy\ncapture:\n  ipv6: block\n');
    writeFileSync(join(dir, 'c.json'), '{"proxy":{"user":"meshproxy"},"capture":{"ipv6":"off"}}');
    expect((await loadConfig({ file: join(dir, 'c.yaml'), host: testHost, env: {} })).capture.ipv6).toBe('block');
    expect((await loadConfig({ file: join(dir, 'c.json'), host: testHost, env: {} })).capture.ipv6).toBe('off');
  });

  it('names the file and line of a syntax error', async () => {
    writeFileSync(join(dir, 'bad.yaml'), 'proxy:\n  user: [meshproxy\n');
    await expect(loadConfig({ file: join(dir, 'bad.yaml'), host: testHost })).rejects.toMatchObject({
      code: 'CONFIG_PARSE',
    });
    writeFileSync(join(dir, 'dup.yaml'), 'proxy:\n  user: a\n  user: b\n');
    await expect(loadConfig({ file: join(dir, 'dup.yaml'), host: testHost })).rejects.toMatchObject({
      code: 'CONFIG_PARSE',
    });
  });

  it('fails clearly for a missing explicit file', async () => {
    await expect(loadConfig({ file: join(dir, 'absent.yaml'), host: testHost })).rejects.toMatchObject({
      code: 'CONFIG_NOT_FOUND',
      message: expect.stringContaining('absent.yaml: ENOENT'),
    });
  });

  it('errors name the file they came from', async () => {
    writeFileSync(join(dir, 'port.yaml'), 'proxy:\n  user: meshproxy\n  adminPort: 99999\n');
    const error = await loadConfig({ file: join(dir, 'port.yaml'), host: testHost, env: {} }).catch((e: unknown) => e);
    expect(text(error as MeshctlError)).toBe(
      `proxy.adminPort (${join(dir, 'port.yaml')}): must be <= 65535, got 99999`,
    );
  });
});
