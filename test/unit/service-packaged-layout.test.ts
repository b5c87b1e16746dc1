// The Debian package's layout (src/service/layout.ts, PACKAGED_LAYOUT): the units, sysusers file and default config
// the package build renders from the shipped files, and where `meshctl service install` then puts its drop-ins.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/load.js';
import type { HostFacts } from '../../src/config/host-facts.js';
import {
  DEFAULT_CONFIG_TEXT,
  DEFAULT_LAYOUT,
  PACKAGED_LAYOUT,
  PACKAGED_MARKER,
  PACKAGE_ROOT,
  SHIPPED_SYSUSERS,
  SHIPPED_UNIT_DIR,
  UNITS,
  UNIT_ORDER,
  layoutFor,
  renderDropIns,
  renderShipped,
} from '../../src/service/layout.js';

const host: HostFacts = {
  userDb: {
    user: (ref) => (ref === 'meshproxy' ? { name: 'meshproxy', uid: 997, gid: 997 } : null),
    group: () => ({ name: 'meshproxy', gid: 997 }),
  },
  detectSshPorts: () => ({ ports: [22], source: 'default' }),
};
const shipped = (unit: string) => readFileSync(join(SHIPPED_UNIT_DIR, unit), 'utf8');
const execLines = (text: string) => text.split('\n').filter((l) => /^Exec\w+=/.test(l));

describe('the packaged layout', () => {
  it('renders every shipped unit with the package launcher in each Exec line and nothing else changed', () => {
    for (const key of UNIT_ORDER) {
      const text = shipped(UNITS[key]);
      const rendered = renderShipped(text, PACKAGED_LAYOUT);
      expect(rendered).not.toContain('/usr/local/bin/meshctl');
      for (const line of execLines(rendered).filter((l) => l.includes('meshctl ')))
        expect(line).toMatch(/^Exec\w+=\/usr\/bin\/meshctl /);
      expect(rendered.replaceAll('/usr/bin/meshctl', '/usr/local/bin/meshctl')).toBe(text);
      expect(renderShipped(text, DEFAULT_LAYOUT)).toBe(text);
    }
    // Capture: install, reload and uninstall run meshctl; the one other line creates iptables' lock (privileged "+").
    const captureExec = execLines(renderShipped(shipped(UNITS.capture), PACKAGED_LAYOUT));
    expect(captureExec.filter((l) => l.includes('/usr/bin/meshctl '))).toHaveLength(3);
    expect(captureExec.filter((l) => !l.includes('/usr/bin/meshctl '))).toEqual([
      "ExecStartPre=+/bin/sh -c 'umask 077 && : >>/run/xtables.lock'",
    ]);
  });

  it('names the package paths in the sysusers file and the default config, which still loads', () => {
    expect(renderShipped(readFileSync(SHIPPED_SYSUSERS, 'utf8'), PACKAGED_LAYOUT)).toMatch(/^u\s+meshproxy\s/m);
    const config = renderShipped(DEFAULT_CONFIG_TEXT, PACKAGED_LAYOUT);
    expect(config).toContain('/usr/lib/sysusers.d/meshctl.conf');
    expect(config).not.toContain('/etc/sysusers.d');
    expect(configFromObject(parse(config), { host }).proxy.user.name).toBe('meshproxy');
  });

  it('puts the drop-ins in /etc while the units stay in the vendor directory', () => {
    const config = configFromObject(parse(DEFAULT_CONFIG_TEXT), { host });
    for (const dropIn of renderDropIns(config, PACKAGED_LAYOUT)) {
      expect(dropIn.path).toBe(`/etc/systemd/system/${dropIn.unit}.d/10-meshctl-config.conf`);
    }
    expect(PACKAGED_LAYOUT.unitDir).toBe('/usr/lib/systemd/system');
    expect(renderDropIns(config, DEFAULT_LAYOUT).map((d) => d.path)).toEqual(
      renderDropIns(config, PACKAGED_LAYOUT).map((d) => d.path),
    );
  });

  it('applies when the package build left its marker in the tree, and only then', () => {
    expect(layoutFor('deb')).toBe(PACKAGED_LAYOUT);
    expect(layoutFor(null)).toBe(DEFAULT_LAYOUT);
    expect(PACKAGED_LAYOUT.owner).toBe('package');
    expect(DEFAULT_LAYOUT.owner).toBe('meshctl');
    expect(PACKAGED_MARKER).toBe(join(PACKAGE_ROOT, 'packaged-by'));
  });
});
