//! The rate-limit script that production runs (`edge/ratelimit/script.lua`), property-tested on a real
//! Redis against the Rust model of GCRA (`gcra::decide`, itself checked against a token bucket) as the
//! oracle: single decisions, batches, several policies at once, refill over time, and a clock that
//! jumps back (a fail-over to a Redis whose clock is behind).
//!
//! The script reads its clock from Redis (`TIME`); to drive time, the test runs the same script with the
//! clock swapped for an argument, and the keys' expiry (which Redis counts in real time, not in the
//! test's time) set to a day. Every other line is production's; expiry is tested on Redis's own clock in
//! the last test.

use gateway::config::Rate;
use gateway::edge::ratelimit::gcra::{decide, Gcra};
use gateway::edge::ratelimit::global::SCRIPT;
use proptest::prelude::*;
use redis::Commands;
use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::redis_url;

/// The clock lines of the script, and what the test puts in their place: `now` from the last argument.
const CLOCK: &str =
    "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n";
const TEST_CLOCK: &str = "local now = tonumber(ARGV[#ARGV])\n";
/// The keys' time to live, and the test's.
const EXPIRY: &str = "'PX', math.floor((new_tat - now) / 1000) + 1";
const TEST_EXPIRY: &str = "'PX', 86400000";

fn test_script() -> redis::Script {
    redis::Script::new(
        &SCRIPT
            .replace(CLOCK, TEST_CLOCK)
            .replace(EXPIRY, TEST_EXPIRY),
    )
}

/// Unix time in microseconds today: large enough that Lua's doubles must stay exact.
const EPOCH_US: u64 = 1_780_000_000_000_000;

fn conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection()
        .expect("redis (started by scripts/test.sh)")
}

/// A key prefix of this run alone, so runs never see each other's counters.
fn prefix() -> String {
    format!("aggios:test:gcra:{}:", fastrand::u64(..))
}

fn clean(c: &mut redis::Connection, prefix: &str) {
    let keys: Vec<String> = c.keys(format!("{prefix}*")).unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = c.del(keys);
    }
}

/// What the script answers for one key.
#[derive(Debug, PartialEq, Eq)]
struct KeyOut {
    fit: u64,
    remaining: u64,
    retry_after_us: u64,
    reset_us: u64,
}

fn run(
    c: &mut redis::Connection,
    script: &redis::Script,
    keys: &[(String, Gcra)],
    n: u64,
    now: Option<u64>,
) -> (u64, Vec<KeyOut>) {
    let mut inv = script.prepare_invoke();
    for (k, _) in keys {
        inv.key(k);
    }
    inv.arg(n);
    for (_, g) in keys {
        inv.arg(g.interval_us).arg(g.tolerance_us);
    }
    if let Some(now) = now {
        inv.arg(now);
    }
    let raw: Vec<u8> = inv.invoke(c).expect("script call");
    let reply = gateway::edge::ratelimit::global::reply_numbers(&raw).expect("a reply of integers");
    assert_eq!(reply.len(), 1 + 4 * keys.len(), "reply shape: {reply:?}");
    let u = |v: i64| u64::try_from(v).expect("the script answers no negative number");
    let outs = reply[1..]
        .chunks_exact(4)
        .map(|c| KeyOut {
            fit: u(c[0]),
            remaining: u(c[1]),
            retry_after_us: u(c[2]),
            reset_us: u(c[3]),
        })
        .collect();
    (u(reply[0]), outs)
}

/// How many requests one policy alone admits at `now`, one at a time (the oracle's "fit").
fn fit_alone(g: Gcra, mut tat: Option<u64>, now: u64) -> u64 {
    let mut n = 0;
    while decide(g, tat, now).allowed {
        tat = Some(decide(g, tat, now).tat_us);
        n += 1;
    }
    n
}

