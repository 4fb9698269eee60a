//! Wire types generated from the versioned definitions in `proto/`.

/// Rank 0 ↔ worker control plane (`proto/shardline/worker/v1/worker.proto`).
pub mod worker {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/shardline.worker.v1.rs"));
    }
}

/// The public generation API served by rank 0 (`proto/shardline/v1/generate.proto`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/shardline.v1.rs"));
}
