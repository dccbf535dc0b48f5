//! `memory_limiter` logic: from config and the machine's memory to two byte thresholds, and
//! from a measurement to "accept" or "refuse". Measuring is the pipeline's job.

use tailgate_config::components::MemoryLimiterConfig;

const MIB: u64 = 1024 * 1024;

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

    /// Whether new data must be refused at this usage.
    pub fn must_refuse(&self, used_bytes: u64) -> bool {
        used_bytes >= self.soft_limit_bytes
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
        assert!(!l.must_refuse(1535 * MIB));
        assert!(l.must_refuse(1536 * MIB));
    }

    #[test]
    fn percentage_limits() {
        let l = MemoryLimits::resolve(&cfg(0, None, 80, 20), 1000 * MIB);
        assert_eq!(l.hard_limit_bytes, 800 * MIB);
        assert_eq!(l.soft_limit_bytes, 600 * MIB);
    }
}
