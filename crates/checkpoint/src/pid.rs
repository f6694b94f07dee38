//! Processes of this host, by pid: whether one still runs (the owner of a lock, of a staging
//! directory).

/// Whether process `pid` of this host still runs. A zombie (state Z: dead, not yet reaped, as
/// a killed rank 0 is while its parent lingers) or a dying one (X) is gone, as is a pid with no
/// /proc entry.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // pid (comm) state ...: the comm may hold spaces and parentheses, so read after the last ')'.
    let state = stat.rfind(')').and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_or_a_missing_pid_is_not_running() {
        assert!(is_running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = child.id();
        // Not reaped yet: a zombie until wait() below.
        while std::fs::read_to_string(format!("/proc/{zombie}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{zombie}")).exists(), "a zombie keeps its /proc entry");
        assert!(!is_running(zombie));
        child.wait().unwrap();
        assert!(!is_running(zombie));
    }
}
