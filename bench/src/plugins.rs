//! `eddy-bench plugins`: the AsyncProcess aggregator as components built
//! from Rust, Python and JavaScript (each against contract 0.1.0 and
//! 0.2.0), next to the same fold compiled natively into this binary — with
//! a JSON state (the 0.1.0 boundary) and with the 0.2.0 boundary
//! (MessagePack, resident states) — in one run, so the ratios survive a
//! noisy machine.
//!
//! Two tables:
//! - one key per call, no state, 1/100/1,000 events (the call's own cost);
//! - state carried: `keys` keys whose states already hold `history`
//!   executions; each round brings one event per key (a micro-batch where
//!   every event is on a key of its own, the per-event worst case), folded
//!   as the worker folds it — one call per key on 0.1.0, as many keys per
//!   call as a call takes on 0.2.0, resident states named by version.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_process_aggregator::AsyncProcessAggregator;
use eddy::config::PluginKind;
use eddy::execute::{Instance, KeyInput, Runtime};
use eddy::store::State;
use eddy_bench::workload::{self, Batch};
use eddy_sdk::runtime::{KeyEvents, Resident};

/// Scenario settings.
pub struct Settings {
    /// Components as (label, path).
    pub components: Vec<(String, PathBuf)>,
    /// Events per call of the one-key table.
    pub batches: Vec<usize>,
    /// Time spent measuring each cell of the one-key table.
    pub millis: u64,
    /// Keys of the state-carried table.
    pub keys: usize,
    /// Executions each key's state holds before the measured rounds.
    pub history: usize,
    /// Measured rounds (one event per key each).
    pub rounds: usize,
    /// Where to write the JSON results.
    pub out: PathBuf,
}

struct Cell {
    label: String,
    batch: usize,
    calls: u64,
    elapsed: Duration,
}

