//! The checkers catch known protocol bugs: each bug injected with `--bug` (feature `sim-bugs`)
//! is reported as a violation within a few hundred seeds; and reply-before-durable is caught by
//! the agreement/acknowledgement checkers alone (durable-before-reply checker off).
#![cfg(feature = "sim-bugs")]
use paxring_engine::sim::{run_seed, Bug, SimOptions};

fn first_violation(bug: Bug) -> Option<(u64, String)> {
    first_violation_with(bug, true)
}

fn first_violation_with(bug: Bug, check_durable_replies: bool) -> Option<(u64, String)> {
    let options = SimOptions {
        bug: Some(bug),
        check_durable_replies,
        safety_ticks: 1500,
        heal_ticks: 1200,
        ..SimOptions::default()
    };
    (1..=300).find_map(|seed| run_seed(&options, seed).violation.map(|v| (seed, v)))
}

#[test]
fn forget_promise_is_caught() {
    let (seed, violation) = first_violation(Bug::ForgetPromise).expect("caught");
    eprintln!("forget-promise: seed {seed}: {violation}");
}

#[test]
fn reply_before_durable_is_caught() {
    let (seed, violation) = first_violation(Bug::ReplyBeforeDurable).expect("caught");
    assert!(violation.contains("durable-before-reply"), "{violation}");
    eprintln!("reply-before-durable: seed {seed}: {violation}");
}

#[test]
fn skip_prepare_on_new_leader_is_caught() {
    let (seed, violation) = first_violation(Bug::SkipPrepareOnNewLeader).expect("caught");
    eprintln!("skip-prepare-on-new-leader: seed {seed}: {violation}");
}

#[test]
fn reply_before_durable_breaks_agreement_too() {
    let (seed, violation) = first_violation_with(Bug::ReplyBeforeDurable, false)
        .expect("caught without the durable checker");
    // Any of the safety checkers: agreement, acknowledged-at-that-index, or committed-once
    // (two proposals told Committed for one chosen command, which is how a lost acceptance
    // usually shows first).
    assert!(
        violation.contains("agreement")
            || violation.contains("acknowledged")
            || violation.contains("committed-once"),
        "{violation}"
    );
    eprintln!("reply-before-durable (safety checkers only): seed {seed}: {violation}");
}

#[test]
fn accept_below_promise_is_caught_by_the_invariant_checker() {
    let (seed, violation) = first_violation(Bug::AcceptBelowPromise).expect("caught");
    assert!(violation.contains("invariant:"), "{violation}");
    eprintln!("accept-below-promise: seed {seed}: {violation}");
}
