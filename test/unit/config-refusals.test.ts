// Values that would silently defeat themselves, refused at load with a coded error naming the field (issue 15):
// an empty SSH-port list, a reserved TPROXY route table, a duration longer than a timer can wait, an empty include
// list, an interface name the kernel or the renderers cannot take, a YAML !!set where a section belongs, and a file
// that is no meshctl config at all (said in one line, its content never echoed). Also the proxy's own flags.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, describe, expect, it } from 'vitest';
import { addConfigOptions, CONFIG_FLAGS, configOverrides } from '../../src/cli/config-flags.js';
import { configFromObject, loadConfig } from '../../src/config/load.js';
import { durationBoundProblem, MAX_TIMER_MS } from '../../src/config/limits.js';
import { MeshctlError } from '../../src/errors.js';
import { testHost } from '../cases.js';

type Flag = { path: string; value: unknown; flag: string };
const load = (raw: unknown, flags: Flag[] = []) =>
  configFromObject(raw, { file: 'config.yaml', host: testHost, env: {}, flags });

function failure(fn: () => unknown): MeshctlError {
  try {
    fn();
  } catch (error) {
    if (error instanceof MeshctlError) return error;
    throw error;
  }
  throw new Error('expected a MeshctlError, but the config loaded');
}
const base = { proxy: { user: 'meshproxy' } };

describe('safety values that would defeat themselves', () => {
  it("refuses an empty safety.sshPorts, from the file or from --ssh-ports ''", () => {
    const file = failure(() => load({ ...base, safety: { sshPorts: [] } }));
    expect(file.code).toBe('CONFIG_INVALID');
    expect(file.message).toBe(
      'safety.sshPorts (config.yaml): is empty: an empty list would leave every SSH port capturable; omit safety.sshPorts (and --ssh-ports) to use the ports sshd listens on, or list the SSH ports',
    );
    const flags = configOverrides({ sshPorts: '' });
    expect(flags).toEqual([{ path: 'safety.sshPorts', value: [], flag: '--ssh-ports' }]);
    const flag = failure(() => load(base, flags));
    expect(flag.code).toBe('CONFIG_INVALID');
    expect(flag.message).toMatch(/^safety\.sshPorts \(flag --ssh-ports\): is empty: /);
    // Without the field, the detected ports hold, and capturing them stays UNSAFE_CONFIG.
    expect(failure(() => load({ ...base, capture: { inbound: { includePorts: [22] } } })).code).toBe('UNSAFE_CONFIG');
  });

  it.each([253, 254, 255])('refuses the reserved route table %i for TPROXY', (table) => {
    const e = failure(() => load({ ...base, capture: { inbound: { mode: 'tproxy', tproxyRouteTable: table } } }));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(
      `capture.inbound.tproxyRouteTable (config.yaml): ${table} is a reserved routing table (253 default, 254 main, 255 local); choose another`,
    );
  });

  it('refuses route table 0 and accepts an ordinary one', () => {
    expect(failure(() => load({ ...base, capture: { inbound: { tproxyRouteTable: 0 } } })).message).toBe(
      'capture.inbound.tproxyRouteTable (config.yaml): must be >= 1, got 0',
    );
    expect(load({ ...base, capture: { inbound: { tproxyRouteTable: 252 } } }).capture.inbound.tproxyRouteTable).toBe(
      252,
    );
  });
});