impl Cell {
    fn per_call_us(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
    fn events_per_s(&self) -> f64 {
        (self.calls as f64 * self.batch as f64) / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn measure(
    label: &str,
    batch: usize,
    budget: Duration,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Cell> {
    call()?; // warm up (first call instantiates)
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < budget || calls < 3 {
        call()?;
        calls += 1;
    }
    Ok(Cell {
        label: label.to_owned(),
        batch,
        calls,
        elapsed: started.elapsed(),
    })
}

fn instances(components: &[(String, PathBuf)]) -> Result<Vec<(String, Instance)>> {
    let runtime = Runtime::new()?;
    let mut instances = Vec::new();
    for (label, path) in components {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config = workload::unlimited_plugin(label, path);
        let compile = Instant::now();
        let plugin = runtime.load(
            &config,
            &path.display().to_string(),
            &bytes,
            Some(PluginKind::Aggregator),
        )?;
        eprintln!(
            "{label}: contract {}, {} bytes, compiled in {:.2} s",
            plugin.contract().as_str(),
            bytes.len(),
            compile.elapsed().as_secs_f64()
        );
        instances.push((label.clone(), Instance::new(Arc::new(plugin))));
    }
    Ok(instances)
}

/// Folds one key's events with `instance`, as the worker's single-key call.
fn fold_one(instance: &mut Instance, key: &str, batch: &Batch) -> Result<()> {
    let events = batch.events();
    let input = KeyInput {
        key,
        state: None,
        version: 0,
        events: &events,
    };
    for r in instance
        .fold(std::slice::from_ref(&input))
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Each key's state with the version its instance gave it.
type States = Vec<Option<(State, u64)>>;

/// One round of the state-carried table: every key's batch folded, as
/// many keys per call as a call takes.
fn round(instance: &mut Instance, batches: &[Batch], states: &mut States) -> Result<()> {
    let events: Vec<_> = batches.iter().map(Batch::events).collect();
    let inputs: Vec<KeyInput<'_>> = batches
        .iter()
        .zip(&events)
        .zip(states.iter())
        .map(|((b, events), state)| KeyInput {
            key: b.key(),
            state: state.as_ref().map(|(s, _)| s),
            version: state.as_ref().map_or(0, |(_, v)| *v),
            events,
        })
        .collect();
    let mut folded = Vec::with_capacity(inputs.len());
    let mut rest = inputs.as_slice();
    while !rest.is_empty() {
        let n = Instance::call_size(rest).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        for r in instance.fold(chunk).map_err(|e| anyhow::anyhow!("{e}"))? {
            folded.push(r.map_err(|e| anyhow::anyhow!("{e}"))?);
        }
    }
    drop(inputs);
    for (slot, f) in states.iter_mut().zip(folded) {
        *slot = Some((f.state, f.version));
    }
    Ok(())
}

fn key_batches(keys: usize, first: u64, per_key: usize) -> Vec<Batch> {
    (0..keys)
        .map(|k| Batch::of(&format!("p{k:06}"), first + (k * per_key) as u64, per_key))
        .collect()
}

/// A measured row of the state-carried table.
struct Carried {
    label: String,
    events: usize,
    elapsed: Duration,
}

impl Carried {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A state-carried row: best of three runs, each starting from fresh
/// states (`fresh`), folding `history` events per key, then timing the
/// rounds of one event per key; `step` folds one batch of every key.
fn carried<S>(
    label: &str,
    s: &Settings,
    mut fresh: impl FnMut() -> S,
    mut step: impl FnMut(&[Batch], &mut S) -> Result<()>,
) -> Result<Carried> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let mut states = fresh();
        step(&key_batches(s.keys, 0, s.history), &mut states)?;
        let rounds: Vec<Vec<Batch>> = (0..s.rounds)
            .map(|r| key_batches(s.keys, 10_000_000 + (r * s.keys) as u64, 1))
            .collect();
        let started = Instant::now();
        for batches in &rounds {
            step(batches, &mut states)?;
        }
        best = best.min(started.elapsed());
    }
    Ok(Carried {
        label: label.to_owned(),
        events: s.keys * s.rounds,
        elapsed: best,
    })
}

/// The state-carried rounds for one component.
fn carried_component(label: &str, instance: &mut Instance, s: &Settings) -> Result<Carried> {
    carried(
        label,
        s,
        || vec![None; s.keys],
        |batches, states| round(instance, batches, states),
    )
}

/// The same rounds natively, with a JSON state (the 0.1.0 boundary).
fn carried_native_json(s: &Settings) -> Result<Carried> {
    carried(
        "native, JSON state",
        s,
        || vec![None; s.keys],
        |batches, states: &mut Vec<Option<String>>| {
            for (b, state) in batches.iter().zip(states.iter_mut()) {
                let (json, _) = eddy_sdk::runtime::apply_json::<AsyncProcessAggregator>(
                    b.key(),
                    state.as_deref(),
                    b.native(),
                )
                .map_err(|f| anyhow::anyhow!("native fold: {f}"))?;
                *state = Some(json);
            }
            Ok(())
        },
    )
}

/// Native states through the 0.2.0 boundary: resident ones, and each key's
/// bytes with their version.
type Packed = (
    Resident<async_process_aggregator::AsyncProcess>,
    Vec<Option<(Vec<u8>, u64)>>,
);

/// The same rounds natively through the 0.2.0 boundary (MessagePack,
/// resident states): what the Rust component does without WebAssembly.
fn carried_native_packed(s: &Settings) -> Result<Carried> {
    let mut version = 0u64;
    carried(
        "native, 0.2.0 boundary (MessagePack, resident)",
        s,
        || (Resident::with_budget(512 << 20), vec![None; s.keys]),
        |batches, (resident, states): &mut Packed| {
            let calls: Vec<KeyEvents> = batches
                .iter()
                .zip(states.iter())
                .map(|(b, state)| {
                    version += 1;
                    KeyEvents {
                        key: b.key().to_owned(),
                        state: state.as_ref().map(|(bytes, _)| bytes.clone()),
                        version: state.as_ref().map_or(0, |(_, v)| *v),
                        next_version: version,
                        events: b.native(),
                    }
                })
                .collect();
            let versions: Vec<u64> = calls.iter().map(|c| c.next_version).collect();
            let results = eddy_sdk::runtime::fold::<AsyncProcessAggregator>(resident, calls);
            for ((slot, r), v) in states.iter_mut().zip(results).zip(versions) {
                let (bytes, _) = r.map_err(|f| anyhow::anyhow!("native fold: {f}"))?;
                *slot = Some((bytes, v));
            }
            Ok(())
        },
    )
}

/// Runs the scenario and prints both tables.
pub fn run(s: &Settings) -> Result<()> {
    let budget = Duration::from_millis(s.millis);
    let mut instances = instances(&s.components)?;
    let mut cells = Vec::new();
    for &batch in &s.batches {
        let b = workload::one_key_batch(batch);
        let native_events = b.native();
        cells.push(measure("native, JSON state", batch, budget, || {
            eddy_sdk::runtime::apply_json::<AsyncProcessAggregator>(
                workload::ONE_KEY,
                None,
                native_events.clone(),
            )
            .map(drop)
            .map_err(|f| anyhow::anyhow!("native fold failed: {f}"))
        })?);
        for (label, instance) in &mut instances {
            cells.push(measure(label, batch, budget, || {
                fold_one(instance, workload::ONE_KEY, &b)
            })?);
        }
    }
    println!("| plugin | batch | calls | µs per call | events/s | vs native |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut one_key = Vec::new();
    for c in &cells {
        let native = cells
            .iter()
            .find(|n| n.label.starts_with("native") && n.batch == c.batch)
            .map_or(1.0, Cell::events_per_s);
        let ratio = c.events_per_s() / native;
        println!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.2}× |",
            c.label,
            c.batch,
            c.calls,
            c.per_call_us(),
            c.events_per_s(),
            ratio
        );
        one_key.push(serde_json::json!({
            "plugin": c.label, "batch": c.batch, "calls": c.calls,
            "us_per_call": c.per_call_us(), "events_per_s": c.events_per_s(), "ratio_to_native": ratio,
        }));
    }

    let mut rows = vec![carried_native_json(s)?, carried_native_packed(s)?];
    for (label, instance) in &mut instances {
        rows.push(carried_component(label, instance, s)?);
    }
    let json_native = rows.first().map_or(1.0, Carried::events_per_s);
    let packed_native = rows.get(1).map_or(1.0, Carried::events_per_s);
    println!();
    println!(
        "| state carried: {} keys × {} executions, then {} rounds of one event per key | events/s | µs per event | vs native JSON | vs native 0.2.0 |",
        s.keys, s.history, s.rounds
    );
    println!("|---|---:|---:|---:|---:|");
    let mut carried = Vec::new();
    for r in &rows {
        let rate = r.events_per_s();
        println!(
            "| {} | {rate:.0} | {:.2} | {:.2}× | {:.2}× |",
            r.label,
            1e6 / rate.max(1e-9),
            rate / json_native,
            rate / packed_native
        );
        carried.push(serde_json::json!({
            "plugin": r.label, "events": r.events, "events_per_s": rate,
            "vs_native_json": rate / json_native, "vs_native_packed": rate / packed_native,
        }));
    }
    eddy_bench::process::write_results(
        &s.out,
        &serde_json::json!({
            "one_key": one_key,
            "state_carried": {
                "keys": s.keys, "history": s.history, "rounds": s.rounds, "rows": carried,
            },
        }),
    )?;
    Ok(())
}
