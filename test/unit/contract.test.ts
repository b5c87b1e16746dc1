// The capture contract: what the rules of a config need from the proxy, how a live proxy is compared with it,
// and the /proc parsers that tell what the proxy really is.
import { describe, expect, it } from 'vitest';
import { compareContract, contractOf, isExempt, type LiveContract } from '../../src/config/contract.js';
import { configFromObject } from '../../src/config/load.js';
import type { HostFacts } from '../../src/config/host-facts.js';
import { contractChanges } from '../../src/proxy/lifecycle.js';
import { listeningPortsIn, parseStatusIds, socketInodes } from '../../src/proxy/live-contract.js';

const host: HostFacts = {
  userDb: {
    user: (ref) =>
      ref === 'meshproxy' || ref === 998
        ? { name: 'meshproxy', uid: 998, gid: 998 }
        : ref === 'nobody' || ref === 65534
          ? { name: 'nobody', uid: 65534, gid: 65534 }
          : null,
    group: (ref) =>
      ref === 998 || ref === 'meshproxy'
        ? { name: 'meshproxy', gid: 998 }
        : ref === 65534 || ref === 'nogroup'
          ? { name: 'nogroup', gid: 65534 }
          : null,
  },
  detectSshPorts: () => ({ ports: [22], source: 'default' }),
};
const config = (raw: Record<string, unknown> = {}) =>
  configFromObject({ proxy: { user: 'meshproxy' }, ...raw }, { host, env: {} });

function live(overrides: Partial<LiveContract> = {}): LiveContract {
  const c = config();
  return {
    pid: 4242,
    processes: [
      { pid: 4242, uid: 998, gid: 998 },
      { pid: 4243, uid: 998, gid: 998 },
    ],
    uid: 998,
    gid: 998,
    user: 'meshproxy',
    tcp: { ipv4: [15001, 15006], ipv6: [15001, 15006] },
    udp: { ipv4: [], ipv6: [] },
    transparentPorts: [],
    config: { file: null, hash: c.hash, version: 1 },
    expects: contractOf(c),
    ...overrides,
  };
}