describe('durations', () => {
  it.each([
    ['proxy.drainTimeout', { proxy: { drainTimeout: '600h' } }, '"600h" is too long: must be at most 1h'],
    ['proxy.connectTimeout', { proxy: { connectTimeout: '6m' } }, '"6m" is too long: must be at most 5m'],
    ['proxy.idleTimeout', { proxy: { idleTimeout: '577h' } }, '"577h" is too long: must be at most 576h'],
    ['proxy.keepalive', { proxy: { keepalive: '10h' } }, '"10h" is too long: must be at most 9h'],
    [
      'controlPlane.pollInterval',
      { controlPlane: { url: 'http://127.0.0.1:1/p', pollInterval: '600h' } },
      '"600h" is too long: must be at most 24h',
    ],
    [
      'outbound.resolver.timeout',
      { outbound: { resolver: { timeout: '2m' } } },
      '"2m" is too long: must be at most 1m',
    ],
    [
      'services[0].retries.backoff',
      { services: [{ name: 'a', addresses: ['10.0.0.1:80'], endpoints: ['10.0.0.2:80'], retries: { backoff: '2m' } }] },
      '"2m" is too long: must be at most 1m',
    ],
    [
      'inbound.ports[0].rateLimit.per',
      { inbound: { ports: [{ port: 80, rateLimit: { connections: 1, per: '25h' } }] } },
      '"25h" is too long: must be at most 24h',
    ],
  ])('bounds %s', (path, raw, message) => {
    const e = failure(() => load({ ...base, ...raw }));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(`${path} (config.yaml): ${message}`);
  });

  it('refuses anywhere a duration longer than 2^31-1 ms, the longest timer Node keeps', () => {
    const e = failure(() => load({ ...base, proxy: { maxConnectionDuration: '600h' } }));
    expect(e.message).toBe('proxy.maxConnectionDuration (config.yaml): "600h" is too long: must be at most 576h');
    const beyond = failure(() =>
      load(base, [{ path: 'proxy.drainTimeout', value: `${MAX_TIMER_MS + 1}ms`, flag: '--proxy-drain-timeout' }]),
    );
    expect(beyond.message).toBe(
      `proxy.drainTimeout (flag --proxy-drain-timeout): "${MAX_TIMER_MS + 1}ms" is too long: must be at most 1h`,
    );
    // A control-plane document is held to the same bounds, whatever the length.
    const service = { name: 'a', addresses: ['10.0.0.1:80'], endpoints: ['10.0.0.2:80'] };
    const overlay = {
      raw: { services: [{ ...service, faults: { delay: { percent: 1, duration: `${MAX_TIMER_MS + 1}ms` } } }] },
      origin: 'control plane test',
    };
    const plane = failure(() => configFromObject(base, { file: 'config.yaml', host: testHost, env: {}, overlay }));
    expect(plane.message).toBe(
      `services[0].faults.delay.duration (control plane test): "${MAX_TIMER_MS + 1}ms" is too long: must be at most 5m`,
    );
    // The limit every duration is held to, whether or not its field has a maxDuration.
    expect(durationBoundProblem(MAX_TIMER_MS + 1, undefined)).toBe(
      `must be at most ${MAX_TIMER_MS} ms (≈ 24.8 days, the longest timer Node keeps)`,
    );
    expect(durationBoundProblem(MAX_TIMER_MS, undefined)).toBeNull();
    expect(
      load({ ...base, proxy: { idleTimeout: '576h', drainTimeout: '1h', keepalive: 'off' } }).proxy.idleTimeoutMs,
    ).toBe(576 * 3_600_000);
  });
});

describe('include lists', () => {
  it.each([
    ['capture.outbound.includeCidrs', 'outbound-include-cidrs', 'outboundIncludeCidrs', 'capture.outbound'],
    ['capture.outbound.includePorts', 'outbound-include-ports', 'outboundIncludePorts', 'capture.outbound'],
    ['capture.outbound.includeGids', 'include-gids', 'includeGids', 'capture.outbound'],
    ['capture.inbound.includePorts', 'inbound-include-ports', 'inboundIncludePorts', 'capture.inbound'],
  ])("refuses an empty %s (--%s '')", (path, flag, key, section) => {
    const e = failure(() => load(base, configOverrides({ [key]: '' })));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(
      `${path} (flag --${flag}): is empty: an empty include list would capture nothing; give "*" for all, or set ${section}.enabled: false to turn this capture off`,
    );
  });

  it('refuses an empty capture.dns.servers', () => {
    expect(failure(() => load({ ...base, capture: { dns: { enabled: true, servers: [] } } })).message).toBe(
      'capture.dns.servers (config.yaml): is empty: an empty include list would capture nothing; give "*" for all, or set capture.dns.enabled: false to turn this capture off',
    );
  });
});

describe('interface names', () => {
  it.each([
    ['eth"0', 'an interface name here has no double quote, backslash or control character'],
    ['eth\\0', 'an interface name here has no double quote, backslash or control character'],
    ['.', 'an interface name is not "." or ".."'],
    ['..', 'an interface name is not "." or ".."'],
    ['a/b', 'an interface name has no whitespace, "/" or ":"'],
    ['eth0:1', 'an interface name has no whitespace, "/" or ":"'],
    ['e th', 'an interface name has no whitespace, "/" or ":"'],
    ['abcdefghijklmnop', 'an interface name is at most 15 bytes (this one has 16)'],
    ['ééééééééé', 'an interface name is at most 15 bytes (this one has 18)'],
    ['', 'an interface name is not empty'],
  ])('refuses %j in capture.excludeInterfaces', (name, why) => {
    const e = failure(() => load({ ...base, capture: { excludeInterfaces: ['lo', name] } }));
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(
      `capture.excludeInterfaces[1] (config.yaml): ${JSON.stringify(name)} is not an interface name (${why})`,
    );
  });

  it('accepts names the kernel takes, wildcards included', () => {
    expect(
      load({ ...base, capture: { excludeInterfaces: ['docker0', 'veth+', 'br-1a2b.100', 'abcdefghijklmno'] } }).capture
        .excludeInterfaces,
    ).toHaveLength(4);
  });
});

