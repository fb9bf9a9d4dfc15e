use super::*;
use std::collections::HashMap;
use std::time::Duration;

fn inst(id: &str, weight: u32, zone: &str) -> Instance {
    Instance::new("svc", format!("127.0.0.1:{}", 1000 + id.len())).with_id(id).with_weight(weight).with_zone(zone)
}

fn balancer(policy: Policy, ids: &[(&str, u32)]) -> Balancer {
    let b = Balancer::new(policy).with_seed(42);
    b.update(ids.iter().map(|(id, w)| inst(id, *w, "")));
    b
}

fn pick_ids(b: &Balancer, n: usize) -> Vec<String> {
    (0..n).map(|_| b.pick(None).unwrap().instance().id.clone()).collect()
}

fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for i in ids {
        *m.entry(i.clone()).or_default() += 1;
    }
    m
}

#[test]
fn round_robin_takes_turns() {
    let b = balancer(Policy::RoundRobin, &[("a", 1), ("b", 1), ("c", 1)]);
    let seq = pick_ids(&b, 6);
    assert_eq!(seq[..3], seq[3..]);
    assert_eq!(counts(&seq).len(), 3);
}

#[test]
fn weighted_round_robin_hits_exact_proportions_smoothly() {
    let b = balancer(Policy::WeightedRoundRobin, &[("a", 5), ("b", 1), ("c", 1)]);
    let seq = pick_ids(&b, 7);
    let c = counts(&seq);
    assert_eq!((c["a"], c["b"], c["c"]), (5, 1, 1));
    assert!(!seq.windows(4).any(|w| w.iter().all(|x| x == "a")), "smooth: no long bursts, got {seq:?}");
    // Over many cycles the proportions stay exact.
    let c = counts(&pick_ids(&b, 700));
    assert_eq!((c["a"], c["b"], c["c"]), (500, 100, 100));
    let b = balancer(Policy::WeightedRoundRobin, &[("x", 300), ("y", 200)]);
    let c = counts(&pick_ids(&b, 500));
    assert_eq!((c["x"], c["y"]), (300, 200), "weights are reduced by their gcd");
}

#[test]
fn random_is_reproducible_with_a_seed() {
    let a = pick_ids(&balancer(Policy::Random, &[("a", 1), ("b", 1), ("c", 1)]), 50);
    let b = pick_ids(&balancer(Policy::Random, &[("a", 1), ("b", 1), ("c", 1)]), 50);
    assert_eq!(a, b);
    assert_eq!(counts(&a).len(), 3);
}

#[test]
fn consistent_hash_moves_about_one_nth_of_keys() {
    let ids: Vec<String> = (0..10).map(|i| format!("node{i}")).collect();
    let b = Balancer::new(Policy::ConsistentHash);
    b.update(ids.iter().map(|id| inst(id, 100, "")));
    let keys: Vec<String> = (0..10_000).map(|k| format!("user-{k}")).collect();
    let place = |b: &Balancer| -> Vec<String> {
        keys.iter().map(|k| b.pick(Some(k.as_bytes())).unwrap().instance().id.clone()).collect()
    };
    let before = place(&b);
    let same = place(&b);
    assert_eq!(before, same, "the same key goes to the same instance");
    let spread = counts(&before);
    assert!(spread.values().all(|&n| n > 500 && n < 1600), "roughly even: {spread:?}");
    b.update(ids.iter().filter(|id| *id != "node3").map(|id| inst(id, 100, "")));
    let after = place(&b);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    assert!(before.iter().zip(&after).all(|(x, y)| x == y || x == "node3"), "only the leaving node's keys move");
    assert!(moved as f64 <= 10_000.0 / 10.0 * 1.6, "moved {moved} of 10000 keys");
}

