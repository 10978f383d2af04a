//! Quorum arithmetic for a cluster of `n` acceptors (n = 2f + 1).

/// The number of crash faults tolerated by `n` acceptors.
pub fn faults_tolerated(n: usize) -> usize {
    assert!(n > 0, "an empty cluster has no quorum");
    (n - 1) / 2
}

/// The size of a majority of `n` acceptors.
pub fn majority(n: usize) -> usize {
    assert!(n > 0, "an empty cluster has no quorum");
    n / 2 + 1
}

/// Remote write successes a leader needs to choose a slot: a majority minus its own copy.
pub fn remote_acks_needed(n: usize) -> usize {
    majority(n) - 1
}

/// Whether `count` acceptors out of `n` form a majority.
pub fn is_majority(count: usize, n: usize) -> bool {
    count >= majority(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden table: n, f, majority, remote acks.
    const GOLDEN: &[(usize, usize, usize, usize)] = &[
        (1, 0, 1, 0),
        (2, 0, 2, 1),
        (3, 1, 2, 1),
        (4, 1, 3, 2),
        (5, 2, 3, 2),
        (6, 2, 4, 3),
        (7, 3, 4, 3),
        (9, 4, 5, 4),
    ];

    #[test]
    fn golden_quorum_table() {
        for &(n, f, m, r) in GOLDEN {
            assert_eq!(faults_tolerated(n), f, "f({n})");
            assert_eq!(majority(n), m, "majority({n})");
            assert_eq!(remote_acks_needed(n), r, "remote_acks_needed({n})");
        }
    }

    #[test]
    fn any_two_majorities_intersect() {
        for n in 1..=15 {
            let m = majority(n);
            assert!(2 * m > n, "two majorities of {n} must intersect");
            assert!(!is_majority(m - 1, n));
            assert!(is_majority(m, n));
            // f crashes leave a majority alive.
            assert!(is_majority(n - faults_tolerated(n), n));
        }
    }
}
