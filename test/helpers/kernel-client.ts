// Client process for the explain-vs-kernel test, started inside a test namespace as root; it drops to the flow's
// uid/gid (so the owner matches see that socket owner), makes every flow concurrently (TCP connect, or one UDP
// datagram), and prints one JSON array: what answered each flow (the observer's JSON line) or the error code.
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';

export interface ClientFlow {
  readonly id: string;
  readonly protocol: 'tcp' | 'udp';
  readonly address: string;
  readonly port: number;
  readonly localAddress?: string;
}

export interface ClientSpec {
  readonly uid: number;
  readonly gid: number;
  /** Supplementary groups (default none), as `setpriv --groups` would set them. */
  readonly groups?: readonly number[];
  /**
   * The cgroup.procs file of the cgroup v2 to run in (a systemd unit's): runClient joins it before `ip netns exec`,
   * which mounts a /sys without cgroups.
   */
  readonly cgroupProcs?: string;
  readonly flows: readonly ClientFlow[];
  readonly timeoutMs: number;
}

export interface ClientResult {
  readonly id: string;
  /** The observer's JSON answer. */
  readonly answer?: Record<string, unknown>;
  /** UDP: the address the reply came from (after reverse NAT). */
  readonly from?: { readonly address: string; readonly port: number };
  readonly error?: string;
}

function tcpFlow(flow: ClientFlow, timeoutMs: number): Promise<ClientResult> {
  return new Promise((resolve) => {
    let data = '';
    let done = false;
    const finish = (result: ClientResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const socket = connect({
      host: flow.address,
      port: flow.port,
      ...(flow.localAddress ? { localAddress: flow.localAddress } : {}),
    });
    const timer = setTimeout(() => finish({ id: flow.id, error: data ? 'PARTIAL' : 'TIMEOUT' }), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      data += chunk;
      const line = data.split('\n')[0];
      if (data.includes('\n') && line) finish({ id: flow.id, answer: JSON.parse(line) as Record<string, unknown> });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => finish({ id: flow.id, error: error.code ?? error.message }));
    socket.on('end', () => finish({ id: flow.id, error: 'EOF' }));
  });
}

function udpFlow(flow: ClientFlow, timeoutMs: number): Promise<ClientResult> {
  return new Promise((resolve) => {
    const socket = createSocket(isIPv6(flow.address) ? 'udp6' : 'udp4');
    const timer = setTimeout(() => finish({ id: flow.id, error: 'TIMEOUT' }), timeoutMs);
    let done = false;
    const finish = (result: ClientResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.close();
      resolve(result);
    };
    socket.on('message', (msg, rinfo) => {
      finish({
        id: flow.id,
        answer: JSON.parse(msg.toString('utf8').split('\n')[0]!) as Record<string, unknown>,
        from: { address: rinfo.address, port: rinfo.port },
      });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => finish({ id: flow.id, error: error.code ?? error.message }));
    const send = () =>
      socket.send(
        'query\n',
        flow.port,
        flow.address,
        (error) => error && finish({ id: flow.id, error: (error as NodeJS.ErrnoException).code ?? error.message }),
      );
    if (flow.localAddress) socket.bind(0, flow.localAddress, send);
    else send();
  });
}

async function main(): Promise<void> {
  if (process.argv[2] === '--warm') return; // only loads the modules (fills the transpile cache)
  const spec = JSON.parse(process.argv[2] ?? '{}') as ClientSpec;
  process.setgroups!([...(spec.groups ?? [])]);
  process.setgid!(spec.gid);
  process.setuid!(spec.uid);
  const results = await Promise.all(
    spec.flows.map((f) => (f.protocol === 'tcp' ? tcpFlow(f, spec.timeoutMs) : udpFlow(f, spec.timeoutMs))),
  );
  process.stdout.write(`${JSON.stringify(results)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`client failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
