//! The KV-cache block pool, with automatic prefix caching (vLLM's APC; SGLang's RadixAttention
//! keeps the same sharing in a radix tree). A block whose tokens are all computed is named by a
//! hash chaining its parent block's name and its own tokens, so two sequences with the same
//! first k blocks of tokens name them identically, and a new request can take the K/V of its
//! longest named prefix instead of computing it again.
//!
//! Blocks are reference-counted. A block no request holds goes to the free queue but keeps its
//! name and content, so it can still be hit; allocation takes blocks from the front of the
//! queue, and only then is a name forgotten (evicted). Blocks that never had a name go to the
//! front (they are worth nothing), named ones to the back: the named blocks are evicted least
//! recently used first. A name always points at a block holding exactly that content: it is
//! given only once the block's tokens are computed, and dropped before the block is handed out
//! again, so a reallocated block is never served stale.

use std::collections::HashMap;

use hashlink::LinkedHashSet;
use sha2::{Digest, Sha256};

/// A full block's name: 128 bits of SHA-256 over (parent name, tokens). Collisions would serve
/// wrong K/V, so the name is far too long to collide by chance.
pub type BlockHash = u128;

/// The name of a full block of `tokens` following the block named `parent` (`None` for a
/// sequence's first block). Nothing else changes a block's K/V in this server (one model, no
/// adapters, no multimodal inputs); inputs like those would have to join the hash.
pub fn hash_block(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent.map_or([0u8; 17], |p| {
        let mut b = [1u8; 17];
        b[1..].copy_from_slice(&p.to_le_bytes());
        b
    }));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    let digest = h.finalize();
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}

#[derive(Debug)]
pub struct BlockPool {
    ref_counts: Vec<u32>,
    /// The name each block is cached under.
    names: Vec<Option<BlockHash>>,
    cached: HashMap<BlockHash, u32>,
    /// Blocks no request holds, in eviction order (front first).
    free: LinkedHashSet<u32>,
    caching: bool,
}

