//! Named view-change scenarios: scripted faults on the simulator, with assertions on what the
//! nodes did, on top of every invariant the simulator checks anyway.

use rapax::sim::{run_seed, Event, Fault, RunReport, RunSpec, Target};
use rapax_dataplane::protocol::membership::Change;
use rapax_dataplane::protocol::node::Note;
use rapax_dataplane::protocol::{Ballot, NodeId};

fn run(seed: u64, replicas: usize, script: Vec<(u64, Fault)>) -> RunReport {
    let r = run_seed(RunSpec {
        replicas: Some(replicas),
        ticks: 3000,
        script: Some(script),
        record: true,
        ..RunSpec::seed(seed)
    });
    assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    assert!(r.ops_acked > 50, "the workload ran: {}", r.ops_acked);
    r
}

fn leaders(r: &RunReport) -> Vec<(u64, NodeId, Ballot)> {
    r.timeline
        .iter()
        .filter_map(|e| match e.note {
            Note::BecameLeader { ballot, .. } => Some((e.tick, e.node, ballot)),
            _ => None,
        })
        .collect()
}

fn leader_at(r: &RunReport, tick: u64) -> (NodeId, Ballot) {
    leaders(r)
        .into_iter()
        .filter(|(t, _, _)| *t <= tick)
        .map(|(_, n, b)| (n, b))
        .max_by_key(|(_, b)| *b)
        .expect("a leader by then")
}

fn notes_of(r: &RunReport, node: NodeId) -> impl Iterator<Item = &Event> {
    r.timeline.iter().filter(move |e| e.node == node)
}

#[test]
fn deposed_leader_resumed_after_pause_cannot_write() {
    for seed in 1..=20 {
        let r = run(
            seed,
            3,
            vec![(
                400,
                Fault::Pause {
                    node: Target::Leader,
                    for_ticks: 500,
                },
            )],
        );
        let (old, old_ballot) = leader_at(&r, 399);
        // Someone else led while it was stopped.
        let (new, new_ballot) = leader_at(&r, 899);
        assert_ne!(old, new, "seed {seed}: a new leader during the pause");
        assert!(new_ballot > old_ballot);
        // After it resumed, the old leader stepped down from its old ballot.
        let stepped = notes_of(&r, old).any(|e| {
            e.tick >= 900
                && matches!(e.note, Note::SteppedDown { ballot, .. } if ballot == old_ballot)
        });
        assert!(stepped, "seed {seed}: the resumed leader stepped down");
        // After resuming it may still count slots whose writes had all landed before it was
        // stopped (the new leader recovered those), but never a slot beyond them.
        let recovered_to = r
            .timeline
            .iter()
            .find_map(|e| match e.note {
                Note::BecameLeader { recovered_to, .. } if e.node == new => Some(recovered_to),
                _ => None,
            })
            .unwrap();
        for e in notes_of(&r, old) {
            if let Note::Chosen { slot, ballot, .. } = e.note {
                if e.tick >= 900 && ballot == old_ballot {
                    assert!(
                        slot < recovered_to,
                        "seed {seed}: deposed leader chose {slot}"
                    );
                }
            }
        }
    }
}

#[test]
fn resumed_leader_data_plane_posts_and_is_refused() {
    // With the data plane drawn to run before the control plane notices, the resumed leader
    // keeps proposing; its remote writes must complete with permission errors.
    let refused = (1..=40).any(|seed| {
        let r = run(
            seed,
            5,
            vec![(
                500,
                Fault::Pause {
                    node: Target::Leader,
                    for_ticks: 400,
                },
            )],
        );
        r.fabric.permission_errors > 0
    });
    assert!(refused, "some run shows a resumed leader's writes refused");
}

