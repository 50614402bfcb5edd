// Shared by the `versioned-*` test aggregators: each event is recorded in
// the key's state with the tag (`tag(id)`, defined by each crate) of the
// version that applied it.

use eddy_sdk::{Aggregator, Event, Failure, Output};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
pub struct Input {
    pub id: String,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Applied {
    /// (event id, version, partition, offset), in the order applied.
    pub events: Vec<(String, String, i32, i64)>,
}

pub struct Versioned;

impl Aggregator for Versioned {
    type Event = Input;
    type State = Applied;

    fn init(_key: &str) -> Applied {
        Applied::default()
    }

    fn apply(state: &mut Applied, event: Event<Input>, _out: &mut Output) -> Result<(), Failure> {
        let tag = tag(&event.value.id);
        state.events.push((event.value.id, tag, event.partition, event.offset));
        Ok(())
    }
}

eddy_sdk::export_aggregator!(Versioned);
