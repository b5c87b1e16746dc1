// Capture by systemd unit, without the kernel: unit names (systemd's grammar, hostile input), name → cgroup path from
// `systemctl show`, the config fields, the plan (units not running are left out), both renderings and their parsers
// (iptables `-m cgroup --path`, nft `socket cgroupv2 level N`), explain's cgroup evaluation, the ledger comparison
// status reports, nft ids put back as paths, the refusals on nftables, and the drop-ins that keep units in step.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { explainFlow, type Flow } from '../../src/capture/explain.js';
import { planCapture } from '../../src/capture/plan.js';
import { parseNftRule } from '../../src/capture/parse-nft.js';
import { parseSave } from '../../src/capture/parse-save.js';
import { renderIptablesRestore } from '../../src/capture/render-iptables.js';
import { renderNft } from '../../src/capture/render-nft.js';
import { renderConfig } from '../../src/config/render.js';
import { conventionalCgroup, parseSystemctlShow, unitCgroupFromShow } from '../../src/config/unit-cgroups.js';
import { isMeshctlError } from '../../src/errors.js';
import {
  cgroup2Mount,
  compareUnits,
  describeUnit,
  refuseNftUnits,
  resolveNftCgroupIds,
  sameUnitCgroups,
} from '../../src/netfilter/host/unit-cgroups.js';
import {
  removeUnitDropins,
  renderUnitDropin,
  syncUnitDropins,
  unitDropinPath,
} from '../../src/service/unit-dropins.js';
import {
  cgroupLevel,
  cgroupWithin,
  normalCgroupPath,
  slicePath,
  unitNameProblem,
} from '../../src/values/systemd-unit.js';
import { cases, loadCase, TEST_UNITS } from '../cases.js';

const host = { localAddresses: [], route: () => ({ interface: 'eth0', source: '10.0.0.5' }) };
const load = (outbound: Record<string, unknown>, capture: Record<string, unknown> = {}) =>
  loadCase('units', { proxy: { user: 'meshproxy' }, capture: { ...capture, outbound } });

function configError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    if (isMeshctlError(error)) return `${error.code}: ${error.message} ${(error.details ?? []).join(' | ')}`;
    throw error;
  }
  throw new Error('expected a MeshctlError');
}

describe('unit names', () => {
  it.each([
    'app.service',
    'app@1.service',
    'user@1000.service',
    'backup-nightly.service',
    'sshd.socket',
    'var-lib.mount',
    'dev-sda2.swap',
    'session-1.scope',
    'system.slice',
    'a-b.slice',
    '-.slice',
    'x:y_z.service',
  ])('accepts %s', (name) => {
    expect(unitNameProblem(name)).toBeNull();
  });

  it.each([
    ['', /is empty/],
    ['app', /does not end in a unit type that owns a cgroup/],
    ['app.timer', /does not end in a unit type that owns a cgroup/],
    ['app.target', /does not end in a unit type/],
    ['.service', /empty name before the type/],
    ['app@.service', /is a template/],
    ['a@b@c.service', /character meshctl does not accept/],
    ['a b.service', /character meshctl does not accept/],
    ['a"b.service', /character/],
    ['../etc.service', /character/],
    ['a/b.service', /character/],
    ['x\\x2d.service', /no escapes/],
    ['$(reboot).service', /character/],
    ['a;rm.service', /character/],
    ['-a.slice', /not a valid slice name/],
    ['a--b.slice', /not a valid slice name/],
    [`${'a'.repeat(250)}.service`, /longer than 255 bytes/],
  ])('refuses %j', (name, why) => {
    expect(unitNameProblem(name)).toMatch(why);
  });

  it('never accepts a name that would need quoting in a rule or a unit file', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.constantFrom('.service', '.slice', '.scope', ''), (stem, type) => {
        const name = `${stem}${type}`;
        if (unitNameProblem(name) === null) expect(name).toMatch(/^[A-Za-z0-9:_.@-]+$/);
      }),
    );
  });

  it('maps slices to their cgroup paths, and paths to levels', () => {
    expect(slicePath('-.slice')).toBe('');
    expect(slicePath('system.slice')).toBe('/system.slice');
    expect(slicePath('a-b-c.slice')).toBe('/a.slice/a-b.slice/a-b-c.slice');
    expect(cgroupLevel('/system.slice/app.service')).toBe(2);
    expect(normalCgroupPath('system.slice//app.service/')).toBe('/system.slice/app.service');
    expect(cgroupWithin('/system.slice/app.service/worker', '/system.slice/app.service')).toBe(true);
    expect(cgroupWithin('/system.slice/app.service', '/system.slice/app.service')).toBe(true);
    expect(cgroupWithin('/system.slice/app.service2', '/system.slice/app.service')).toBe(false);
    expect(cgroupWithin('/', '/system.slice/app.service')).toBe(false);
  });
});