#[test]
fn leader_crash_with_memory_lost_rejoins_through_resync() {
    for seed in 1..=20 {
        let r = run(
            seed,
            3,
            vec![(
                400,
                Fault::Crash {
                    node: Target::Leader,
                    memory_lost: true,
                    for_ticks: 300,
                },
            )],
        );
        let (old, _) = leader_at(&r, 399);
        assert_eq!(r.memory_lost_restarts, 1);
        // The restarted node granted only after its probe, and a leader re-synced its log from
        // the start (its first_undecided is 0 after the loss), or, when the log had been reused
        // past slot 0, sent it a snapshot and re-synced it from there.
        let mut restored = None;
        let mut resynced = None;
        for e in r.timeline.iter().filter(|e| e.tick >= 700) {
            match e.note {
                Note::Restored { index, .. } if e.node == old => restored = Some(index),
                Note::FollowerSynced { peer, from, .. }
                    if peer == old && (from == 0 || restored.is_some_and(|i| i <= from)) =>
                {
                    resynced = Some(from);
                    break;
                }
                _ => {}
            }
        }
        assert!(
            resynced.is_some(),
            "seed {seed}: node {old} was not re-synced from slot 0 nor from a snapshot \
             (restored: {restored:?})"
        );
    }
}

#[test]
fn minority_leader_partitioned_away_is_replaced() {
    for seed in 1..=20 {
        let r = run(
            seed,
            5,
            vec![(
                400,
                Fault::Isolate {
                    node: Target::Leader,
                    for_ticks: 600,
                },
            )],
        );
        let (old, old_ballot) = leader_at(&r, 399);
        let (new, _) = leader_at(&r, 999);
        assert_ne!(old, new, "seed {seed}: the majority side elected a leader");
        let stepped = notes_of(&r, old)
            .any(|e| matches!(e.note, Note::SteppedDown { ballot, .. } if ballot == old_ballot));
        assert!(
            stepped,
            "seed {seed}: the isolated leader stepped down once healed"
        );
    }
}

#[test]
fn split_brain_attempt_settles_by_ballot() {
    // {0, 1} | {2, 3, 4}: the old leader (0) keeps its view on the minority side while the
    // majority elects another; after the heal only one ballot leads and nothing diverged.
    for seed in 1..=20 {
        let r = run(
            seed,
            5,
            vec![(
                400,
                Fault::Split {
                    side: vec![0, 1],
                    for_ticks: 600,
                },
            )],
        );
        let during: Vec<_> = leaders(&r)
            .into_iter()
            .filter(|(t, _, _)| (400..1000).contains(t))
            .collect();
        assert!(
            during.iter().all(|(_, n, _)| *n >= 2),
            "seed {seed}: only the majority side can lead: {during:?}"
        );
        assert!(
            !during.is_empty(),
            "seed {seed}: the majority side elected a leader"
        );
    }
}

#[test]
fn leader_crashes_again_during_recovery() {
    // Crash the leader, then crash its successor while it is still recovering or just after.
    for seed in 1..=20 {
        let r = run(
            seed,
            5,
            vec![
                (
                    400,
                    Fault::Crash {
                        node: Target::Leader,
                        memory_lost: false,
                        for_ticks: 800,
                    },
                ),
                (
                    460,
                    Fault::Crash {
                        node: Target::Leader,
                        memory_lost: false,
                        for_ticks: 600,
                    },
                ),
            ],
        );
        assert!(leaders(&r).len() >= 2, "seed {seed}");
    }
}

#[test]
fn loss_storm_keeps_safety_and_recovers() {
    for seed in 1..=20 {
        run(
            seed,
            3,
            vec![(
                300,
                Fault::Loss {
                    prob: 0.3,
                    for_ticks: 800,
                },
            )],
        );
    }
}

#[test]
fn slow_leader_keeps_safety_and_the_cluster_keeps_committing() {
    for seed in 1..=20 {
        let r = run(
            seed,
            5,
            vec![(
                300,
                Fault::Slow {
                    node: Target::Leader,
                    every: 6,
                    for_ticks: 900,
                },
            )],
        );
        assert_eq!(r.faults.slow, 1);
        // Commits went on during the slow period, whoever led.
        let chosen_during = r
            .timeline
            .iter()
            .filter(|e| (300..1200).contains(&e.tick) && matches!(e.note, Note::Chosen { .. }))
            .count();
        assert!(
            chosen_during > 0,
            "seed {seed}: commits during the slow period"
        );
    }
}

