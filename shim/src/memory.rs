//! Handing memory back to the system. A Create parses the container's whole spec, whose size its
//! author chooses (megabytes of env or annotations); the allocator keeps the freed pages for
//! reuse, so without this a pod's shim would hold a large spec's peak for the pod's life.

/// Returns the allocator's free pages, of every thread's arena, to the system.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
