//! Operations: the metrics Eddy exports at `/metrics` in Prometheus text
//! format. Names follow Prometheus conventions (unit suffixes, `_total`
//! counters, low-cardinality labels: pipeline, plugin, class, stage, route).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `eddy_events_consumed_total` | counter | pipeline |
//! | `eddy_events_applied_total` | counter | pipeline |
//! | `eddy_dead_letters_total` | counter | pipeline, stage, class |
//! | `eddy_batch_events` | histogram | pipeline |
//! | `eddy_batch_duration_seconds` | histogram | pipeline |
//! | `eddy_plugin_call_duration_seconds` | histogram | plugin |
//! | `eddy_plugin_failures_total` | counter | plugin, class |
//! | `eddy_plugin_retries_total` | counter | plugin |
//! | `eddy_consumer_lag_records` | gauge | pipeline, topic, partition |
//! | `eddy_rebalances_total` | counter | pipeline, kind (assign/revoke) |
//! | `eddy_timers_fired_total` | counter | pipeline, time (wall/event) |
//! | `eddy_timers_pending` | gauge | pipeline |
//! | `eddy_schedule_runs_total` | counter | pipeline, schedule, outcome (ok/dead_letter/held/skipped) |
//! | `eddy_outbox_records` | gauge | |
//! | `eddy_sse_clients` | gauge | |
//! | `eddy_http_requests_total` | counter | method, route, status |
//! | `eddy_http_request_duration_seconds` | histogram | method, route |
//! | `eddy_store_disk_bytes` | gauge | |
//! | `eddy_store_free_bytes` | gauge | |
//! | `eddy_kafka_producer_throttle_time_ms` | gauge | broker |
//!
//! The seeds' operational signals map to: `consumer_lag` →
//! `eddy_consumer_lag_records`; `storage_utilization` →
//! `eddy_store_disk_bytes`; `rebalance_rate` →
//! `rate(eddy_rebalances_total[5m])`; `producer_throttle_time_ms` →
//! `eddy_kafka_producer_throttle_time_ms` (from librdkafka's statistics).
//!
//! The stages record through the functions here; clippy (`clippy.toml`)
//! refuses the `metrics` macros anywhere else.
#![allow(
    clippy::disallowed_macros,
    reason = "the one module that records metrics"
)]

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns its handle.
///
/// # Errors
/// When another recorder is installed already.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .set_buckets_for_metric(
            Matcher::Full("eddy_batch_events".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0],
        )?
        .install_recorder()?;
    describe();
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "eddy_events_consumed_total",
        "Events read from the source by a pipeline."
    );
    describe_counter!(
        "eddy_events_applied_total",
        "Events committed to state by a pipeline (not dead-lettered)."
    );
    describe_counter!(
        "eddy_dead_letters_total",
        "Events dead-lettered, by stage and error class."
    );
    describe_histogram!("eddy_batch_events", "Events per committed micro-batch.");
    describe_histogram!(
        "eddy_batch_duration_seconds",
        Unit::Seconds,
        "Time to process and commit a micro-batch."
    );
    describe_histogram!(
        "eddy_plugin_call_duration_seconds",
        Unit::Seconds,
        "Duration of one plugin call."
    );
    describe_counter!(
        "eddy_plugin_failures_total",
        "Plugin calls or events that failed, by class."
    );
    describe_counter!(
        "eddy_plugin_retries_total",
        "Retries of retryable plugin failures."
    );
    describe_gauge!(
        "eddy_consumer_lag_records",
        "Records in a partition not yet committed by the pipeline."
    );
    describe_counter!(
        "eddy_rebalances_total",
        "Consumer group assignments and revocations."
    );
    describe_counter!(
        "eddy_restore_records_total",
        "State changelog records a host read to restore partitions it took over."
    );
    describe_histogram!(
        "eddy_restore_duration_seconds",
        Unit::Seconds,
        "Time from a partition's assignment to its restore's end."
    );
    describe_gauge!(
        "eddy_pipeline_paused",
        "1 while an operator has the pipeline paused (POST /v1/pipelines/{p}/pause), else 0."
    );
    describe_gauge!(
        "eddy_partitions",
        "Input partitions of a pipeline this host owns (state=owned) or is restoring (state=restoring)."
    );
    describe_counter!(
        "eddy_timers_fired_total",
        "Per-key timers fired (appended to the pipeline's timer topic), by clock."
    );
    describe_gauge!("eddy_timers_pending", "Per-key timers waiting to fire.");
    describe_counter!(
        "eddy_schedule_runs_total",
        "Runs of schedules by outcome (ok, dead_letter, held, skipped)."
    );
    describe_gauge!(
        "eddy_outbox_records",
        "Records waiting in the outbox for the Kafka producer."
    );
    describe_gauge!("eddy_sse_clients", "Open SSE connections.");
    describe_counter!(
        "eddy_http_requests_total",
        "HTTP requests by route and status."
    );
    describe_histogram!(
        "eddy_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration."
    );
    describe_gauge!(
        "eddy_store_disk_bytes",
        Unit::Bytes,
        "Disk space used by the state store."
    );
    describe_gauge!(
        "eddy_store_free_bytes",
        Unit::Bytes,
        "Free space on the store's file system (input stops under [store] min_free_mb)."
    );
    describe_gauge!(
        "eddy_kafka_producer_throttle_time_ms",
        "Broker throttle time of the producer (librdkafka statistics, average)."
    );
}