describe('unit → cgroup path (systemctl show)', () => {
  const show = (text: string) => parseSystemctlShow(text);

  it('takes a running unit’s ControlGroup', () => {
    expect(
      unitCgroupFromShow(
        'app.service',
        show('LoadState=loaded\nControlGroup=/app.slice/app.service\nSlice=app.slice\n'),
      ),
    ).toEqual({ cgroup: '/app.slice/app.service', source: 'systemd' });
  });

  it('derives a loaded unit’s path from its Slice= when it is not running (systemd uses the same path on start)', () => {
    expect(
      unitCgroupFromShow('backup.service', show('LoadState=loaded\nControlGroup=\nSlice=batch-nightly.slice')),
    ).toEqual({ cgroup: '/batch.slice/batch-nightly.slice/backup.service', source: 'slice' });
  });

  it('guesses where systemd puts a unit only where there is no systemd to ask', () => {
    expect(conventionalCgroup('backup.service')).toBe('/system.slice/backup.service');
    expect(conventionalCgroup('getty@tty1.service')).toBe('/system.slice/system-getty.slice/getty@tty1.service');
    expect(conventionalCgroup('my-app@1.service')).toBe('/system.slice/my-app@1.service');
    expect(conventionalCgroup('batch-nightly.slice')).toBe('/batch.slice/batch-nightly.slice');
    expect(conventionalCgroup('-.slice')).toBe('/');
  });

  it.each(['not-found', 'masked', 'bad-setting', 'error'])(
    'refuses a unit whose LoadState is %s, naming it',
    (state) => {
      const found = unitCgroupFromShow('nope.service', show(`LoadState=${state}\nControlGroup=\nSlice=\n`));
      expect(found).toEqual({ problem: expect.stringMatching(new RegExp(`"nope\\.service".*LoadState=${state}`)) });
    },
  );
});

describe('config fields', () => {
  it('resolves excludeUnits and includeUnits to names with cgroup paths, and renders the names back', () => {
    const config = load({ excludeUnits: ['backup.service', 'metrics.service'] });
    expect(config.capture.outbound.excludeUnits).toEqual([
      { name: 'backup.service', cgroup: '/meshtest.slice/backup.service' },
      { name: 'metrics.service', cgroup: '/meshtest.slice/metrics.service' },
    ]);
    expect(config.capture.outbound.includeUnits).toBe('all');
    const rendered = renderConfig(config) as { capture: { outbound: Record<string, unknown> } };
    expect(rendered.capture.outbound.excludeUnits).toEqual(['backup.service', 'metrics.service']);
    expect(rendered.capture.outbound.includeUnits).toBe('*');
    expect(load({ includeUnits: ['app.service'] }).capture.outbound.includeUnits).toEqual([
      { name: 'app.service', cgroup: '/meshtest.slice/app.service' },
    ]);
  });

  it('refuses a hostile or unknown unit with CONFIG_INVALID naming the field, the index and the value', () => {
    const message = configError(() => load({ excludeUnits: ['app.service', 'a b;reboot.service', 'ghost.service'] }));
    expect(message).toMatch(/^CONFIG_INVALID: 2 problems/);
    expect(message).toContain(
      'capture.outbound.excludeUnits[1] (rules/examples/units.json): "a b;reboot.service" holds',
    );
    expect(message).toContain(
      'capture.outbound.excludeUnits[2] (rules/examples/units.json): unit "ghost.service" is not known',
    );
  });

  it('refuses includeUnits together with excludeUnits, and a non-string through the schema', () => {
    expect(configError(() => load({ includeUnits: ['app.service'], excludeUnits: ['backup.service'] }))).toMatch(
      /capture\.outbound\.includeUnits .*cannot be combined with capture\.outbound\.excludeUnits/,
    );
    expect(configError(() => load({ excludeUnits: [7] }))).toMatch(/^CONFIG_INVALID: .*excludeUnits/);
    expect(configError(() => load({ includeUnits: [] }))).toMatch(/^CONFIG_INVALID: .*includeUnits/);
  });
});

