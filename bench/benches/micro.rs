//! Criterion micro-benchmarks of the hot path's three steps, one at a time:
//! decoding an AsyncProcess execution (JSON, Avro, Avro resolved to a newer
//! reader), one call of the AsyncProcess aggregator at batch sizes 1, 100
//! and 1,000 (WebAssembly component next to the same fold compiled
//! natively), and one store commit of a micro-batch of state changes.
//!
//! `cargo bench -p eddy-bench --bench micro` (after `scripts/build.sh`, which
//! builds the aggregator component into `target/plugins/`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use eddy::config::{Durability, PluginKind};
use eddy::decode::Decoder;
use eddy::decode::avro::{AvroDecoder, encode};
use eddy::execute::{Instance, KeyInput, Runtime};
use eddy::schema::SchemaSource;
use eddy::store::{Change, Commit, State, Store};
use eddy_bench::workload;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Fixed(String);

impl SchemaSource for Fixed {
    fn schema_text(
        &self,
        _id: u32,
    ) -> Result<Option<eddy::schema::SchemaText>, eddy::schema::Unreachable> {
        Ok(Some(eddy::schema::SchemaText::avro(self.0.clone())))
    }

    fn subject_version(
        &self,
        _: &str,
        _: u32,
    ) -> Result<Option<eddy::schema::SchemaText>, eddy::schema::Unreachable> {
        Ok(None)
    }
}

fn decode(c: &mut Criterion) {
    let schemas = root().join("examples/async-process/schemas");
    let v1 = std::fs::read_to_string(schemas.join("execution-v1.avsc")).expect("execution-v1.avsc");
    let v2 = std::fs::read_to_string(schemas.join("execution-v2.avsc")).expect("execution-v2.avsc");
    let writer = apache_avro::Schema::parse_str(&v1).expect("v1 parses");
    let reader = apache_avro::Schema::parse_str(&v2).expect("v2 parses");
    let value = workload::execution(42, 1_000);
    let json = value.to_string().into_bytes();
    let avro = encode(&writer, 1, &value).expect("the execution encodes");
    let plain = Decoder::Avro(Arc::new(AvroDecoder::new(
        Arc::new(Fixed(v1.clone())),
        None,
    )));
    let resolved = Decoder::Avro(Arc::new(AvroDecoder::new(
        Arc::new(Fixed(v1)),
        Some(reader),
    )));
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json", |b| {
        b.iter(|| Decoder::Json.decode(black_box(&json)))
    });
    g.bench_function("avro", |b| b.iter(|| plain.decode(black_box(&avro))));
    g.bench_function("avro_resolved_v1_to_v2", |b| {
        b.iter(|| resolved.decode(black_box(&avro)));
    });
    g.finish();
}

fn plugin_call(c: &mut Criterion) {
    let path = std::env::var_os("EDDY_BENCH_COMPONENT").map_or_else(
        || root().join("target/plugins/async-process-aggregator.wasm"),
        PathBuf::from,
    );
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build.sh first)", path.display()));
    let runtime = Runtime::new().expect("wasmtime engine");
    let config = workload::unlimited_plugin("async-process-aggregator", &path);
    let plugin = runtime
        .load(
            &config,
            &path.display().to_string(),
            &bytes,
            Some(PluginKind::Aggregator),
        )
        .expect("the aggregator component loads");
    let mut instance = Instance::new(Arc::new(plugin));
    let mut g = c.benchmark_group("plugin_call");
    for batch in [1usize, 100, 1_000] {
        let batch_values = workload::one_key_batch(batch);
        let events = batch_values.events();
        let native = batch_values.native();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("wasm/{batch}"), |b| {
            b.iter(|| {
                let input = KeyInput {
                    key: workload::ONE_KEY,
                    state: None,
                    version: 0,
                    events: black_box(&events),
                };
                instance.fold(std::slice::from_ref(&input)).expect("fold")
            });
        });
        g.bench_function(format!("native/{batch}"), |b| {
            b.iter_batched(
                || native.clone(),
                |evs| {
                    eddy_sdk::runtime::apply_json::<async_process_aggregator::AsyncProcessAggregator>(
                        workload::ONE_KEY,
                        None,
                        evs,
                    )
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn store_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), Durability::Process).expect("store opens");
    let state = workload::execution(1, 1).to_string();
    let mut g = c.benchmark_group("store_commit");
    for batch in [1u64, 100, 1_000] {
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("states/{batch}"), |b| {
            b.iter(|| {
                let mut commit = Commit {
                    pipeline: "bench".into(),
                    plugin_version: "v1".into(),
                    ..Commit::default()
                };
                for i in 0..batch {
                    seq += 1;
                    let change = Change {
                        partition: 0,
                        seq,
                        stamp_us: seq,
                        key: workload::key(seq, 10_000),
                        state: State::json(state.clone()),
                        version: 0,
                    };
                    commit.states.push((change, seq.checked_sub(10_000)));
                    commit.last_seqs = vec![(0, seq)];
                    commit.offsets = vec![("async-process-execution".into(), 0, seq + i)];
                }
                store.commit(&commit).expect("commit");
            });
        });
    }
    g.finish();
}

criterion_group!(benches, decode, plugin_call, store_commit);
criterion_main!(benches);
