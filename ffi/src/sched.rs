//! The calling thread's scheduling class.
//!
//! Background work next to poll-mode agents (a checkpoint encoded and written while the data
//! plane runs) must only use CPU the agents leave idle: on a host with fewer cores than agents,
//! a busy background thread would otherwise delay heartbeats past the failure detector.

/// Moves the calling thread (only it) to `SCHED_IDLE`: it runs only when no other thread of
/// normal priority wants the CPU. An error when the kernel refuses.
pub fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call; pid 0 names
    // the calling thread, and SCHED_IDLE with priority 0 changes nothing but its scheduling.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_can_go_idle_priority_without_touching_its_siblings() {
        let before = policy();
        std::thread::spawn(|| {
            super::idle_priority().unwrap();
            assert_eq!(policy(), libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
        assert_eq!(policy(), before, "only the calling thread changes");
    }

    /// The calling thread's policy, read from /proc (field 41 of stat).
    fn policy() -> i32 {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the parenthesised command name.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(38).unwrap().parse().unwrap()
    }
}