/// Records one plugin call.
pub fn plugin_call(plugin: &str, took: Duration, failure: Option<&'static str>) {
    plugin_calls(plugin).record(took.as_secs_f64());
    if let Some(class) = failure {
        plugin_failure(plugin, class);
    }
}

/// The call-duration histogram of a plugin, for a caller that records many
/// calls (a lookup in the registry per call costs more than the record).
pub fn plugin_calls(plugin: &str) -> metrics::Histogram {
    metrics::histogram!("eddy_plugin_call_duration_seconds", "plugin" => plugin.to_owned())
}

/// Records a retry of a plugin call that failed retryably.
pub fn plugin_retry(plugin: &str) {
    metrics::counter!("eddy_plugin_retries_total", "plugin" => plugin.to_owned()).increment(1);
}

/// Records a failed plugin call or event.
pub fn plugin_failure(plugin: &str, class: &'static str) {
    metrics::counter!("eddy_plugin_failures_total", "plugin" => plugin.to_owned(), "class" => class)
        .increment(1);
}

/// Records one committed micro-batch.
pub fn batch(pipeline: &str, consumed: usize, applied: usize, took: Duration) {
    let p = pipeline.to_owned();
    metrics::counter!("eddy_events_consumed_total", "pipeline" => p.clone())
        .increment(consumed as u64);
    metrics::counter!("eddy_events_applied_total", "pipeline" => p.clone())
        .increment(applied as u64);
    metrics::histogram!("eddy_batch_events", "pipeline" => p.clone()).record(consumed as f64);
    metrics::histogram!("eddy_batch_duration_seconds", "pipeline" => p).record(took.as_secs_f64());
}

/// Records a dead letter.
pub fn dead_letter(pipeline: &str, stage: &'static str, class: &str) {
    metrics::counter!(
        "eddy_dead_letters_total",
        "pipeline" => pipeline.to_owned(), "stage" => stage, "class" => class.to_owned()
    )
    .increment(1);
}

/// Records a rebalance of a pipeline's group (`assign` or `revoke`).
pub fn rebalance(pipeline: &str, kind: &'static str) {
    metrics::counter!("eddy_rebalances_total", "pipeline" => pipeline.to_owned(), "kind" => kind)
        .increment(1);
}

/// Records a partition restore's end: records read, how long it took.
pub fn restore(pipeline: &str, records: u64, took: Duration) {
    metrics::counter!("eddy_restore_records_total", "pipeline" => pipeline.to_owned())
        .increment(records);
    metrics::histogram!("eddy_restore_duration_seconds", "pipeline" => pipeline.to_owned())
        .record(took.as_secs_f64());
}

/// Sets whether a pipeline is paused.
pub fn paused(pipeline: &str, paused: bool) {
    metrics::gauge!("eddy_pipeline_paused", "pipeline" => pipeline.to_owned()).set(if paused {
        1.0
    } else {
        0.0
    });
}

/// Sets how many partitions of a pipeline this host owns and restores.
pub fn partitions(pipeline: &str, owned: usize, restoring: usize) {
    metrics::gauge!("eddy_partitions", "pipeline" => pipeline.to_owned(), "state" => "owned")
        .set(owned as f64);
    metrics::gauge!("eddy_partitions", "pipeline" => pipeline.to_owned(), "state" => "restoring")
        .set(restoring as f64);
}

/// Records timers fired on a clock (`wall` or `event`).
pub fn timers_fired(pipeline: &str, time: &'static str, n: usize) {
    metrics::counter!("eddy_timers_fired_total", "pipeline" => pipeline.to_owned(), "time" => time)
        .increment(n as u64);
}

/// Records a schedule run's end (or a skip).
pub fn schedule_run(pipeline: &str, schedule: &str, outcome: &'static str) {
    metrics::counter!("eddy_schedule_runs_total", "pipeline" => pipeline.to_owned(), "schedule" => schedule.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Sets how many timers a pipeline has pending.
pub fn timers_pending(pipeline: &str, n: u64) {
    metrics::gauge!("eddy_timers_pending", "pipeline" => pipeline.to_owned()).set(n as f64);
}

/// Records an SSE connection opened (`+1`) or closed (`-1`).
pub fn sse_clients(change: f64) {
    metrics::gauge!("eddy_sse_clients").increment(change);
}

/// Records one HTTP request by method, matched route and status.
pub fn http_request(method: String, route: String, status: u16, took: Duration) {
    metrics::counter!(
        "eddy_http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("eddy_http_request_duration_seconds", "method" => method, "route" => route)
        .record(took.as_secs_f64());
}

/// Sets a partition's consumer lag.
pub fn consumer_lag(pipeline: &str, topic: &str, partition: u32, lag: u64) {
    metrics::gauge!(
        "eddy_consumer_lag_records",
        "pipeline" => pipeline.to_owned(), "topic" => topic.to_owned(), "partition" => partition.to_string()
    )
    .set(lag as f64);
}

/// Sets the records waiting in the Kafka outbox.
pub fn outbox_records(n: usize) {
    metrics::gauge!("eddy_outbox_records").set(n as f64);
}

/// Sets the store's disk size.
pub fn store_disk_bytes(n: u64) {
    metrics::gauge!("eddy_store_disk_bytes").set(n as f64);
}

/// Sets the free space on the store's file system.
pub fn store_free_bytes(n: u64) {
    metrics::gauge!("eddy_store_free_bytes").set(n as f64);
}

/// Sets a broker's average produce throttle time.
pub fn producer_throttle(broker: &str, ms: f64) {
    metrics::gauge!("eddy_kafka_producer_throttle_time_ms", "broker" => broker.to_owned()).set(ms);
}
