//! A test aggregator whose behaviour each event chooses with its `action`:
//!
//! - `ok`: appended to the state's `applied` list;
//! - `loop`: spins forever (the host must interrupt it);
//! - `alloc`: allocates until memory runs out (the host's cap must stop it);
//! - `panic`: panics (a trap);
//! - `big`: returns a state of `size` bytes;
//! - `fail`: an `invalid` failure (a poison event);
//! - `retry-twice`: a `retryable` failure the first two times an event id is
//!   seen by this instance, then applied;
//! - `retry-forever`: always `retryable`.
//! - `emit`: emits a record to `probe-out`;
//! - `emit-bad`: emits a record to a topic whose name is invalid;
//! - `log`: writes a warning to the host's log, then is applied;
//! - `timer-bad`: asks for a timer at an instant no calendar has;
//! - `timers`: sets `size` wall-clock timers an hour ahead (`t0`, `t1`, ...);
//! - `timer-soon`: sets the wall-clock timer `soon` 300 ms after the event.
//!
//! A fired timer (a schedule's run) is recorded in the state's `ticks` as
//! `{name}@{at_ms}`; one whose payload has `"fail": true` fails `invalid`.

use std::collections::HashMap;
use std::sync::Mutex;

use eddy_sdk::{Aggregator, Event, Failure, Output, Timer, TimerTime};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Probe {
    pub id: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub size: usize,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Applied {
    pub applied: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub padding: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticks: Vec<String>,
}

static SEEN: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn seen(id: &str) -> u32 {
    let mut guard = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = guard.get_or_insert_with(HashMap::new);
    let n = map.entry(id.to_owned()).or_insert(0);
    *n += 1;
    *n
}

pub struct SandboxProbe;

impl Aggregator for SandboxProbe {
    type Event = Probe;
    type State = Applied;

    fn init(_key: &str) -> Applied {
        Applied::default()
    }

    fn apply(state: &mut Applied, event: Event<Probe>, out: &mut Output) -> Result<(), Failure> {
        let p = event.value;
        match p.action.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("probe {} panics on purpose", p.id),
            "big" => state.padding = "x".repeat(p.size),
            "fail" => return Err(Failure::Invalid(format!("probe {} is poison", p.id))),
            "retry-twice" if seen(&p.id) <= 2 => {
                return Err(Failure::Retryable(format!("probe {} not yet", p.id)));
            }
            "retry-forever" => return Err(Failure::Retryable(format!("probe {} never", p.id))),
            "emit" => out.emit("probe-out", Some(&p.id), &p.id)?,
            "emit-bad" => out.emit("not a topic!", Some(&p.id), &p.id)?,
            "log" => eddy_sdk::log::warn(&format!("probe {} says hello", p.id)),
            "timer-bad" => out.set_timer("t", TimerTime::Wall, 100_000_000_000_000_000, &())?,
            "timer-soon" => out.set_timer(
                "soon",
                TimerTime::Wall,
                event.timestamp_ms.saturating_add(300),
                &p.id,
            )?,
            "timers" => {
                for i in 0..p.size {
                    let at = event.timestamp_ms.saturating_add(3_600_000);
                    out.set_timer(&format!("t{i}"), TimerTime::Wall, at, &p.id)?;
                }
            }
            _ => {}
        }
        state.applied.push(p.id);
        Ok(())
    }

    fn on_timer(state: &mut Applied, timer: Timer, _out: &mut Output) -> Result<(), Failure> {
        if timer.payload.get("fail") == Some(&serde_json::Value::Bool(true)) {
            return Err(Failure::Invalid(format!(
                "{}@{} fails on purpose",
                timer.name, timer.at_ms
            )));
        }
        state.ticks.push(format!("{}@{}", timer.name, timer.at_ms));
        Ok(())
    }
}

eddy_sdk::export_aggregator!(SandboxProbe);