impl BlockPool {
    pub fn new(num_blocks: usize, caching: bool) -> Self {
        BlockPool {
            ref_counts: vec![0; num_blocks],
            names: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks as u32).collect(),
            caching,
        }
    }

    pub fn num_total(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks no request holds (cached ones included: they are taken when needed).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks holding a cached prefix block, whether held or free.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// The blocks of the longest prefix of `names` that is cached.
    pub fn lookup(&self, names: &[BlockHash]) -> Vec<u32> {
        if !self.caching {
            return Vec::new();
        }
        names.iter().map_while(|n| self.cached.get(n).copied()).collect()
    }

    /// How many of `blocks` sit in the free queue (taking a reference takes them out of it).
    pub fn num_free_among(&self, blocks: &[u32]) -> usize {
        blocks.iter().filter(|b| self.ref_counts[**b as usize] == 0).count()
    }

    /// Takes a reference on cached blocks found by [`BlockPool::lookup`].
    pub fn touch(&mut self, blocks: &[u32]) {
        for &b in blocks {
            if self.ref_counts[b as usize] == 0 {
                self.free.remove(&b);
            }
            self.ref_counts[b as usize] += 1;
        }
    }

    /// `n` blocks for new content, or `None` (nothing taken) when fewer are free. Cached
    /// blocks taken here lose their names.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let b = self.free.pop_front().expect("counted above");
            if let Some(name) = self.names[b as usize].take() {
                self.cached.remove(&name);
            }
            self.ref_counts[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Drops a sequence's references to `blocks` (its table, in position order). The table is
    /// walked from its end, so of a sequence's named blocks the later ones, least likely to be
    /// shared, are evicted first.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_counts[b as usize];
            debug_assert!(*rc > 0, "block {b} released more often than taken");
            *rc -= 1;
            if *rc == 0 {
                self.free.insert(b);
                if self.names[b as usize].is_none() {
                    self.free.to_front(&b);
                }
            }
        }
    }

    /// Names a block whose tokens are all computed, making it reusable by later requests. A
    /// name already held by another block (two requests computed the same prefix at once) is
    /// left with that block.
    pub fn cache(&mut self, block: u32, name: BlockHash) {
        if !self.caching || self.names[block as usize].is_some() || self.cached.contains_key(&name) {
            return;
        }
        self.names[block as usize] = Some(name);
        self.cached.insert(name, block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(blocks: &[&[u32]]) -> Vec<BlockHash> {
        let mut parent = None;
        blocks
            .iter()
            .map(|t| {
                let h = hash_block(parent, t);
                parent = Some(h);
                h
            })
            .collect()
    }

    #[test]
    fn names_chain_over_the_whole_prefix() {
        let a = chain(&[&[1, 2], &[3, 4]]);
        let b = chain(&[&[9, 9], &[3, 4]]);
        assert_eq!(a, chain(&[&[1, 2], &[3, 4]]));
        assert_ne!(a[1], b[1], "equal blocks after different prefixes have different names");
        assert_ne!(hash_block(None, &[1, 2]), hash_block(None, &[2, 1]));
    }

    #[test]
    fn allocates_distinct_blocks_and_refuses_when_short() {
        let mut p = BlockPool::new(4, true);
        let x = p.allocate(3).unwrap();
        assert_eq!(p.num_free(), 1);
        assert!(p.allocate(2).is_none());
        assert_eq!(p.num_free(), 1, "a refused allocation takes nothing");
        let y = p.allocate(1).unwrap();
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        p.release(&x);
        assert_eq!(p.num_free(), 3);
    }

    #[test]
    fn freed_named_blocks_stay_reusable_until_needed() {
        let mut p = BlockPool::new(4, true);
        let names = chain(&[&[1, 2], &[3, 4]]);
        let seq = p.allocate(2).unwrap();
        p.cache(seq[0], names[0]);
        p.cache(seq[1], names[1]);
        p.release(&seq);
        assert_eq!(p.num_free(), 4, "cached blocks nobody holds count as free");
        assert_eq!(p.lookup(&names), seq, "but keep their content");
        // A new request takes them back (out of the free queue).
        p.touch(&seq);
        assert_eq!(p.num_free(), 2);
        assert_eq!(p.allocate(2).unwrap().len(), 2, "the unnamed blocks go first");
        assert_eq!(p.lookup(&names), seq);
        p.release(&seq);
    }

    #[test]
    fn an_evicted_block_loses_its_name_before_it_is_reused() {
        let mut p = BlockPool::new(2, true);
        let names = chain(&[&[1, 2], &[3, 4]]);
        let seq = p.allocate(2).unwrap();
        p.cache(seq[0], names[0]);
        p.cache(seq[1], names[1]);
        p.release(&seq);
        // Memory is needed: the later block of the chain goes first (least likely shared).
        let b = p.allocate(1).unwrap();
        assert_eq!(b, vec![seq[1]]);
        assert_eq!(p.lookup(&names), vec![seq[0]], "only the surviving prefix is found");
        let c = p.allocate(1).unwrap();
        assert_eq!(c, vec![seq[0]]);
        assert!(p.lookup(&names).is_empty(), "nothing stale is served");
        assert_eq!(p.num_cached(), 0);
    }

    #[test]
    fn least_recently_used_names_are_evicted_first() {
        let mut p = BlockPool::new(3, true);
        let (n1, n2) = (hash_block(None, &[1]), hash_block(None, &[2]));
        let a = p.allocate(1).unwrap();
        p.cache(a[0], n1);
        let b = p.allocate(1).unwrap();
        p.cache(b[0], n2);
        p.release(&a);
        p.release(&b);
        // `a` was released first; using it again makes `b` the older one.
        p.touch(&a);
        p.release(&a);
        assert_eq!(p.allocate(2).unwrap(), vec![2, b[0]], "the never-named block, then the LRU name");
        assert_eq!(p.lookup(&[n1]), a);
    }

    #[test]
    fn shared_blocks_free_only_with_their_last_holder() {
        let mut p = BlockPool::new(2, true);
        let name = hash_block(None, &[5]);
        let a = p.allocate(1).unwrap();
        p.cache(a[0], name);
        p.touch(&p.lookup(&[name]));
        assert_eq!(p.num_free_among(&a), 0);
        p.release(&a);
        assert_eq!(p.num_free(), 1, "still held by the second sequence");
        p.release(&a);
        assert_eq!(p.num_free(), 2);
    }

    #[test]
    fn a_name_stays_with_its_first_block_and_caching_can_be_off() {
        let mut p = BlockPool::new(2, true);
        let name = hash_block(None, &[7]);
        let (a, b) = (p.allocate(1).unwrap(), p.allocate(1).unwrap());
        p.cache(a[0], name);
        p.cache(b[0], name);
        assert_eq!(p.lookup(&[name]), a);
        let mut off = BlockPool::new(2, false);
        let c = off.allocate(1).unwrap();
        off.cache(c[0], name);
        assert!(off.lookup(&[name]).is_empty());
    }
}