#[test]
fn least_request_steers_away_from_a_slow_instance() {
    let b = balancer(Policy::LeastRequest, &[("fast1", 1), ("fast2", 1), ("slow", 1)]);
    let mut picks = Vec::new();
    for _ in 0..3000 {
        let mut g = b.pick(None).unwrap();
        let slow = g.instance().id == "slow";
        picks.push(g.instance().id.clone());
        g.success_with(if slow { Duration::from_millis(100) } else { Duration::from_millis(1) });
    }
    let c = counts(&picks[300..]);
    assert!(c.get("slow").copied().unwrap_or(0) < 2700 / 10, "slow got {:?}", c);
    // In-flight load counts too: hold requests open on fast1.
    let held: Vec<_> = (0..50).filter_map(|_| b.pick(None)).filter(|g| g.instance().id == "fast1").collect();
    assert!(!held.is_empty());
    let c = counts(&pick_ids(&b, 200));
    assert!(c.get("fast2").copied().unwrap_or(0) > c.get("fast1").copied().unwrap_or(0), "{c:?}");
}

#[test]
fn a_latency_average_halves_per_half_life_without_samples() {
    let s = EndpointStats::default();
    let h = 2_000;
    s.record_latency_at(Duration::from_millis(8), 1_000, h);
    assert_eq!(s.score_at(1_000, h), 8_000_000);
    assert_eq!(s.score_at(1_000 + h - 1, h), 8_000_000);
    assert_eq!(s.score_at(1_000 + h, h), 4_000_000);
    assert_eq!(s.score_at(1_000 + 3 * h, h), 1_000_000);
    // A new sample folds into the aged average: 1 ms - 1/4 + 1 ms/4.
    s.record_latency_at(Duration::from_millis(1), 1_000 + 3 * h, h);
    assert_eq!(s.score_at(1_000 + 3 * h, h), 1_000_000);
    // Zero turns aging off; a clock behind the sample ages nothing.
    assert_eq!(s.score_at(1_000_000, 0), 1_000_000);
    assert_eq!(s.score_at(0, h), 1_000_000);
}

/// An endpoint measured slow once (a slow connect) and idle since is tried
/// again once its average has aged, and measured afresh; before that it
/// gets nothing.
#[test]
fn least_request_tries_a_once_slow_idle_endpoint_again_after_aging() {
    let half_life = Duration::from_millis(40);
    let b = Balancer::new(Policy::LeastRequest)
        .with_health(HealthConfig { latency_half_life: half_life, ..Default::default() });
    b.update([inst("a", 100, ""), inst("b", 100, ""), inst("c", 100, "")]);
    // Every endpoint really answers in 0.2 ms.
    let answer = |b: &Balancer, picks: usize| {
        let mut ids = Vec::new();
        for _ in 0..picks {
            let mut g = b.pick(None).unwrap();
            ids.push(g.instance().id.clone());
            g.success_with(Duration::from_micros(200));
        }
        ids
    };
    // But c was measured once at 20 ms (its connect was slow).
    let set = b.set();
    let stats = |id: &str| set.endpoints.iter().find(|e| e.instance.id == id).unwrap().stats.clone();
    let now = now_ms();
    stats("c").record_latency_at(Duration::from_millis(20), now, 40);
    stats("a").record_latency_at(Duration::from_micros(200), now, 40);
    stats("b").record_latency_at(Duration::from_micros(200), now, 40);
    let soon = counts(&answer(&b, 200));
    assert_eq!(soon.get("c"), None, "c was picked while its slow sample was fresh: {soon:?}");
    // 20 ms halves to below 0.2 ms in seven half-lives.
    std::thread::sleep(half_life * 8);
    let later = counts(&answer(&b, 200));
    assert!(later.get("c").copied().unwrap_or(0) > 0, "c was never tried again: {later:?}");
    assert!(stats("c").latency_ewma() < Duration::from_millis(20), "c was not measured again");
}