/// The oracle for one call: `n` requests arriving at `now`, each decided one at a time by the model; a
/// request passes only when every policy admits it, and then counts on every policy.
fn oracle(
    policies: &[Gcra],
    tats: &[Option<u64>],
    now: u64,
    n: u64,
) -> (u64, Vec<Option<u64>>, Vec<KeyOut>) {
    let mut after = tats.to_vec();
    let mut k = 0;
    for _ in 0..n {
        let ds: Vec<_> = policies
            .iter()
            .zip(&after)
            .map(|(g, t)| decide(*g, *t, now))
            .collect();
        if !ds.iter().all(|d| d.allowed) {
            break;
        }
        for (t, d) in after.iter_mut().zip(&ds) {
            *t = Some(d.tat_us);
        }
        k += 1;
    }
    let outs = policies
        .iter()
        .zip(tats)
        .zip(&after)
        .map(|((g, before), after)| {
            let next = decide(*g, *after, now);
            KeyOut {
                fit: fit_alone(*g, *before, now),
                remaining: fit_alone(*g, *after, now),
                retry_after_us: if next.allowed { 0 } else { next.retry_after_us },
                reset_us: after.unwrap_or(now).max(now) - now,
            }
        })
        .collect();
    (k, after, outs)
}

fn policy() -> impl Strategy<Value = Gcra> {
    // Small limits, no burst and round periods often: the exact boundaries (a bucket of one, a request
    // arriving exactly when the next cell is due) are where an off-by-one would hide.
    (
        prop_oneof![2 => 1u64..4, 3 => 1u64..200, 1 => Just(10u64)],
        prop_oneof![1 => Just(0u64), 2 => 0u64..50],
        prop_oneof![3 => 1u64..3_000, 1 => Just(100u64), 1 => Just(1_000u64)],
    )
        .prop_map(|(limit, burst, period_ms)| {
            Gcra::new(Rate { limit, burst }, Duration::from_millis(period_ms))
        })
}

/// How the clock moves before a call.
#[derive(Debug, Clone)]
enum Clock {
    /// By this many microseconds (back when negative: a fail-over to a Redis whose clock is behind).
    By(i64),
    /// To a policy's TAT, give or take a microsecond (where its bucket is full again).
    ToFull(usize, i64),
    /// To when a policy's next cell is due (TAT − tolerance), give or take a microsecond.
    ToDue(usize, i64),
}

/// One call: which of the three policies it carries, its batch size, and how the clock moves.
fn step() -> impl Strategy<Value = (Vec<bool>, u64, Clock)> {
    (
        proptest::collection::vec(any::<bool>(), 3),
        prop_oneof![3 => 1u64..4, 1 => 1u64..400],
        // Mostly forward: by anything up to several refills, by round steps, or not at all; to the exact
        // boundaries of a policy; sometimes back by up to two seconds.
        prop_oneof![
            4 => (0i64..3_000_000).prop_map(Clock::By),
            2 => (0i64..300).prop_map(|m| Clock::By(m * 10_000)),
            1 => Just(Clock::By(0)),
            2 => (0usize..3, -1i64..=1).prop_map(|(j, d)| Clock::ToFull(j, d)),
            2 => (0usize..3, -1i64..=1).prop_map(|(j, d)| Clock::ToDue(j, d)),
            1 => (-2_000_000i64..0).prop_map(Clock::By),
        ],
    )
}

