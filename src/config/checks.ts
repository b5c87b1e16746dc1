// The rules between fields that the schema cannot express, run in this order once every field has resolved. Each
// check is small and named; it returns its problems (path in the file, message), and `unsafe` problems (capturing
// SSH) stop the load with UNSAFE_CONFIG instead of CONFIG_INVALID, since a flag can knowingly allow them.
import { cidrText } from '../values/ip.js';
import type { PortRange } from '../values/ports.js';
import { portInRanges, portText, rangesOverlap } from '../values/ports.js';
import type { ConfigBody } from './fields.js';
import type { PortSelection } from './types.js';

export interface CheckProblem {
  readonly path: string;
  readonly message: string;
  /** Set for a choice that can lock the operator out: the load fails with UNSAFE_CONFIG and this hint. */
  readonly unsafe?: { readonly hint: string };
}

export interface CheckInput {
  readonly config: ConfigBody;
  /** Whether the file or a flag set this path (rather than a default or a derivation). */
  given(path: string): boolean;
}

export interface Check {
  readonly name: string;
  readonly run: (input: CheckInput) => CheckProblem[];
}

/** The proxy's own listening ports, named by their fields (the DNS port only while DNS capture is on). */
function proxyPorts(config: ConfigBody): [string, number][] {
  const named: [string, number][] = [
    ['proxy.outboundPort', config.proxy.outboundPort],
    ['proxy.inboundPort', config.proxy.inboundPort],
    ['proxy.adminPort', config.proxy.adminPort],
  ];
  if (config.capture.dns.enabled) named.push(['capture.dns.port', config.capture.dns.port]);
  if (config.mtls.inbound !== 'disable') named.push(['mtls.tunnelPort', config.mtls.tunnelPort]);
  return named;
}

/** Exempting uid 0 from capture would let every root process bypass the mesh. */
function proxyUserNotRoot({ config }: CheckInput): CheckProblem[] {
  if (config.proxy.user.uid !== 0) return [];
  return [
    {
      path: 'proxy.user',
      message:
        'the proxy must not run as root (uid 0): exempting uid 0 from capture would let every root process bypass the mesh; use a dedicated user such as "meshproxy"',
    },
  ];
}

function proxyGroupNotRoot({ config, given }: CheckInput): CheckProblem[] {
  const { uid, gid } = config.proxy.user;
  if (gid !== 0 || uid === 0) return [];
  return [
    {
      path: given('proxy.group') ? 'proxy.group' : 'proxy.user',
      message:
        "the proxy's group is root (gid 0): exempting gid 0 would let root-group processes bypass the mesh; give the proxy user its own group",
    },
  ];
}

function portsDistinct({ config }: CheckInput): CheckProblem[] {
  const named = proxyPorts(config);
  return named.flatMap(([earlier, port], i) =>
    named
      .slice(i + 1)
      .filter(([, other]) => other === port)
      .map(([path]) => ({ path, message: `port ${port} is also ${earlier}; each proxy port must be distinct` })),
  );
}

function portConflicts(
  includePath: string,
  include: PortSelection,
  excludePath: string,
  exclude: readonly PortRange[],
): CheckProblem[] {
  if (include === 'all') return [];
  return include.flatMap((inc, i) =>
    exclude.flatMap((exc, j) =>
      rangesOverlap(inc, exc)
        ? [
            {
              path: `${includePath}[${i}]`,
              message: `port ${portText(inc)} is also excluded by ${excludePath}[${j}] (${portText(exc)}); a port cannot be both included and excluded`,
            },
          ]
        : [],
    ),
  );
}

function includedPortsNotExcluded({ config: { capture } }: CheckInput): CheckProblem[] {
  return [
    ...portConflicts(
      'capture.inbound.includePorts',
      capture.inbound.includePorts,
      'capture.inbound.excludePorts',
      capture.inbound.excludePorts,
    ),
    ...portConflicts(
      'capture.outbound.includePorts',
      capture.outbound.includePorts,
      'capture.outbound.excludePorts',
      capture.outbound.excludePorts,
    ),
  ];
}

function includedCidrsNotExcluded({ config: { capture } }: CheckInput): CheckProblem[] {
  const { includeCidrs, excludeCidrs } = capture.outbound;
  if (includeCidrs === 'all') return [];
  return includeCidrs.flatMap((inc, i) => {
    const j = excludeCidrs.findIndex(
      (exc) => exc.family === inc.family && exc.address === inc.address && exc.prefix === inc.prefix,
    );
    return j < 0
      ? []
      : [
          {
            path: `capture.outbound.includeCidrs[${i}]`,
            message: `${cidrText(inc)} is also in capture.outbound.excludeCidrs[${j}]; a CIDR cannot be both included and excluded`,
          },
        ];
  });
}

function groupAllowListAlone({ config: { capture } }: CheckInput): CheckProblem[] {
  if (capture.outbound.includeGids === 'all' || capture.outbound.excludeGids.length === 0) return [];
  return [
    {
      path: 'capture.outbound.includeGids',
      message:
        'cannot be combined with capture.outbound.excludeGids: with an allow-list of groups, every other group is already excluded',
    },
  ];
}