describe('the capture contract', () => {
  it('is derived from the config: exempt ids, ports, families, inbound mode and DNS', () => {
    expect(contractOf(config({ capture: { outbound: { excludeUids: [0] } } }))).toEqual({
      proxyUser: { name: 'meshproxy', uid: 998, gid: 998 },
      exemptUids: [998, 0],
      exemptGids: [998],
      includeGids: 'all',
      families: ['ipv4', 'ipv6'],
      outboundPort: 15001,
      inboundPort: 15006,
      inboundMode: 'redirect',
      dnsPort: null,
      tunnelPort: null,
    });
    const c = contractOf(config({ capture: { ipv6: 'block', inbound: { enabled: false }, dns: { enabled: true } } }));
    expect(c).toMatchObject({ families: ['ipv4'], inboundPort: null, inboundMode: null, dnsPort: 15053 });
  });

  it('counts a process as exempt by uid, by gid, or when includeGids leaves its group out', () => {
    const c = contractOf(config());
    expect(isExempt(c, 998, 1)).toBe(true);
    expect(isExempt(c, 1, 998)).toBe(true);
    expect(isExempt(c, 65534, 65534)).toBe(false);
    expect(isExempt(contractOf(config({ capture: { outbound: { includeGids: [1000] } } })), 65534, 65534)).toBe(true);
  });

  it('agrees with a proxy that runs as the exempt user and listens on every port for every family', () => {
    expect(compareContract(contractOf(config()), live())).toEqual([]);
  });

  it('names a proxy that runs as another user, with both values and the fix', () => {
    const [m, ...rest] = compareContract(
      contractOf(config()),
      live({ uid: 65534, gid: 65534, user: 'nobody', processes: [{ pid: 4242, uid: 65534, gid: 65534 }] }),
    );
    expect(rest).toEqual([]);
    expect(m).toMatchObject({ field: 'user' });
    expect(m!.message).toBe(
      "the proxy runs as uid 65534 (nobody) gid 65534; the rules would exempt uid 998 (meshproxy) gid 998, so the proxy's own upstream connections would be captured and loop back to it",
    );
    expect(m!.fix).toBe('run the proxy as meshproxy or install with --proxy-user nobody');
  });

  it('finds a worker that runs as another user even when the primary matches', () => {
    const mismatches = compareContract(
      contractOf(config()),
      live({
        processes: [
          { pid: 4242, uid: 998, gid: 998 },
          { pid: 4250, uid: 1000, gid: 1000 },
        ],
      }),
    );
    expect(mismatches.map((m) => m.proxy)).toEqual(['uid 1000 gid 1000 (pid 4250)']);
  });

  it("names ports the proxy does not listen on, per family, and points at the proxy's own port", () => {
    const other = config({ proxy: { user: 'meshproxy', outboundPort: 16001 } });
    const mismatches = compareContract(
      contractOf(config()),
      live({ tcp: { ipv4: [15006, 16001], ipv6: [15006] }, expects: contractOf(other) }),
    );
    expect(mismatches).toHaveLength(1);
    expect(mismatches[0]!.message).toBe(
      'the rules redirect outbound connections to TCP port 15001 (IPv4 and IPv6), but the proxy does not listen there (it listens on TCP IPv4 15006, 16001; IPv6 15006)',
    );
    expect(mismatches[0]!.fix).toBe(
      "install with --proxy-outbound-port 16001 (the proxy's proxy.outboundPort), or restart the proxy with 15001",
    );
  });

  it('needs IPv6 listeners only when the rules intercept IPv6', () => {
    const v4only = live({ tcp: { ipv4: [15001, 15006], ipv6: [] } });
    expect(compareContract(contractOf(config({ capture: { ipv6: 'block' } })), v4only)).toEqual([]);
    expect(compareContract(contractOf(config()), v4only).map((m) => m.field)).toEqual(['outboundPort', 'inboundPort']);
  });

  it('refuses DNS capture to a port the proxy serves no DNS on, over UDP and TCP', () => {
    const rules = contractOf(config({ capture: { dns: { enabled: true } } }));
    const [m] = compareContract(rules, live());
    expect(m).toMatchObject({ field: 'dnsPort' });
    expect(m!.message).toBe(
      'the rules redirect every DNS query to port 15053, but the proxy does not serve DNS there on UDP (IPv4 and IPv6), TCP (IPv4 and IPv6): the host would have no name resolution',
    );
    const serving = live({
      tcp: { ipv4: [15001, 15006, 15053], ipv6: [15001, 15006, 15053] },
      udp: { ipv4: [15053], ipv6: [15053] },
    });
    expect(compareContract(rules, serving)).toEqual([]);
  });

  it('needs a transparent inbound listener for TPROXY', () => {
    const rules = contractOf(config({ capture: { inbound: { mode: 'tproxy' } } }));
    expect(compareContract(rules, live()).map((m) => m.field)).toEqual(['inboundMode']);
    expect(compareContract(rules, live({ transparentPorts: [15006] }))).toEqual([]);
  });

  it('lists the contract fields a reload would change', () => {
    const running = contractOf(config());
    expect(
      contractChanges(running, contractOf(config({ proxy: { user: 'meshproxy', connectTimeout: '5s' } }))),
    ).toEqual([]);
    expect(
      contractChanges(
        running,
        contractOf(config({ proxy: { user: 'meshproxy', outboundPort: 16001 }, capture: { ipv6: 'off' } })),
      ),
    ).toEqual(['proxy.outboundPort 15001 → 16001', 'capture.ipv6 ipv4,ipv6 → ipv4']);
  });
});

describe('what the kernel says about the proxy', () => {
  it('reads the file-system uid and gid from /proc/PID/status', () => {
    const status = 'Name:\tnode\nUid:\t0\t998\t998\t997\nGid:\t0\t998\t998\t996\n';
    expect(parseStatusIds(status, 'Uid')).toEqual({ real: 0, effective: 998, fs: 997 });
    expect(parseStatusIds(status, 'Gid')).toEqual({ real: 0, effective: 998, fs: 996 });
    expect(parseStatusIds('Name:\tx\n', 'Uid')).toBeNull();
  });

  it('takes socket inodes from fd links and finds their listening ports in /proc/net tables', () => {
    const inodes = socketInodes(['/dev/null', 'socket:[1001]', 'pipe:[5]', 'socket:[1002]', 'anon_inode:[eventpoll]']);
    expect([...inodes]).toEqual([1001, 1002]);
    const tcp = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1001 1 0000000000000000 100 0 0 10 0',
      '   1: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1002 1 0000000000000000 100 0 0 10 0',
      '   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0',
      '   3: 0100007F:3A99 0100007F:D431 01 00000000:00000000 00:00000000 00000000 65534        0 1001 1 0000000000000000 20 4 30 10 -1',
    ].join('\n');
    expect(listeningPortsIn(tcp, 'tcp', inodes)).toEqual([15001, 15006]);
    const udp = [
      '   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops',
      ' 100: 00000000:3ACD 00000000:0000 07 00000000:00000000 00:00000000 00000000 65534        0 1001 2 0000000000000000 0',
    ].join('\n');
    expect(listeningPortsIn(udp, 'udp', inodes)).toEqual([15053]);
    expect(listeningPortsIn(udp, 'tcp', inodes)).toEqual([]);
  });
});
