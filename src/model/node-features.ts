/**
 * What a node's peer protocol understands beyond what the first nodes did,
 * as it says in its membership record (PeerInfo.features). A writer uses a
 * feature only when every live node has it: a node that predates one would
 * refuse it, or worse, misread what it makes (a block whose hash is a tree
 * hash, fetched by a node that checks the xxh64).
 */

/** Blocks with a tree hash (BLOCK_TREE_HASH) read, stored and served; PUT_PATCHES taken. */
export const FEATURE_PATCHES = 'patches';

/** What this build's nodes say they understand. */
export const NODE_FEATURES: readonly string[] = [FEATURE_PATCHES];
