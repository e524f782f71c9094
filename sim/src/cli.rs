//! `simulate`: runs seeds, prints figures, exits non-zero on a violation or a missed goal.

use std::time::Instant;

use crate::world::{Tally, Violation, run};

/// The seeds CI runs every time (plus one random seed, printed).
pub const FIXED_SEEDS: [u64; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];
/// Steps per seed in the default run: what each seed got when eight fixed seeds and the random
/// one shared a million, and keeps now there are more (mutation 04 of `hack/mutations.sh` is
/// caught by seed 4 at step 103,526).
pub const STEPS_PER_SEED: u64 = 111_112;
/// The goal: at least this many steps ...
pub const GOAL_STEPS: u64 = 1_000_000;
/// ... in at most this long, on 2 cores.
pub const GOAL_SECS: f64 = 120.0;

pub struct SeedRun {
    pub seed: u64,
    pub tally: Tally,
    pub hash: u64,
    pub violation: Option<Violation>,
    pub events_per_credential: f64,
}

/// Runs each seed for `steps` steps, spread over `threads` threads.
pub fn run_seeds(seeds: &[u64], steps: u64, threads: usize) -> Vec<SeedRun> {
    let queue = std::sync::Mutex::new(seeds.to_vec());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let Some(seed) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let (tally, hash, violation, epc) = run(seed, steps);
                    results.lock().unwrap().push(SeedRun {
                        seed,
                        tally,
                        hash,
                        violation,
                        events_per_credential: epc,
                    });
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|r| r.seed);
    r
}

pub fn main() {
    let mut seed = None;
    let mut steps = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = |args: &mut dyn Iterator<Item = String>| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage(&a))
        };
        match a.as_str() {
            "--seed" => seed = Some(value(&mut args)),
            "--steps" => steps = Some(value(&mut args)),
            _ => usage(&a),
        }
    }
    let env_steps = std::env::var("EAGLE_EYE_SIM_STEPS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let (seeds, per_seed, goal) = match seed {
        Some(s) => (vec![s], steps.or(env_steps).unwrap_or(100_000), false),
        None => {
            let random = rand::random::<u32>() as u64 + 1000;
            println!("random seed: {random}");
            let mut seeds = FIXED_SEEDS.to_vec();
            seeds.push(random);
            let total = steps.or(env_steps);
            let per = total.map_or(STEPS_PER_SEED, |t| t.div_ceil(seeds.len() as u64));
            (seeds, per, total.is_none())
        }
    };
    let started = Instant::now();
    let results = run_seeds(&seeds, per_seed, 2);
    let secs = started.elapsed().as_secs_f64();
    let mut total = Tally::default();
    let mut failed = false;
    for r in &results {
        let t = &r.tally;
        println!(
            "seed {:>10}: {:>8} steps {:>7} reconciles {:>6} token calls {:>6} refreshes {:>4} crashes {:>4} reuses {:>5} Events ({:.1}/credential) trace {:016x}",
            r.seed,
            t.steps,
            t.reconciles,
            t.token_calls,
            t.refreshes,
            t.crashes,
            t.reuses,
            t.events,
            r.events_per_credential,
            r.hash
        );
        for (a, b) in [
            (&mut total.steps, t.steps),
            (&mut total.reconciles, t.reconciles),
            (&mut total.token_calls, t.token_calls),
            (&mut total.refreshes, t.refreshes),
            (&mut total.crashes, t.crashes),
            (&mut total.reuses, t.reuses),
            (&mut total.events, t.events),
        ] {
            *a += b;
        }
        if let Some(v) = &r.violation {
            println!("{v}");
            // A violation of the fixed set fails the run. The random seed explores: in CI
            // (`EAGLE_EYE_SIM_RANDOM_GATES=0`) its finding is printed with its replay command
            // for a person to turn into a fix and a named test, without blocking the landing.
            let gates = FIXED_SEEDS.contains(&r.seed)
                || std::env::var("EAGLE_EYE_SIM_RANDOM_GATES").as_deref() != Ok("0");
            if gates {
                failed = true;
            } else {
                println!(
                    "EXPLORATION FINDING (random seed {}, not gating this run)",
                    r.seed
                );
            }
        }
    }
    let rate = total.steps as f64 / secs;
    println!(
        "total: {} steps, {} reconciles, {} token calls, {} refreshes, {} crashes, {} reuses in {secs:.1}s: {rate:.0} steps/s",
        total.steps,
        total.reconciles,
        total.token_calls,
        total.refreshes,
        total.crashes,
        total.reuses
    );
    if goal {
        // A seed stopped by a violation ran fewer steps: the goal is then judged on the rate.
        let ok = secs <= GOAL_SECS
            && (total.steps >= GOAL_STEPS || rate * GOAL_SECS >= GOAL_STEPS as f64);
        println!(
            "goal {GOAL_STEPS} steps in {GOAL_SECS}s: {}",
            if ok { "met" } else { "MISSED" }
        );
        failed |= !ok;
    }
    if failed {
        std::process::exit(1);
    }
}

fn usage(arg: &str) -> ! {
    eprintln!(
        "unexpected argument {arg:?}\nusage: simulate [--seed S] [--steps N]  (EAGLE_EYE_SIM_STEPS sets the default steps)"
    );
    std::process::exit(2)
}
