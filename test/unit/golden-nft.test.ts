// Golden files: the nft script of every example. `npx vitest run -u` rewrites them; review the diff.
import { describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { renderNft } from '../../src/capture/render-nft.js';
import { isMeshctlError } from '../../src/errors.js';
import { cases } from '../cases.js';

describe('nft golden files', () => {
  it.each(cases)('renders $name as the nft script the golden file says', async ({ name, config }) => {
    // A config nftables cannot honour (supplementary groups) is refused; the golden file holds the refusal.
    let text: string;
    try {
      text = renderNft(planCapture(config));
    } catch (error) {
      if (!isMeshctlError(error)) throw error;
      text = `# refused (${error.code}): ${error.message}\n# hint: ${error.hint}\n`;
    }
    await expect(text).toMatchFileSnapshot(`../golden/${name}.nft`);
  });
});