describe('plan and rendering', () => {
  const exclude = cases.find((c) => c.name === 'units-exclude')!.config;
  const include = cases.find((c) => c.name === 'units-include')!.config;

  it('puts unit exemptions first among the owner exemptions, in outbound, DNS and IPv6 block', () => {
    const plan = planCapture(exclude);
    const chainsWithUnits = plan.families.flatMap((f) =>
      f.rules.filter((r) => r.purpose === 'skip-unit').map((r) => `${f.family} ${r.chain} ${r.origin}`),
    );
    expect(chainsWithUnits).toEqual([
      'ipv4 MESHCTL_DNS capture.outbound.excludeUnits[0] (backup.service)',
      'ipv4 MESHCTL_DNS capture.outbound.excludeUnits[1] (metrics.service)',
      'ipv4 MESHCTL_OUTPUT capture.outbound.excludeUnits[0] (backup.service)',
      'ipv4 MESHCTL_OUTPUT capture.outbound.excludeUnits[1] (metrics.service)',
      'ipv6 MESHCTL_BLOCK_OUT capture.outbound.excludeUnits[0] (backup.service)',
      'ipv6 MESHCTL_BLOCK_OUT capture.outbound.excludeUnits[1] (metrics.service)',
    ]);
  });

  it('leaves out the rule of a unit that is not running (the kernel refuses a path that does not exist)', () => {
    const rules = (missing: string[]) =>
      planCapture(exclude, { missingUnits: new Set(missing) })
        .families.find((f) => f.family === 'ipv4')!
        .rules.filter((r) => r.chain === 'MESHCTL_OUTPUT' && r.purpose === 'skip-unit')
        .map((r) => r.origin);
    expect(rules([])).toHaveLength(2);
    expect(rules(['backup.service'])).toEqual(['capture.outbound.excludeUnits[1] (metrics.service)']);
    // includeUnits with its unit not running: nothing of it can be captured, so every socket returns.
    const allow = planCapture(include, { missingUnits: new Set(['app.service']) }).families[0]!.rules.find(
      (r) => r.purpose === 'skip-unit-not-included',
    )!;
    expect(allow.matches).toEqual([]);
  });

  it('renders -m cgroup --path for iptables and parses it back (negated too)', () => {
    const v4 = planCapture(include).families.find((f) => f.family === 'ipv4')!;
    const text = renderIptablesRestore(v4);
    expect(text).toContain(
      '-A MESHCTL_OUTPUT -m cgroup ! --path "/meshtest.slice/app.service" -m comment --comment "meshctl:skip-unit-not-included" -j RETURN',
    );
    const saved = parseSave(text)
      .tables.flatMap((t) => t.rules)
      .find((r) => r.comment === 'meshctl:skip-unit-not-included')!;
    expect(saved.rule!.matches).toEqual([{ kind: 'cgroup', path: '/meshtest.slice/app.service', negate: true }]);
    const unquoted = parseSave('*nat\n:X - [0:0]\n-A X -m cgroup --path system.slice/a.service -j RETURN\nCOMMIT\n');
    expect(unquoted.tables[0]!.rules[0]!.rule!.matches).toEqual([{ kind: 'cgroup', path: '/system.slice/a.service' }]);
  });

  it('renders socket cgroupv2 for nft, and parses a path, a negation and an id (a cgroup nft could not name)', () => {
    expect(renderNft(planCapture(exclude))).toContain(
      'socket cgroupv2 level 2 "meshtest.slice/backup.service" return comment "meshctl:skip-unit"',
    );
    const parse = (text: string) => parseNftRule(text, 'ipv4', (c) => c);
    expect(parse('socket cgroupv2 level 2 "a.slice/b.service" return')).toMatchObject({
      kind: 'rule',
      matches: [{ kind: 'cgroup', path: '/a.slice/b.service' }],
    });
    expect(parse('socket cgroupv2 level 2 != "a.slice/b.service" return')).toMatchObject({
      matches: [{ kind: 'cgroup', path: '/a.slice/b.service', negate: true }],
    });
    expect(parse('socket cgroupv2 level 2 26017 return')).toMatchObject({
      matches: [{ kind: 'cgroup', path: '', id: 26017 }],
    });
    expect(parse('socket cgroupv2 level 3 "a.slice/b.service" return')).toMatchObject({ kind: 'unevaluable' });
  });

  it('refuses includeUnits on nftables (its negated cgroupv2 match misses shallower cgroups), naming the field', () => {
    expect(configError(() => renderNft(planCapture(include)))).toMatch(
      /^CONFIG_INVALID: capture\.outbound\.includeUnits \(app\.service\) cannot be honoured by the nftables backend/,
    );
  });
});

