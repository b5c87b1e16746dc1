// Types for dns-upstream.mjs (plain JS so that it runs with plain node in a namespace).
export interface ZoneEntry {
  readonly ttl?: number;
  readonly A?: readonly string[];
  readonly AAAA?: readonly string[];
  readonly txt?: number;
  readonly rcode?: 'NOERROR' | 'SERVFAIL' | 'NXDOMAIN' | 'REFUSED';
  readonly truncate?: boolean;
}
export interface Zone {
  names: Record<string, ZoneEntry>;
  negativeTtl?: number;
  silent?: boolean;
}
export interface UpstreamQuery {
  readonly name: string;
  readonly type: string;
  readonly transport: 'udp' | 'tcp';
  readonly from: string;
}
export interface TestUpstream {
  readonly port: number;
  readonly zone: Zone;
  readonly queries: UpstreamQuery[];
  onQuery: ((q: UpstreamQuery) => void) | null;
  close(): Promise<void>;
}
export declare function answerFor(zone: Zone, buf: Buffer, transport: 'udp' | 'tcp'): Buffer;
export declare function startUpstream(zone: Zone, host?: string, port?: number): Promise<TestUpstream>;
