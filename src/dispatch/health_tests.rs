//! The breaker, the probes and the board, each rule on its own.

use super::*;

#[test]
fn the_breaker_opens_after_consecutive_failures_and_backs_off_exponentially() {
    let h = Arc::new(Health::default());
    let t0 = Instant::now();
    assert!(!h.failed(t0));
    assert!(!h.failed(t0));
    assert!(h.failed(t0));
    assert_eq!(
        h.availability(t0),
        Availability::Cooling(t0 + BASE_COOLDOWN)
    );
    // Cooldown over: one probe is let through, the others wait.
    let t1 = t0 + BASE_COOLDOWN;
    assert_eq!(h.availability(t1), Availability::Probe);
    let probe = h.start_probe();
    assert!(probe.is_some());
    assert!(h.start_probe().is_none());
    assert!(matches!(h.availability(t1), Availability::Cooling(_)));
    // The probe fails: open again, for twice as long.
    assert!(h.failed(t1));
    drop(probe);
    assert_eq!(
        h.availability(t1),
        Availability::Cooling(t1 + 2 * BASE_COOLDOWN)
    );
    // A successful probe closes it.
    let t2 = t1 + 2 * BASE_COOLDOWN;
    let _probe = h.start_probe();
    h.succeeded();
    assert_eq!(h.availability(t2), Availability::Ready);
}

#[test]
fn a_probe_that_ends_without_a_verdict_frees_the_slot() {
    let h = Arc::new(Health::default());
    let t0 = Instant::now();
    for _ in 0..FAILURES_TO_OPEN {
        h.failed(t0);
    }
    let t1 = t0 + BASE_COOLDOWN;
    let probe = h.start_probe();
    assert!(probe.is_some());
    // Say the client got a 404 and left: no success, no failure.
    drop(probe);
    assert_eq!(h.availability(t1), Availability::Probe);
    // A stale slot never frees a newer probe's.
    let first = h.start_probe();
    h.failed(t1);
    let t2 = t1 + 2 * BASE_COOLDOWN;
    let second = h.start_probe();
    assert!(second.is_some());
    drop(first);
    assert!(matches!(h.availability(t2), Availability::Cooling(_)));
    drop(second);
}

#[test]
fn however_long_the_outage_the_cooldown_stays_short() {
    let h = Health::default();
    let mut t = Instant::now();
    // An hour of failures, probed every time a cooldown ends.
    for _ in 0..1000 {
        h.failed(t);
        if let Availability::Cooling(until) = h.availability(t) {
            assert!(until - t <= MAX_COOLDOWN);
            t = until;
        }
    }
    assert!(MAX_COOLDOWN <= Duration::from_secs(15));
}

#[test]
fn a_success_resets_the_failure_count() {
    let h = Health::default();
    let t = Instant::now();
    h.failed(t);
    h.failed(t);
    h.succeeded();
    assert!(!h.failed(t), "the count restarted");
    assert_eq!(h.availability(t), Availability::Ready);
}

#[test]
fn a_rate_limit_cools_down_for_its_retry_after() {
    let h = Health::default();
    let t = Instant::now();
    h.rate_limited(t, Some(Duration::from_secs(7)));
    assert_eq!(
        h.availability(t),
        Availability::Cooling(t + Duration::from_secs(7))
    );
    let other = Health::default();
    other.rate_limited(t, None);
    assert_eq!(
        other.availability(t),
        Availability::Cooling(t + DEFAULT_RATE_LIMIT_COOLDOWN)
    );
}

