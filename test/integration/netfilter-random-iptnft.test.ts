// Randomized cycles on iptables-nft: install → (re-install with a changed random config)* → uninstall, in one shared namespace
// with Docker-like foreign rules; after every cycle no MESHCTL_/meshctl: object is left and nothing foreign changed.
// The seed is printed (MESHCTL_RANDOM_SEED replays it); MESHCTL_RANDOM_CYCLES changes the count (25; 200 in npm run test:soak).
import { describeRandomCycles } from '../helpers/netfilter-random.js';

describeRandomCycles('iptables-nft', 'mn-rand-iptnft');
