// The control plane's URL check, shared by the schema format and the poller: http or https, a host, nothing else.

/** Returns null for a usable http(s) URL, otherwise the reason. */
export function checkHttpUrl(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return `"${text}" is not a URL (e.g. https://mesh.example/policy.json)`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    return `"${text}" must be an http:// or https:// URL, got ${url.protocol}`;
  if (url.hostname === '') return `"${text}" has no host`;
  if (url.username !== '' || url.password !== '')
    return `"${text}" must not carry credentials (they would show in /config and logs)`;
  return null;
}