#[test]
fn a_passing_health_check_lifts_a_failure_cooldown_but_not_a_rate_limit() {
    let t = Instant::now();
    let failing = Health::default();
    for _ in 0..FAILURES_TO_OPEN {
        failing.failed(t);
    }
    failing.check_passed(t);
    assert_eq!(failing.availability(t), Availability::Ready);
    let limited = Health::default();
    limited.rate_limited(t, Some(Duration::from_secs(30)));
    limited.check_passed(t);
    assert!(matches!(limited.availability(t), Availability::Cooling(_)));
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let h = Arc::new(Health::default());
    let t = Instant::now();
    h.observe_latency(t, Duration::from_millis(10));
    h.observe_latency(t, Duration::from_millis(100));
    assert!((h.latency_cost() - 100_000.0).abs() < 1.0);
    h.observe_latency(t + EWMA_DECAY, Duration::from_millis(10));
    let decayed = h.latency_cost();
    assert!(decayed < 100_000.0 && decayed > 10_000.0, "{decayed}");
    let _guard = h.enter();
    assert_eq!(h.in_flight(), 1);
    assert!((h.latency_cost() - 2.0 * decayed).abs() < 1.0);
}

fn backend() -> Backend {
    let yaml = "backends:\n  - {name: a, url: 'http://127.0.0.1:1/v1', model: m}\nroutes:\n  - {name: r, utterances: [x], targets: [a]}\n";
    let config = crate::config::Config::parse(yaml, "t", std::path::Path::new("."));
    config.unwrap_or_else(|e| panic!("{e}")).backends.remove(0)
}

#[test]
fn the_board_says_when_a_verdict_or_a_check_put_a_backend_in_a_cooldown() {
    let (board, a, b) = (Board::new(1), backend(), BackendId::at(0));
    let now = Instant::now();
    assert!(!board.cool_down(&a, b, Cooldown::None, || 0.5));
    assert!(!board.cool_down(&a, b, Cooldown::Failure, || 0.5));
    assert!(board.usable(b, None, now));
    assert!(!board.usable(b, Some(0), now), "at its concurrency limit");
    assert!(!board.checked(&a, b, None));
    assert!(
        board.checked(&a, b, Some(503)),
        "the third failure in a row"
    );
    assert!(!board.usable(b, None, Instant::now()));
    assert!(!board.checked(&a, b, Some(200)));
    assert!(
        board.usable(b, None, Instant::now()),
        "a passing check lifts it"
    );
    assert!(board.cool_down(&a, b, Cooldown::RateLimited(None), || 0.5));
    assert!(board.cool_down(&a, b, Cooldown::Credential, || 0.5));
    assert!(!board.usable(b, None, Instant::now()));
}

#[test]
fn an_admission_after_the_cooldown_holds_the_probe_slot_until_dropped() {
    let h = Arc::new(Health::default());
    let t0 = Instant::now();
    for _ in 0..FAILURES_TO_OPEN {
        h.failed(t0);
    }
    let probe = h.admit(t0 + BASE_COOLDOWN);
    assert!(probe.is_some() && h.start_probe().is_none());
    drop(probe);
    assert!(h.start_probe().is_some());
}

#[test]
fn a_snapshot_names_the_breakers_state_and_the_load() {
    let h = Arc::new(Health::default());
    let t0 = Instant::now();
    let fresh = h.snapshot(t0);
    assert_eq!(fresh.state, BreakerState::Closed);
    assert_eq!(
        (fresh.failures, fresh.remaining, fresh.latency),
        (0, None, None)
    );
    let _busy = h.enter();
    h.observe_latency(t0, Duration::from_millis(40));
    for _ in 0..FAILURES_TO_OPEN {
        h.failed(t0);
    }
    let open = h.snapshot(t0);
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.failures, FAILURES_TO_OPEN);
    assert_eq!(open.remaining, Some(BASE_COOLDOWN));
    assert_eq!(open.in_flight, 1);
    assert_eq!(open.latency, Some(Duration::from_millis(40)));
    let after = h.snapshot(t0 + BASE_COOLDOWN);
    assert_eq!(
        (after.state, after.remaining),
        (BreakerState::HalfOpen, None)
    );
    let limited = Health::default();
    limited.rate_limited(t0, Some(Duration::from_secs(7)));
    assert_eq!(limited.snapshot(t0).state, BreakerState::Cooling);
}
