//! The global allocator, and what it tells the memory limiter.
//!
//! jemalloc by default (feature `jemalloc`): it counts the bytes it has handed out
//! (`stats.allocated`, exact, read once per tick), purges its free pages on request, and held
//! RSS closer to live bytes than glibc at the same CPU per span (docs/performance.md,
//! "Allocator"). Built without the feature, glibc's malloc answers through `mallinfo2` and
//! gives memory back with `malloc_trim`.

use std::sync::Arc;

use tailgate_pipeline::memory::{MemoryReading, MemorySource, process_rss_bytes};

/// The memory source for every service this binary starts.
pub fn memory_source() -> Arc<dyn MemorySource> {
    Arc::new(GlobalAllocator)
}

/// The process's global allocator, read through its own statistics.
pub struct GlobalAllocator;

#[cfg(feature = "jemalloc")]
mod imp {
    use tikv_jemalloc_ctl::{epoch, stats};

    use super::*;

    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// `MALLCTL_ARENAS_ALL`: the `arena.<i>` index that names every arena at once.
    const PURGE_ALL_ARENAS: &std::ffi::CStr = c"arena.4096.purge";

    impl MemorySource for GlobalAllocator {
        fn allocator(&self) -> &'static str {
            "jemalloc"
        }

        fn read(&self) -> MemoryReading {
            // jemalloc caches its statistics; advancing the epoch refreshes them.
            let _ = epoch::advance();
            let rss = process_rss_bytes();
            MemoryReading {
                live_bytes: stats::allocated::read().map_or(rss, |b| b as u64),
                allocator_resident_bytes: stats::resident::read().map_or(rss, |b| b as u64),
                rss_bytes: rss,
            }
        }

        fn release_free_memory(&self) {
            // SAFETY: `arena.<i>.purge` takes and returns nothing; all pointers are null and
            // the name is NUL-terminated.
            let rc = unsafe {
                tikv_jemalloc_sys::mallctl(
                    PURGE_ALL_ARENAS.as_ptr(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    0,
                )
            };
            if rc != 0 {
                tracing::warn!(errno = rc, "jemalloc refused to purge its arenas");
            }
        }
    }
}

#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
mod imp {
    use super::*;

    impl MemorySource for GlobalAllocator {
        fn allocator(&self) -> &'static str {
            "glibc"
        }

        fn read(&self) -> MemoryReading {
            // SAFETY: mallinfo2 only reads the allocator's own statistics (glibc ≥ 2.33).
            let info = unsafe { libc::mallinfo2() };
            let mapped = info.hblkhd as u64;
            MemoryReading {
                live_bytes: info.uordblks as u64 + mapped,
                allocator_resident_bytes: info.arena as u64 + mapped,
                rss_bytes: process_rss_bytes(),
            }
        }

        fn release_free_memory(&self) {
            // SAFETY: malloc_trim takes a pad size and touches only free memory.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

#[cfg(not(any(feature = "jemalloc", all(target_os = "linux", target_env = "gnu"))))]
mod imp {
    use super::*;

    impl MemorySource for GlobalAllocator {
        fn allocator(&self) -> &'static str {
            "rss"
        }

        fn read(&self) -> MemoryReading {
            tailgate_pipeline::memory::ProcessRss.read()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bytes_follow_an_allocation_and_its_release() {
        const BLOCK_BYTES: usize = 64 * 1024 * 1024;
        let source = GlobalAllocator;
        let before = source.read();
        let block = vec![1u8; BLOCK_BYTES];
        let during = source.read();
        assert!(
            during.live_bytes >= before.live_bytes + BLOCK_BYTES as u64 / 2,
            "64 MiB allocated: {before:?} → {during:?}"
        );
        drop(std::hint::black_box(block));
        source.release_free_memory();
        let after = source.read();
        assert!(
            after.live_bytes + (BLOCK_BYTES as u64 / 2) <= during.live_bytes,
            "64 MiB freed: {during:?} → {after:?}"
        );
        assert!(
            after.rss_bytes + (BLOCK_BYTES as u64 / 2) <= during.rss_bytes,
            "freed pages went back to the system: {during:?} → {after:?}"
        );
    }
}