describe('files that are no config', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hv2-refusals-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const loadFile = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return loadConfig({ file: join(dir, name), host: testHost, env: {} }).then(
      () => {
        throw new Error('loaded');
      },
      (e: unknown) => e as MeshctlError,
    );
  };

  it('refuses a YAML !!set where a section belongs, naming the section', async () => {
    const e = await loadFile('set.yaml', 'proxy: !!set\n  ? user\n  ? meshproxy\n');
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(`proxy (${join(dir, 'set.yaml')}): is a YAML !!set, which no config field accepts`);
    const deeper = await loadFile('set2.yaml', 'capture:\n  outbound: !!set { a, b }\n');
    expect(deeper.message).toBe(
      `capture.outbound (${join(dir, 'set2.yaml')}): is a YAML !!set, which no config field accepts`,
    );
  });

  it('says in one line that a file like /etc/shadow is no meshctl config, without echoing it', async () => {
    const secret = '$6$saltsalt$hashhashhashhash';
    const shadow = `root:${secret}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\nbin:*:19700:0:99999:7:::\nmeshproxy:!:19700::::::\n`;
    const e = await loadFile('shadow', shadow);
    expect(e.code).toBe('CONFIG_INVALID');
    expect(e.message).toBe(
      `${join(dir, 'shadow')} is not a meshctl config: none of its 4 top-level keys is a config section (proxy, capture, safety, stateDir, mtls, services, outbound, inbound, controlPlane)`,
    );
    expect(e.details).toEqual([]);
    const all = [e.message, e.hint ?? '', ...e.details].join('\n');
    for (const word of ['root', 'daemon', 'saltsalt', 'meshproxy']) expect(all).not.toContain(word);
  });

  it('still suggests the near section for a typo', () => {
    expect(failure(() => load({ proxi: { user: 'meshproxy' } })).message).toContain(
      'unknown key "proxi" (did you mean "proxy"?)',
    );
  });
});

describe("the proxy's own flags", () => {
  it("come from the field table with the schema's defaults, and only `meshctl proxy` offers them", () => {
    const proxyOnly = CONFIG_FLAGS.filter((s) => s.proxyOnly);
    expect(proxyOnly.map((s) => s.flag)).toEqual([
      'proxy-workers',
      'proxy-connect-timeout',
      'proxy-idle-timeout',
      'proxy-max-connection-duration',
      'proxy-half-close-timeout',
      'proxy-drain-timeout',
      'proxy-keepalive',
      'proxy-relay',
      'proxy-relay-threads',
      'proxy-access-log-path',
      'proxy-access-log-sample-ratio',
      'proxy-access-log-periodic-interval',
      // The identity and the peers matter to the proxy only; mtls.inbound and the tunnel port shape capture too.
      'mtls-identity-certificate',
      'mtls-identity-key',
      'mtls-identity-bundle',
      'mtls-peers',
      'mtls-allow-plaintext-fallback',
    ]);
    expect(proxyOnly.find((s) => s.flag === 'proxy-connect-timeout')?.help).toBe('upstream connect timeout (10s)');
    expect(proxyOnly.find((s) => s.flag === 'proxy-half-close-timeout')?.help).toBe(
      'close connections half-closed this long (60s)',
    );
    const install = addConfigOptions(new Command('install'));
    expect(install.options.map((o) => o.long)).not.toContain('--proxy-drain-timeout');
  });

  it('turn their text into the file\'s values ("-" is stdout, ratios are numbers)', () => {
    const flags = configOverrides({
      proxyAccessLogPath: '-',
      proxyAccessLogSampleRatio: '0.25',
      proxyWorkers: 'auto',
      proxyDrainTimeout: '5s',
    });
    const c = load(base, flags);
    expect(c.proxy.accessLog.path).toBeNull();
    expect(c.proxy.accessLog.sampleRatio).toBe(0.25);
    expect(c.proxy.workers).toBe('auto');
    expect(c.proxy.drainTimeoutMs).toBe(5000);
  });
});