/// A run with spares (`reconfig`) and only the scripted changes.
fn run_reconfig(seed: u64, replicas: usize, script: Vec<(u64, Fault)>) -> RunReport {
    let r = run_seed(RunSpec {
        replicas: Some(replicas),
        ticks: 3000,
        script: Some(script),
        record: true,
        reconfig: true,
        ..RunSpec::seed(seed)
    });
    assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
    assert!(r.ops_acked > 50, "the workload ran: {}", r.ops_acked);
    assert!(r.spares >= 1);
    r
}

/// The configurations `node` applied, in order.
fn applied_rings(r: &RunReport, node: NodeId) -> Vec<(u64, Vec<NodeId>)> {
    notes_of(r, node)
        .filter_map(|e| match e.note {
            Note::Reconfigured { membership, .. } => {
                Some((membership.epoch, membership.ring().to_vec()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_spare_replaces_a_crashed_acceptor_which_rejoins_as_a_spare() {
    for seed in 1..=20 {
        let r = run_reconfig(
            seed,
            3,
            vec![
                (
                    400,
                    Fault::Crash {
                        node: Target::Node(1),
                        memory_lost: seed % 2 == 0,
                        for_ticks: 900,
                    },
                ),
                (700, Fault::Reconfigure(Change::Replace { old: 1, new: 3 })),
            ],
        );
        let (_, leader, _, answer) = &r.reconfigs[0];
        let steps = answer
            .as_ref()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(steps.len(), 2, "a replace is two one-acceptor steps");
        // Every node, the restarted one too, ends on the second step's ring.
        let want = vec![(1, vec![0, 1, 2, 3]), (2, vec![0, 2, 3])];
        assert_eq!(applied_rings(&r, leader.unwrap()), want, "seed {seed}");
        for (n, m) in r.final_memberships.iter().enumerate() {
            let m = m.unwrap_or_else(|| panic!("seed {seed}: node {n} is down at the end"));
            assert_eq!(
                (m.epoch, m.ring()),
                (2, &[0, 2, 3][..]),
                "seed {seed} node {n}"
            );
        }
        // The old acceptor came back and applied the change that made it a spare.
        assert!(
            notes_of(&r, 1)
                .any(|e| e.tick > 1300
                    && matches!(e.note, Note::Applied { .. } | Note::Restored { .. })),
            "seed {seed}: node 1 follows again"
        );
    }
}

#[test]
fn the_leader_crashes_between_the_two_steps_of_a_replace() {
    let mut ends_at = [0; 3];
    for seed in 1..=20 {
        let r = run_reconfig(
            seed,
            3,
            vec![
                (600, Fault::Reconfigure(Change::Replace { old: 2, new: 3 })),
                (
                    600 + seed % 8,
                    Fault::Crash {
                        node: Target::Leader,
                        memory_lost: false,
                        for_ticks: 500,
                    },
                ),
            ],
        );
        assert!(
            r.reconfigs[0].3.is_ok(),
            "seed {seed}: {:?}",
            r.reconfigs[0]
        );
        // Whatever part of the change was chosen, every node agrees on it at the end (the
        // simulator checks it against the chosen log), and the cluster kept committing.
        let ends: Vec<_> = r.final_memberships.iter().flatten().collect();
        assert!(
            ends.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: {ends:?}"
        );
        assert!(
            [0, 1, 2].contains(&ends[0].epoch),
            "seed {seed}: {:?}",
            ends[0]
        );
        ends_at[ends[0].epoch as usize] += 1;
    }
    // The crash comes before the first step, between the two (the next leader keeps the
    // four-acceptor ring) and after both, each in some seeds.
    assert!(ends_at.iter().all(|&k| k > 0), "{ends_at:?}");
}

#[test]
fn the_leaders_ring_repair_puts_a_spare_in_a_dead_acceptors_place() {
    for seed in 1..=20 {
        let r = run_seed(RunSpec {
            replicas: Some(3),
            ticks: 3000,
            script: Some(vec![(
                500,
                Fault::Crash {
                    node: Target::Node(2),
                    memory_lost: seed % 2 == 1,
                    for_ticks: 1000,
                },
            )]),
            record: true,
            reconfig: true,
            replace_after_ticks: Some(200),
            ..RunSpec::seed(seed)
        });
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        assert!(r.ring_repairs >= 1, "seed {seed}: no repair");
        // Every node ends with a ring of three without node 2 (back as a spare) but with a
        // spare in its place.
        for (n, m) in r.final_memberships.iter().enumerate() {
            let m = m.unwrap_or_else(|| panic!("seed {seed}: node {n} down at the end"));
            assert_eq!(m.len(), 3, "seed {seed} node {n}: {m:?}");
            assert!(!m.contains(2), "seed {seed} node {n}: {m:?}");
            assert!(
                m.ring().iter().any(|&a| a >= 3),
                "seed {seed} node {n}: {m:?}"
            );
        }
        let repaired_at = r
            .timeline
            .iter()
            .find(|e| matches!(e.note, Note::RingRepair { old: 2, .. }))
            .map(|e| e.tick)
            .expect("a repair note");
        assert!(
            repaired_at >= 700,
            "seed {seed}: repaired at {repaired_at}, before 200 ticks dead"
        );
    }
}

#[test]
fn invalid_changes_are_refused_with_the_reason() {
    let r = run_reconfig(
        3,
        3,
        vec![
            (500, Fault::Reconfigure(Change::Add(9))),
            (500, Fault::Reconfigure(Change::Remove(3))),
            (500, Fault::Reconfigure(Change::Reorder(vec![0, 1]))),
            (
                500,
                Fault::Crash {
                    node: Target::Node(2),
                    memory_lost: false,
                    for_ticks: 400,
                },
            ),
            // The leader has seen its writes to node 2 fail by then.
            (800, Fault::Reconfigure(Change::Remove(1))),
            (820, Fault::Reconfigure(Change::Add(3))),
            (820, Fault::Reconfigure(Change::Reorder(vec![2, 1, 0, 3]))),
        ],
    );
    let answers: Vec<String> = r
        .reconfigs
        .iter()
        .map(|(_, _, c, a)| match a {
            Ok(steps) => format!("{c}: ok {steps:?}"),
            Err(e) => format!("{c}: {e}"),
        })
        .collect();
    let expect = [
        "add 9: node 9 is not in the cluster file",
        "remove 3: node 3 is not in the ring",
        "reorder [0, 1]: a reorder must name every acceptor exactly once",
        "remove 1: removing 1 leaves 1 live acceptors of 2, below a majority (2)",
        "add 3: ok [epoch 1 ring [0, 1, 2, 3]]",
        "reorder [2, 1, 0, 3]: a change is in flight already (to epoch 1)",
    ];
    for (got, want) in answers.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "got {got:?}, want {want:?}\n{answers:#?}"
        );
    }
    assert_eq!(answers.len(), expect.len());
}

#[test]
fn a_follower_cut_off_is_caught_up_in_bounded_steps() {
    // While node 2 is down the others go on; once it is back, the leader reads its log and
    // writes it what it missed, two windows of slots per turn at most (plus the commit record
    // and the amnesiac flag), never the whole gap in one turn.
    let mut longest = 0;
    for seed in 1..=20 {
        let r = run(
            seed,
            3,
            vec![(
                300,
                Fault::Crash {
                    node: Target::Node(2),
                    memory_lost: false,
                    for_ticks: 800,
                },
            )],
        );
        let bound = 2 * r.window_slots as usize + 2;
        assert!(
            r.most_log_writes_per_turn <= bound,
            "seed {seed}: {} log writes to one peer in one turn, window {}",
            r.most_log_writes_per_turn,
            r.window_slots
        );
        for e in notes_of(&r, leader_at(&r, 2999).0) {
            if let Note::FollowerSynced {
                peer: 2, writes, ..
            } = e.note
            {
                longest = longest.max(writes * 10 / bound);
            }
        }
    }
    // The bound was tested: some catch-up took more than one step.
    assert!(
        longest >= 20,
        "no catch-up wrote more than two steps' worth (longest: {} tenths of a step)",
        longest
    );
}
