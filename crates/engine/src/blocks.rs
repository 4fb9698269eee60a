//! Free-list allocator of physical KV blocks.

/// Hands out block ids `0..num_blocks`. Freed blocks are reused most-recently-freed first,
/// which keeps the working set of a lightly loaded server warm in cache.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        BlockAllocator { free: (0..num_blocks as u32).rev().collect(), total: num_blocks }
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_total(&self) -> usize {
        self.total
    }

    /// `n` blocks, or `None` (and nothing taken) when fewer are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - n))
    }

    pub fn release(&mut self, blocks: Vec<u32>) {
        debug_assert!(blocks.iter().all(|b| (*b as usize) < self.total && !self.free.contains(b)));
        self.free.extend(blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_blocks_and_refuses_when_short() {
        let mut a = BlockAllocator::new(4);
        let x = a.allocate(3).unwrap();
        assert_eq!(a.num_free(), 1);
        assert!(a.allocate(2).is_none());
        assert_eq!(a.num_free(), 1, "a refused allocation takes nothing");
        let y = a.allocate(1).unwrap();
        let mut all: Vec<u32> = x.iter().chain(&y).copied().collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        a.release(x);
        assert_eq!(a.num_free(), 3);
    }
}
