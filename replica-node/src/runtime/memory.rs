//! The process's resident memory, for `INFO used_memory_rss`.

/// Resident set size in bytes, from `/proc/self/status` (`VmRSS`, in kB, which spares us the
/// page size `/proc/self/statm` counts in); 0 where that file does not exist.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_vm_rss(&s)).unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..].trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t    2048 kB\nVmData: 1 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            let rss = rss_bytes();
            assert!(rss > 1024 * 1024 && rss < 1 << 40, "implausible RSS {rss}");
        }
    }
}
