//! `memory_limiter` logic: from config and the machine's memory to two byte thresholds, and
//! from a measurement to "accept" or "refuse". Measuring is the pipeline's job.
//!
//! Which number each threshold compares: the **soft limit** (`limit_mib − spike_limit_mib`)
//! compares *live* bytes — what the allocator has handed out and not had back, the number
//! the collector reads from its Go heap — so the limiter lets go the moment buffers empty.
//! The **hard limit** (`limit_mib`) compares *RSS* as a last resort: memory the allocator
//! cannot give back (fragmentation, a leak) still stops intake before the OOM killer does.

use tailgate_config::components::MemoryLimiterConfig;

const MIB: u64 = 1024 * 1024;

/// One measurement the limits are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes allocated and not freed, by the allocator's count.
    pub live_bytes: u64,
    /// Resident set size of the process.
    pub rss_bytes: u64,
}

/// Why new data is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Live bytes reached the soft limit: buffers are full.
    LiveOverSoftLimit,
    /// RSS reached the hard limit though live bytes did not: memory the allocator cannot
    /// return.
    RssOverHardLimit,
}

/// Resolved limits in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Above this, data is refused and the process is in danger.
    pub hard_limit_bytes: u64,
    /// Above this (hard limit minus spike headroom), data is refused.
    pub soft_limit_bytes: u64,
}

impl MemoryLimits {
    /// `total_memory_bytes` is the cgroup limit or physical memory, for the percentage form.
    pub fn resolve(cfg: &MemoryLimiterConfig, total_memory_bytes: u64) -> MemoryLimits {
        let (hard, spike) = if cfg.limit_mib > 0 {
            let hard = cfg.limit_mib * MIB;
            (
                hard,
                cfg.spike_limit_mib.map(|s| s * MIB).unwrap_or(hard / 5),
            )
        } else {
            let hard = total_memory_bytes / 100 * cfg.limit_percentage;
            (hard, total_memory_bytes / 100 * cfg.spike_limit_percentage)
        };
        assert!(
            spike < hard || hard == 0,
            "validated config keeps spike below limit"
        );
        MemoryLimits {
            hard_limit_bytes: hard,
            soft_limit_bytes: hard - spike,
        }
    }

    /// Whether (and why) new data must be refused at this usage.
    pub fn refusal(&self, used: &MemoryUse) -> Option<Refusal> {
        if used.live_bytes >= self.soft_limit_bytes {
            Some(Refusal::LiveOverSoftLimit)
        } else if used.rss_bytes >= self.hard_limit_bytes {
            Some(Refusal::RssOverHardLimit)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailgate_config::GoDuration;

    fn cfg(limit_mib: u64, spike: Option<u64>, pct: u64, spike_pct: u64) -> MemoryLimiterConfig {
        MemoryLimiterConfig {
            check_interval: GoDuration::from_secs(1),
            limit_mib,
            spike_limit_mib: spike,
            limit_percentage: pct,
            spike_limit_percentage: spike_pct,
        }
    }

    #[test]
    fn mib_limits_with_default_spike() {
        let l = MemoryLimits::resolve(&cfg(2048, None, 0, 0), 0);
        assert_eq!(l.hard_limit_bytes, 2048 * MIB);
        assert_eq!(l.soft_limit_bytes, 2048 * MIB - 2048 * MIB / 5);
        let l = MemoryLimits::resolve(&cfg(2048, Some(512), 0, 0), 0);
        assert_eq!(l.soft_limit_bytes, 1536 * MIB);
    }

    fn used(live_mib: u64, rss_mib: u64) -> MemoryUse {
        MemoryUse {
            live_bytes: live_mib * MIB,
            rss_bytes: rss_mib * MIB,
        }
    }

    #[test]
    fn soft_limit_compares_live_bytes_and_hard_limit_compares_rss() {
        let l = MemoryLimits::resolve(&cfg(256, Some(64), 0, 0), 0);
        assert_eq!(l.refusal(&used(191, 191)), None);
        assert_eq!(l.refusal(&used(192, 192)), Some(Refusal::LiveOverSoftLimit));
        // After a burst: little live, RSS not yet returned but under the hard limit.
        assert_eq!(l.refusal(&used(20, 230)), None);
        assert_eq!(l.refusal(&used(20, 256)), Some(Refusal::RssOverHardLimit));
    }

    #[test]
    fn percentage_limits() {
        let l = MemoryLimits::resolve(&cfg(0, None, 80, 20), 1000 * MIB);
        assert_eq!(l.hard_limit_bytes, 800 * MIB);
        assert_eq!(l.soft_limit_bytes, 600 * MIB);
    }
}
