// Types for prerequisites.mjs (plain JS so that node runs it before the build).
export declare const TOOLS: Readonly<Record<string, string>>;
export declare const APT_LINE: string;
export declare function integrationWanted(env?: NodeJS.ProcessEnv, uid?: number): boolean;
export declare function missingPrerequisite(options?: { env?: NodeJS.ProcessEnv; uid?: number; requireRoot?: boolean }): string | null;
export default function setup(): void;
