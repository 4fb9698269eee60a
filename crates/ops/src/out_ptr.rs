//! A raw output pointer that parallel tasks share, for kernels whose tasks each write a
//! disjoint part of one output slice (rayon cannot split the slice along those lines itself).

/// `out.as_mut_ptr()`, shareable across threads.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(*mut f32);

// SAFETY: an OutPtr is only made by [`OutPtr::new`], whose callers promise that concurrent
// tasks write disjoint elements and that the slice outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// Tasks using the pointer must write disjoint elements of `out`, and finish before `out`
    /// is used again.
    pub(crate) unsafe fn new(out: &mut [f32]) -> OutPtr {
        OutPtr(out.as_mut_ptr())
    }

    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
