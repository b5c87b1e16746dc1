// Golden files: the nft script of every example. `npx vitest run -u` rewrites them; review the diff.
import { describe, expect, it } from 'vitest';
import { planCapture } from '../../src/capture/plan.js';
import { renderNft } from '../../src/capture/render-nft.js';
import { cases } from '../cases.js';

describe('nft golden files', () => {
  it.each(cases)('renders $name as the nft script the golden file says', async ({ name, config }) => {
    await expect(renderNft(planCapture(config))).toMatchFileSnapshot(`../golden/${name}.nft`);
  });
});
