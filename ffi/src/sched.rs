//! The calling thread's scheduling class, and process-wide memory barriers.
//!
//! Background work next to poll-mode agents (a checkpoint encoded and written while the data
//! plane runs) must only use CPU the agents leave idle: on a host with fewer cores than agents,
//! a busy background thread would otherwise delay heartbeats past the failure detector.
//!
//! `membarrier(2)` lets a rare operation pay for the ordering a frequent one needs: a fast path
//! that orders a store before a later load with only a compiler barrier, and a slow path that
//! calls [`membarrier_global_expedited`], which makes every running thread of every registered
//! process execute a full memory barrier before it returns (the shm fabric's write guard and
//! its `revoke`).

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

/// Sets the calling thread's (only its) nice value to `nice` (-20..=19; raising it needs no
/// privilege). Unlike `SCHED_IDLE` the thread keeps a share of a busy CPU (at 10, about a tenth
/// of one against a thread at 0): a helper that takes locks other threads of its process also
/// take is then never parked behind busy threads while holding one. An error when the kernel
/// refuses.
pub fn nice_thread(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes three integers and touches no memory of ours; on Linux
    // PRIO_PROCESS with a thread id sets that thread's nice value alone.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;

fn membarrier(cmd: libc::c_long) -> std::io::Result<libc::c_long> {
    // SAFETY: membarrier takes three integers (command, flags 0, cpu id 0) and touches no
    // memory of ours; an unknown or unsupported command fails with an errno.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Registers this process for [`membarrier_global_expedited`]: from now on, a caller of it in
/// any process waits until every thread of this one that runs has executed a full memory
/// barrier. An error when the kernel has no expedited global barrier (before Linux 4.16).
pub fn membarrier_register_global_expedited() -> std::io::Result<()> {
    let supported = membarrier(MEMBARRIER_CMD_QUERY)?;
    let need = MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
    if supported & need != need {
        return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
    }
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED).map(|_| ())
}

/// Returns once every running thread of every process registered with
/// [`membarrier_register_global_expedited`] (and the caller) has executed a full memory
/// barrier: a store such a thread made before its last barrier-free load is visible now. A
/// thread that is not running passed a barrier when it was switched out.
pub fn membarrier_global_expedited() -> std::io::Result<()> {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED).map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_expedited_global_barrier_registers_and_runs() {
        // Kernels since 4.16 have it; the shm fabric falls back to fenced guards without it.
        match super::membarrier_register_global_expedited() {
            Ok(()) => super::membarrier_global_expedited().unwrap(),
            Err(e) => println!("no expedited global membarrier here: {e}"),
        }
    }

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

    #[test]
    fn a_thread_can_lower_its_own_priority_without_touching_its_siblings() {
        let before = nice();
        std::thread::spawn(|| {
            super::nice_thread(10).unwrap();
            assert_eq!(nice(), 10);
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
        assert_eq!(nice(), before, "only the calling thread changes");
    }

    /// Field `n` (from 3, the state) of the calling thread's /proc stat line.
    fn stat_field(n: usize) -> i32 {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the parenthesised command name.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(n - 3).unwrap().parse().unwrap()
    }

    /// The calling thread's policy (field 41 of stat).
    fn policy() -> i32 {
        stat_field(41)
    }

    /// The calling thread's nice value (field 19 of stat).
    fn nice() -> i32 {
        stat_field(19)
    }
}