#[test]
fn failures_eject_with_a_cap_and_a_probe_readmits() {
    let health = HealthConfig {
        consecutive_failures: 2,
        base_ejection: Duration::from_millis(40),
        max_ejection: Duration::from_secs(1),
        max_ejected_percent: 50,
        ..Default::default()
    };
    let b = Balancer::new(Policy::RoundRobin).with_health(health);
    b.update(["a", "b", "c", "d"].iter().map(|id| inst(id, 1, "")));
    let fail_on = |b: &Balancer, bad: &[&str], n: usize| {
        for _ in 0..n {
            let g = b.pick(None).unwrap();
            if bad.contains(&g.instance().id.as_str()) { g.failure() } else { g.success() }
        }
    };
    fail_on(&b, &["a", "b", "c"], 24);
    let set = b.set();
    let ejected: Vec<_> =
        set.endpoints.iter().filter(|e| e.stats.is_ejected()).map(|e| e.instance.id.clone()).collect();
    assert_eq!(ejected.len(), 2, "at most 50% ejected, got {ejected:?}");
    let seen = counts(&pick_ids(&b, 20));
    assert!(ejected.iter().all(|id| !seen.contains_key(id)), "ejected endpoints get no traffic");
    assert_eq!(
        seen.values().copied().collect::<std::collections::BTreeSet<_>>(),
        [10].into(),
        "the others share evenly: {seen:?}"
    );
    // After the backoff, exactly one probe goes through; success readmits.
    std::thread::sleep(Duration::from_millis(60));
    let probes: Vec<_> = (0..8).filter_map(|_| b.pick(None)).filter(|g| ejected.contains(&g.instance().id)).collect();
    assert_eq!(probes.len(), ejected.len(), "one probe per ejected endpoint");
    for p in probes {
        p.success();
    }
    assert!(b.set().endpoints.iter().all(|e| !ejected.contains(&e.instance.id) || !e.stats.is_ejected()));
}