describe('explain with a unit', () => {
  const flow = (cgroup?: string): Flow => ({
    direction: 'outbound',
    protocol: 'tcp',
    destination: { address: '93.184.216.34', port: 443 },
    uid: 1000,
    gid: 1000,
    ...(cgroup ? { cgroup } : {}),
  });
  const verdict = (name: string, cgroup?: string) =>
    explainFlow(planCapture(cases.find((c) => c.name === name)!.config), flow(cgroup), host);

  it('excludeUnits: the unit and cgroups below it go direct, others are captured', () => {
    const e = verdict('units-exclude', TEST_UNITS['backup.service']);
    expect(e.verdict).toBe('bypassed');
    expect(e.decidedBy).toMatchObject({
      purpose: 'skip-unit',
      origin: 'capture.outbound.excludeUnits[0] (backup.service)',
    });
    expect(e.packet.cgroup).toBe('/meshtest.slice/backup.service');
    expect(verdict('units-exclude', `${TEST_UNITS['backup.service']}/worker`).verdict).toBe('bypassed');
    expect(verdict('units-exclude', TEST_UNITS['app.service']).verdict).toBe('redirected');
    expect(verdict('units-exclude', '/meshtest.slice/backup.service2').verdict).toBe('redirected');
  });

  it('includeUnits: only the unit is captured', () => {
    expect(verdict('units-include', TEST_UNITS['app.service']).verdict).toBe('redirected');
    const other = verdict('units-include', '/user.slice/session-1.scope');
    expect(other.verdict).toBe('bypassed');
    expect(other.decidedBy).toMatchObject({ purpose: 'skip-unit-not-included' });
    expect(verdict('units-include', '/').verdict).toBe('bypassed');
  });

  it('says when the flow gives no cgroup, so unit rules could not match', () => {
    const e = verdict('units-include');
    expect(e.verdict).toBe('redirected');
    expect(e.assumptions).toContain(
      "the socket's cgroup is unknown; unit rules (excludeUnits/includeUnits) cannot match — pass --unit",
    );
    expect(verdict('units-include', TEST_UNITS['app.service']).assumptions.join('\n')).not.toMatch(/cgroup is unknown/);
  });
});

