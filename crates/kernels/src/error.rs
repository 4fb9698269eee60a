//! What a kernel call can fail with. Shape errors are found on the host before anything is
//! launched; driver errors come from CUDA itself (a launch, a copy, loading the module).

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Lengths or dimensions that do not fit together; nothing was launched.
    #[error("{kernel}: {detail}")]
    Shape { kernel: &'static str, detail: String },
    /// The module has no such function: the fatbin and this crate disagree.
    #[cfg(feature = "cuda")]
    #[error("loading kernel `{name}` from the embedded fatbin: {source}")]
    Load { name: String, source: cudarc::driver::DriverError },
    #[cfg(feature = "cuda")]
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
}

/// A [`KernelError::Shape`].
pub(crate) fn shape_error(kernel: &'static str, detail: impl Into<String>) -> KernelError {
    KernelError::Shape { kernel, detail: detail.into() }
}
