//! Where each rank sits in a TP × PP group: rank = stage · tp + tp_rank, so a stage's
//! tensor-parallel ranks are neighbours (on one node when ranks are packed per node) and the
//! pipeline crosses nodes, where its point-to-point traffic is cheapest.

use std::ops::Range;

use shardline_model::even_split;

use crate::error::{Result, WorkerError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLayout {
    pub tp: usize,
    pub pp: usize,
    /// Decoder layers per stage.
    pub stage_layers: Vec<usize>,
}

impl GroupLayout {
    /// `pp_layers`: explicit layers per stage (must sum to `num_layers`), else an even split.
    pub fn new(tp: usize, pp: usize, num_layers: usize, pp_layers: Option<&[usize]>) -> Result<Self> {
        if tp == 0 || pp == 0 {
            return Err(WorkerError::Layout("--tp and --pp must be at least 1".into()));
        }
        if pp > num_layers {
            return Err(WorkerError::Layout(format!("--pp {pp} exceeds the model's {num_layers} layers")));
        }
        let stage_layers = match pp_layers {
            Some(l) => {
                if l.len() != pp || l.iter().sum::<usize>() != num_layers || l.contains(&0) {
                    return Err(WorkerError::Layout(format!(
                        "--pp-layers {l:?} must list {pp} positive counts summing to the model's {num_layers} layers"
                    )));
                }
                l.to_vec()
            }
            None => (0..pp).map(|s| even_split(num_layers, pp, s).len()).collect(),
        };
        Ok(GroupLayout { tp, pp, stage_layers })
    }

    pub fn world_size(&self) -> usize {
        self.tp * self.pp
    }

    pub fn rank_of(&self, stage: usize, tp_rank: usize) -> usize {
        stage * self.tp + tp_rank
    }

    pub fn stage_of(&self, rank: usize) -> usize {
        rank / self.tp
    }

    pub fn tp_rank_of(&self, rank: usize) -> usize {
        rank % self.tp
    }

    pub fn layers_of_stage(&self, stage: usize) -> Range<usize> {
        let start: usize = self.stage_layers[..stage].iter().sum();
        start..start + self.stage_layers[stage]
    }

    /// The ranks of `stage`'s tensor-parallel group.
    pub fn tp_group(&self, stage: usize) -> Vec<usize> {
        (0..self.tp).map(|t| self.rank_of(stage, t)).collect()
    }

    /// The rank that samples and returns the tokens to rank 0: the last stage's tp rank 0.
    pub fn result_rank(&self) -> usize {
        self.rank_of(self.pp - 1, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_by_two_layout() {
        let l = GroupLayout::new(2, 2, 30, None).unwrap();
        assert_eq!(l.world_size(), 4);
        assert_eq!((l.stage_of(3), l.tp_rank_of(3)), (1, 1));
        assert_eq!(l.layers_of_stage(1), 15..30);
        assert_eq!(l.tp_group(1), vec![2, 3]);
        assert_eq!(l.result_rank(), 2);
        let uneven = GroupLayout::new(1, 3, 30, Some(&[8, 12, 10])).unwrap();
        assert_eq!(uneven.layers_of_stage(2), 20..30);
        assert!(GroupLayout::new(1, 3, 30, Some(&[10, 10])).is_err());
        assert!(GroupLayout::new(1, 31, 30, None).is_err());
    }
}