describe('keeping units in step', () => {
  it('finds the cgroup v2 mount in mountinfo (unified, hybrid, none)', () => {
    const unified =
      '30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n';
    const hybrid =
      '25 24 0:22 / /sys/fs/cgroup ro,nosuid shared:5 - tmpfs tmpfs ro,mode=755\n' +
      '26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:6 - cgroup2 cgroup2 rw\n' +
      '27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:7 - cgroup cgroup rw,name=systemd\n';
    expect(cgroup2Mount(unified)).toBe('/sys/fs/cgroup');
    expect(cgroup2Mount(hybrid)).toBe('/sys/fs/cgroup/unified');
    expect(cgroup2Mount('27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n')).toBeNull();
  });

  it('compares the ids the rules were loaded for with the units’ cgroups now', () => {
    const loaded = [
      { name: 'a.service', cgroup: '/s/a.service', id: 10 },
      { name: 'b.service', cgroup: '/s/b.service', id: 20 },
      { name: 'c.service', cgroup: '/s/c.service', id: null },
      { name: 'd.service', cgroup: '/s/d.service', id: 40 },
    ];
    const live = [
      { name: 'a.service', cgroup: '/s/a.service', id: 10 },
      { name: 'b.service', cgroup: '/s/b.service', id: 21 },
      { name: 'c.service', cgroup: '/s/c.service', id: 30 },
      { name: 'd.service', cgroup: '/s/d.service', id: null },
    ];
    const report = compareUnits(loaded, live);
    expect(report.map((u) => `${u.name} ${u.step}`)).toEqual([
      'a.service in-step',
      'b.service stale',
      'c.service stale',
      'd.service not-running',
    ]);
    expect(describeUnit(report[1]!)).toMatch(
      /b\.service: STALE — the rules match cgroup id 20, the unit now runs in id 21/,
    );
    expect(describeUnit(report[2]!)).toMatch(/c\.service: STALE — .*not running when the rules were loaded/);
    expect(sameUnitCgroups(loaded, live)).toBe(false);
    expect(sameUnitCgroups(live, live)).toBe(true);
    // A unit loaded for another path (the config changed) is not in step either.
    expect(compareUnits([{ name: 'a.service', cgroup: '/old/a.service', id: 10 }], [live[0]!])[0]!.step).toBe('stale');
  });

  it('puts a cgroup path back where nft could only show an id, and leaves an id no cgroup has', () => {
    const mount = mkdtempSync(join(tmpdir(), 'cu-cgroup-'));
    mkdirSync(join(mount, 'meshtest.slice', 'backup.service'), { recursive: true });
    const id = statSync(join(mount, 'meshtest.slice', 'backup.service')).ino;
    const listing = `\t\tsocket cgroupv2 level 2 ${id} return comment "meshctl:skip-unit"\n\t\tsocket cgroupv2 level 2 != 1 return\n`;
    expect(resolveNftCgroupIds(listing, mount)).toBe(
      `\t\tsocket cgroupv2 level 2 "meshtest.slice/backup.service" return comment "meshctl:skip-unit"\n\t\tsocket cgroupv2 level 2 != 1 return\n`,
    );
  });

  it('refuses unit lists on nftables where nft cannot see the cgroup hierarchy, naming why', () => {
    const config = loadCase('units-nft', {
      proxy: { user: 'meshproxy' },
      capture: { backend: 'nftables', outbound: { excludeUnits: ['backup.service'] } },
    });
    expect(configError(() => refuseNftUnits(config, 'ns1', '/sys/fs/cgroup'))).toMatch(
      /CONFIG_INVALID: capture\.outbound\.excludeUnits \(backup\.service\) cannot be honoured by the nftables backend here: .*ip netns exec ns1/,
    );
    expect(configError(() => refuseNftUnits(config, null, '/sys/fs/cgroup/unified'))).toMatch(
      /mounted at \/sys\/fs\/cgroup\/unified, not at \/sys\/fs\/cgroup/,
    );
    expect(() => refuseNftUnits(config, null, '/sys/fs/cgroup')).not.toThrow();
  });

  it('writes one drop-in per unit that runs `units refresh` before the unit starts, and removes only its own', () => {
    const root = mkdtempSync(join(tmpdir(), 'cu-dropins-'));
    const options = {
      stateDir: '/var/lib/mesh ctl',
      netns: 'lab1',
      command: ['/usr/bin/node', '/opt/meshctl/bin/meshctl'],
      root,
    };
    expect(renderUnitDropin(options)).toBe(
      '# meshctl units drop-in: keeps capture.outbound.excludeUnits/includeUnits in step\n[Service]\n' +
        'ExecStartPre=+/usr/bin/node /opt/meshctl/bin/meshctl units refresh --state-dir "/var/lib/mesh ctl" --netns lab1\n',
    );
    const first = syncUnitDropins(['a.service', 'b.service'], options);
    expect(first.written).toEqual([unitDropinPath('a.service', options), unitDropinPath('b.service', options)]);
    expect(unitDropinPath('a.service', options)).toBe(join(root, 'a.service.d', '50-meshctl-units-netns-lab1.conf'));
    expect(syncUnitDropins(['a.service', 'b.service'], options)).toEqual({ written: [], removed: [] });
    // Another drop-in of the unit, and another scope's, are not ours to remove.
    writeFileSync(join(root, 'b.service.d', 'override.conf'), '[Service]\nNice=5\n');
    syncUnitDropins(['c.service'], { ...options, netns: null });
    const next = syncUnitDropins(['a.service'], options);
    expect(next).toEqual({ written: [], removed: [unitDropinPath('b.service', options)] });
    expect(readdirSync(join(root, 'b.service.d'))).toEqual(['override.conf']);
    expect(removeUnitDropins(options).removed).toEqual([unitDropinPath('a.service', options)]);
    expect(readdirSync(root).sort()).toEqual(['b.service.d', 'c.service.d']);
    expect(readFileSync(join(root, 'c.service.d', '50-meshctl-units-host.conf'), 'utf8')).toContain(
      'units refresh --state-dir "/var/lib/mesh ctl"\n',
    );
  });
});