#[test]
fn the_test_script_differs_only_in_clock_and_expiry() {
    assert!(
        SCRIPT.contains(CLOCK),
        "script.lua's clock lines changed; update CLOCK here"
    );
    assert_eq!(SCRIPT.matches("redis.call('TIME')").count(), 1);
    assert_eq!(
        SCRIPT.matches(EXPIRY).count(),
        1,
        "script.lua's expiry changed; update EXPIRY here"
    );
    assert_eq!(SCRIPT.matches("'PX'").count(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_lua_script_decides_as_the_model_does(
        policies in proptest::collection::vec(policy(), 3),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let script = test_script();
        let mut c = conn();
        let prefix = prefix();
        let names: Vec<String> = (0..3).map(|i| format!("{prefix}{{p{i}}}")).collect();
        let mut model: HashMap<usize, Option<u64>> = (0..3).map(|i| (i, None)).collect();
        let mut now = EPOCH_US;
        for (i, (pick, n, clock)) in steps.into_iter().enumerate() {
            now = match clock {
                Clock::By(dt) => now.saturating_add_signed(dt),
                Clock::ToFull(j, d) => model[&j].unwrap_or(now).saturating_add_signed(d),
                Clock::ToDue(j, d) => model[&j]
                    .unwrap_or(now)
                    .saturating_sub(policies[j].tolerance_us)
                    .saturating_add_signed(d),
            };
            let mut chosen: Vec<usize> = (0..3).filter(|j| pick[*j]).collect();
            if chosen.is_empty() {
                chosen.push(i % 3);
            }
            let gs: Vec<Gcra> = chosen.iter().map(|j| policies[*j]).collect();
            let tats: Vec<Option<u64>> = chosen.iter().map(|j| model[j]).collect();
            let keys: Vec<(String, Gcra)> = chosen.iter().map(|j| (names[*j].clone(), policies[*j])).collect();

            let (k, outs) = run(&mut c, &script, &keys, n, Some(now));
            let (want_k, after, want) = oracle(&gs, &tats, now, n);
            prop_assert_eq!(k, want_k, "step {}: allowed of {} at +{}us", i, n, now - EPOCH_US);
            prop_assert_eq!(&outs, &want, "step {}", i);
            // What Redis holds is the model's TAT: moved on when something was allowed, untouched otherwise.
            for (j, t) in chosen.iter().zip(after) {
                let stored: Option<u64> = c.get(&names[*j]).expect("GET");
                if k > 0 {
                    prop_assert_eq!(stored, t, "step {}: stored TAT of p{}", i, j);
                } else {
                    prop_assert_eq!(stored, model[j], "step {}: a refused batch wrote p{}", i, j);
                }
                if k > 0 {
                    model.insert(*j, t);
                }
            }
        }
        clean(&mut c, &prefix);
    }
}

/// The production script on Redis's own clock: a full burst passes, the next is refused with a retry of
/// about one interval, and the key expires once its bucket would be full again (no key left behind).
#[test]
fn on_redis_clock_the_burst_passes_and_the_key_expires_when_full() {
    let script = redis::Script::new(SCRIPT);
    let mut c = conn();
    let prefix = prefix();
    let g = Gcra::new(Rate { limit: 5, burst: 0 }, Duration::from_secs(1));
    let keys = vec![(format!("{prefix}{{burst}}"), g)];
    let (k, out) = run(&mut c, &script, &keys, 8, None);
    assert_eq!(k, 5, "the burst is the capacity");
    assert_eq!(out[0].fit, 5);
    assert_eq!(out[0].remaining, 0);
    assert!(
        out[0].retry_after_us > 0 && out[0].retry_after_us <= g.interval_us,
        "{out:?}"
    );
    assert!(out[0].reset_us <= 5 * g.interval_us, "{out:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0].0)
        .query(&mut c)
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl as u64 <= out[0].reset_us / 1000 + 1,
        "the key lives until its bucket is full again: ttl {ttl} ms, reset {} us",
        out[0].reset_us
    );
    clean(&mut c, &prefix);
}

/// #26: a monthly counter rides in the same call as a GCRA policy: the batch admits what both still
/// fit, counts exactly those on both, and the counter keeps a month-long expiry.
#[test]
fn a_monthly_counter_caps_the_batch_beside_a_policy() {
    let script = redis::Script::new(SCRIPT);
    let mut c = conn();
    let prefix = prefix();
    let g = Gcra::new(
        Rate {
            limit: 100,
            burst: 0,
        },
        Duration::from_secs(1),
    );
    let keys = vec![
        (format!("{prefix}{{rate}}"), g),
        (format!("{prefix}month"), Gcra::counter(7)),
    ];
    let (k, out) = run(&mut c, &script, &keys, 5, None);
    assert_eq!((k, out[1].fit, out[1].remaining), (5, 7, 2));
    let (k, out) = run(&mut c, &script, &keys, 5, None);
    assert_eq!(k, 2, "only the quota's rest");
    assert_eq!(
        (out[0].fit >= 5, out[1].fit, out[1].remaining),
        (true, 2, 0)
    );
    let counted: u64 = c.get(&keys[1].0).expect("counter");
    assert_eq!(counted, 7, "refused requests are not counted");
    let (k, _) = run(&mut c, &script, &keys, 1, None);
    assert_eq!(k, 0);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[1].0)
        .query(&mut c)
        .expect("TTL");
    assert!(ttl > 30 * 86_400, "outlives its month: {ttl} s");
    clean(&mut c, &prefix);
}