#[test]
fn a_failed_probe_ejects_for_longer() {
    let health = HealthConfig {
        consecutive_failures: 1,
        base_ejection: Duration::from_millis(30),
        max_ejection: Duration::from_secs(5),
        max_ejected_percent: 50,
        ..Default::default()
    };
    let b = Balancer::new(Policy::RoundRobin).with_health(health);
    b.update(["a", "b"].iter().map(|id| inst(id, 1, "")));
    loop {
        let g = b.pick(None).unwrap();
        if g.instance().id == "a" {
            g.failure();
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(40));
    let probe = (0..4).filter_map(|_| b.pick(None)).find(|g| g.instance().id == "a").expect("probe admitted");
    probe.failure();
    std::thread::sleep(Duration::from_millis(40));
    assert!(pick_ids(&b, 6).iter().all(|id| id == "b"), "second ejection lasts 60 ms, not 30");
}

#[test]
fn zone_preference_falls_back_when_the_zone_is_unhealthy() {
    let health = HealthConfig { consecutive_failures: 1, max_ejected_percent: 100, ..Default::default() };
    let b = Balancer::new(Policy::RoundRobin).with_zone("eu").with_health(health);
    b.update([inst("e1", 1, "eu"), inst("e2", 1, "eu"), inst("u1", 1, "us"), inst("u2", 1, "us")]);
    assert!(pick_ids(&b, 10).iter().all(|id| id.starts_with('e')));
    // Eject one of two: half healthy is still enough.
    let g = (0..4).filter_map(|_| b.pick(None)).find(|g| g.instance().id == "e1").unwrap();
    g.failure();
    assert!(pick_ids(&b, 10).iter().all(|id| id == "e2"));
    let g = (0..4).filter_map(|_| b.pick(None)).find(|g| g.instance().id == "e2").unwrap();
    g.failure();
    let c = counts(&pick_ids(&b, 10));
    assert!(c.contains_key("u1") && c.contains_key("u2"), "spread over all: {c:?}");
}

#[test]
fn stats_survive_set_updates_and_empty_sets_pick_nothing() {
    let b = balancer(Policy::RoundRobin, &[("a", 1)]);
    let g = b.pick(None).unwrap();
    b.update([inst("a", 1, ""), inst("b", 1, "")]);
    let a = b.set().endpoints.iter().find(|e| e.instance.id == "a").unwrap().clone();
    assert_eq!(a.stats.in_flight(), 1, "in-flight count carried over");
    drop(g);
    assert_eq!(a.stats.in_flight(), 0);
    b.update([]);
    assert!(b.pick(None).is_none());
}

/// Two fast endpoints busy with many requests at once, a third 10x slower
/// and idle: in-flight times latency alone would send it requests (31 x
/// 2 ms > 1 x 20 ms), and those requests are the p99. It gets none while
/// the others can take them.
#[test]
fn least_request_passes_over_a_latency_outlier_whatever_the_in_flight_counts() {
    let b = balancer(Policy::LeastRequest, &[("fast1", 1), ("fast2", 1), ("slow", 1)]);
    let set = b.set();
    let stats = |id: &str| set.endpoints.iter().find(|e| e.instance.id == id).unwrap().stats.clone();
    let now = endpoint::now_ms();
    for (id, ms) in [("fast1", 2), ("fast2", 2), ("slow", 20)] {
        stats(id).record_latency_at(Duration::from_millis(ms), now, 2_000);
    }
    let mut held = Vec::new();
    while stats("fast1").in_flight() < 30 || stats("fast2").in_flight() < 30 {
        let g = b.pick(None).unwrap();
        assert_ne!(g.instance().id, "slow", "picked the outlier with {} requests in flight elsewhere", held.len());
        held.push(g);
    }
    let (fast1, slow) = (stats("fast1"), stats("slow"));
    assert!(!endpoint::prefer_second(&fast1, &slow, now, 2_000) && endpoint::prefer_second(&slow, &fast1, now, 2_000));
    // Once the fast ones slow down under the load (8 ms: no longer over 3x
    // faster), in-flight counts balance again and the third takes a share.
    for id in ["fast1", "fast2"] {
        for _ in 0..20 {
            stats(id).record_latency_at(Duration::from_millis(8), now, 2_000);
        }
    }
    // It wins every pair it is in (two of three): 1 x 20 ms < 31 x 8 ms.
    let c = counts(&pick_ids(&b, 300));
    assert!(c.get("slow").copied().unwrap_or(0) > 150, "{c:?}");
}

/// The outlier rule needs both more than a 3x ratio and a 1 ms gap, and both
/// endpoints measured; otherwise the score (in-flight times latency) decides.
#[test]
fn the_latency_outlier_rule_needs_a_ratio_a_gap_and_two_measurements() {
    let h = 2_000;
    let with = |lat_us: u64, in_flight: usize| {
        let s = Arc::new(EndpointStats::default());
        if lat_us > 0 {
            s.record_latency_at(Duration::from_micros(lat_us), 1_000, h);
        }
        (0..in_flight).for_each(|_| s.admit());
        s
    };
    let prefers_b = |a: &EndpointStats, b: &EndpointStats| endpoint::prefer_second(a, b, 1_000, h);
    // 5x and 8 ms slower: the outlier loses though it is idle.
    assert!(!prefers_b(&with(2_000, 40), &with(10_000, 0)));
    assert!(prefers_b(&with(10_000, 0), &with(2_000, 40)));
    // Exactly 3x: not an outlier; 41 x 2 ms > 1 x 6 ms.
    assert!(prefers_b(&with(2_000, 40), &with(6_000, 0)));
    // 6x but only 0.5 ms apart: jitter, so the score decides.
    assert!(prefers_b(&with(100, 40), &with(600, 0)));
    // Unmeasured: compared by score (at the 1 us floor) only.
    assert!(prefers_b(&with(2_000, 40), &with(0, 0)));
    // Equal scores: the first candidate.
    assert!(!prefers_b(&with(2_000, 1), &with(2_000, 1)));
    // A demoted endpoint gets no samples, so its average ages while the
    // other's stays fresh: two half-lives take 10 ms to 2.5 ms, and the idle
    // endpoint wins on score again (1 x 2.5 ms < 41 x 1.2 ms).
    let (fast, slow) = (with(2_000, 40), with(10_000, 0));
    fast.record_latency_at(Duration::from_micros(2_000), 1_000 + 2 * h, h);
    fast.record_latency_at(Duration::from_micros(2_000), 1_000 + 2 * h, h);
    assert!(endpoint::prefer_second(&fast, &slow, 1_000 + 2 * h, h));
}
