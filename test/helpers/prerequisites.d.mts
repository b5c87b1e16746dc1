// Types for prerequisites.mjs (plain JS so that node runs it before the build).
export declare const TOOLS: Readonly<Record<string, string>>;
export declare const APT_LINE: string;
/** The first file of the checkout at `root` (with a trailing slash) uid 65534 cannot read, or null. */
export declare function unreadableByProxyUser(root?: string): string | null;
export declare function integrationWanted(env?: NodeJS.ProcessEnv, uid?: number): boolean;
export declare function missingPrerequisite(options?: {
  env?: NodeJS.ProcessEnv;
  uid?: number;
  requireRoot?: boolean;
}): string | null;
export default function setup(): void;