function unitAllowListAlone({ config: { capture } }: CheckInput): CheckProblem[] {
  if (capture.outbound.includeUnits === 'all' || capture.outbound.excludeUnits.length === 0) return [];
  return [
    {
      path: 'capture.outbound.includeUnits',
      message:
        'cannot be combined with capture.outbound.excludeUnits: with an allow-list of units, every other unit is already excluded',
    },
  ];
}

function proxyPortsNotCaptured({ config }: CheckInput): CheckProblem[] {
  const include = config.capture.inbound.includePorts;
  if (include === 'all') return [];
  const named = proxyPorts(config);
  return include.flatMap((range, i) => {
    const hits = named.filter(([, port]) => portInRanges(port, [range])).map(([name, port]) => `${name} ${port}`);
    return hits.length === 0
      ? []
      : [
          {
            path: `capture.inbound.includePorts[${i}]`,
            message: `includes ${hits.join(', ')}: the proxy's own ports are never captured`,
          },
        ];
  });
}

/** Inbound capture of the SSH ports (configured, else those sshd listens on) can lock the operator out. */
function sshNotCaptured({ config: { capture, safety } }: CheckInput): CheckProblem[] {
  const include = capture.inbound.includePorts;
  if (safety.unsafeCaptureSsh || include === 'all') return [];
  return include.flatMap((range, i) => {
    const hit = safety.sshPorts.find((p) => portInRanges(p, [range]));
    if (hit === undefined) return [];
    return [
      {
        path: `capture.inbound.includePorts[${i}]`,
        message: `${portText(range)} includes SSH port ${hit} (safety.sshPorts from ${safety.sshPortsSource}); capturing it can lock you out`,
        unsafe: {
          hint: 'remove the SSH port from includePorts; only if you are sure, pass --unsafe-capture-ssh (safety.unsafeCaptureSsh: true)',
        },
      },
    ];
  });
}

/** An mTLS inbound mode or mesh peers need this proxy's identity: all three files, or none. */
function mtlsIdentityComplete({ config: { mtls } }: CheckInput): CheckProblem[] {
  const files = Object.entries(mtls.identity);
  const given = files.filter(([, f]) => f !== null);
  if (given.length > 0 && given.length < files.length) {
    return files
      .filter(([, f]) => f === null)
      .map(([name]) => ({
        path: `mtls.identity.${name}`,
        message: `is not set, but mtls.identity has ${given.map(([n]) => n).join(' and ')}: give the certificate, key and bundle files together`,
      }));
  }
  if (given.length > 0) return [];
  const needs: [string, boolean][] = [
    ['mtls.inbound', mtls.inbound !== 'disable'],
    ['mtls.peers', mtls.peers.length > 0],
  ];
  return needs
    .filter(([, needed]) => needed)
    .map(([path]) => ({
      path,
      message: `${path === 'mtls.inbound' ? `"${mtls.inbound}"` : 'mesh peers'} needs this proxy's identity: set mtls.identity.certificate, key and bundle (meshctl ca issue writes them)`,
    }));
}

export const CHECKS: readonly Check[] = [
  { name: 'proxyUserNotRoot', run: proxyUserNotRoot },
  { name: 'proxyGroupNotRoot', run: proxyGroupNotRoot },
  { name: 'portsDistinct', run: portsDistinct },
  { name: 'includedPortsNotExcluded', run: includedPortsNotExcluded },
  { name: 'includedCidrsNotExcluded', run: includedCidrsNotExcluded },
  { name: 'groupAllowListAlone', run: groupAllowListAlone },
  { name: 'unitAllowListAlone', run: unitAllowListAlone },
  { name: 'proxyPortsNotCaptured', run: proxyPortsNotCaptured },
  { name: 'sshNotCaptured', run: sshNotCaptured },
  { name: 'mtlsIdentityComplete', run: mtlsIdentityComplete },
];

/**
 * A service marked `mtls` on a proxy without an identity would silently go in plaintext: refused, naming the
 * service (services may come from the control plane, so this runs once the policy sections are resolved).
 */
export function mtlsServicesHaveIdentity(
  config: Pick<ConfigBody, 'mtls'>,
  services: readonly { readonly name: string; readonly mtls: boolean }[],
): CheckProblem[] {
  if (config.mtls.identity.certificate !== null) return [];
  return services.flatMap((s, i) =>
    s.mtls
      ? [
          {
            path: `services[${i}].mtls`,
            message: `service "${s.name}" goes through the mTLS tunnel, but this proxy has no identity: set mtls.identity.certificate, key and bundle`,
          },
        ]
      : [],
  );
}

/** Runs every check in order and returns all their problems. */
export function runChecks(input: CheckInput): CheckProblem[] {
  return CHECKS.flatMap((check) => check.run(input));
}
