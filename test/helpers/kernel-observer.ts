// Listener process for the explain-vs-kernel test, started inside a test namespace (see kernel-lab.ts). It listens
// on TCP and UDP ports of both families and answers every connection or datagram with one JSON line saying what it
// saw: which listener took it, the socket's local and remote address, and (TCP) the original destination read with
// readOriginalDst (SO_ORIGINAL_DST through the project's addon). Run with kernel-ts-register.mjs; argv[2] is the spec.
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { readOriginalDst } from '../../src/native/original-dst.js';

export interface ObserverSpec {
  readonly where: 'host' | 'peer';
  readonly tcp: readonly number[];
  readonly udp: readonly number[];
  /** Port of the transparent (TPROXY) listening sockets passed in as fds via MG_TRANSPARENT_FDS. */
  readonly transparentPort?: number;
  /** UDP: bind each port on these addresses (replies then come from the address asked), instead of the wildcard. */
  readonly udpAddresses?: readonly string[];
  /** Run as this uid/gid (the proxy's user, as the real proxy runs); TPROXY fds are created before, as root. */
  readonly runAs?: { readonly uid: number; readonly gid: number };
}

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface ObservedConnection {
  readonly where: 'host' | 'peer';
  readonly listener: number;
  readonly transparent: boolean;
  readonly local: Endpoint;
  readonly remote: Endpoint;
  readonly orig: Endpoint | null;
  readonly origError: string | null;
}

const unmap = (address: string | undefined): string => (address ?? '?').replace(/^::ffff:/, '');

function answer(spec: ObserverSpec, listener: number, transparent: boolean, socket: Socket): void {
  let orig: Endpoint | null = null;
  let origError: string | null = null;
  try {
    const dst = readOriginalDst(socket);
    orig = { address: dst.address, port: dst.port };
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause;
    origError = cause?.code ?? (error as Error).message;
  }
  const record: ObservedConnection = {
    where: spec.where,
    listener,
    transparent,
    local: { address: unmap(socket.localAddress), port: socket.localPort ?? -1 },
    remote: { address: unmap(socket.remoteAddress), port: socket.remotePort ?? -1 },
    orig,
    origError,
  };
  socket.on('error', () => socket.destroy());
  socket.end(`${JSON.stringify(record)}\n`);
}

async function main(): Promise<void> {
  if (process.argv[2] === '--warm') return; // only loads the modules (fills the transpile cache)
  const spec = JSON.parse(process.argv[2] ?? '{}') as ObserverSpec;
  // Drop first, so every socket belongs to the proxy's user as the real proxy's would (the DNS conntrack-zone rules
  // match replies by socket owner). Low ports need net.ipv4.ip_unprivileged_port_start=0 in the namespace.
  if (spec.runAs) {
    process.setgroups!([]);
    process.setgid!(spec.runAs.gid);
    process.setuid!(spec.runAs.uid);
  }
  const servers: Server[] = [];
  const sockets: UdpSocket[] = [];
  const listening: Promise<void>[] = [];
  const listen = (server: Server, options: object) =>
    listening.push(
      new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(options, () => resolve());
      }),
    );

  for (const port of spec.tcp) {
    for (const host of ['0.0.0.0', '::']) {
      const server = createServer((socket) => answer(spec, port, false, socket));
      servers.push(server);
      listen(server, { host, port, ipv6Only: host === '::', exclusive: true });
    }
  }
  if (spec.transparentPort !== undefined) {
    for (const fd of (process.env.MG_TRANSPARENT_FDS ?? '').split(',').filter(Boolean).map(Number)) {
      const server = createServer((socket) => answer(spec, spec.transparentPort!, true, socket));
      servers.push(server);
      listen(server, { fd });
    }
  }
  const udpBinds = spec.udpAddresses ?? ['0.0.0.0', '::'];
  for (const port of spec.udp) {
    for (const address of udpBinds) {
      const type = address.includes(':') ? 'udp6' : 'udp4';
      const socket = createSocket({ type, ipv6Only: type === 'udp6' });
      sockets.push(socket);
      socket.on('message', (_msg, rinfo) => {
        const reply = JSON.stringify({
          where: spec.where,
          listener: port,
          local: address,
          remote: { address: unmap(rinfo.address), port: rinfo.port },
        });
        socket.send(`${reply}\n`, rinfo.port, rinfo.address);
      });
      listening.push(
        new Promise((resolve, reject) => {
          socket.once('error', reject);
          socket.bind(port, address, () => resolve());
        }),
      );
    }
  }
  await Promise.all(listening);
  process.stdout.write('READY\n');
  // Lives until the test closes stdin (or kills it).
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}

main().catch((error: unknown) => {
  process.stderr.write(`observer failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
