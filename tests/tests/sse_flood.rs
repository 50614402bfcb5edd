//! Thousands of slow and stalled SSE clients: the host's memory stays
//! bounded, a fast client still gets every change in order, and a slow
//! client that speeds up again ends with every key's current state.
//!
//! Two phases stream the same workload at the same pace: first with one
//! fast client only, then with `EDDY_SSE_STALLED` clients (2,000) that
//! connect and never read a byte (their receive buffers kept small) and
//! `EDDY_SSE_SLOW` clients (200) reading an event every 50 ms. The fast
//! client's produce-to-SSE latency in each phase is printed side by side
//! (a figure, not a check: the machines are noisy), measured once the
//! stalled clients' socket buffers are full; what is checked is
//! that nothing is lost or reordered and that memory is bounded.
//! `EDDY_SSE_EVENTS` sets the events per phase (30,000).
#![allow(
    clippy::indexing_slicing,
    reason = "indexing serde_json::Value yields Null, it never panics"
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use eddy_tests::chaos::{Chaos, env_u64};
use eddy_tests::{Host, async_process_config, execution, position, rss_of, samples};
use rand::Rng;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

/// Events per key over a run (an AsyncProcess state keeps every
/// execution: more per key would make each change larger as the run goes
/// on).
const EVENTS_PER_KEY: u64 = 13;
/// Events per produce request, and requests per second: 4,000 events/s.
const BATCH: u64 = 100;
const BATCH_EVERY: Duration = Duration::from_millis(25);
/// Events sent before phase 2 is measured, while the stalled clients'
/// buffers fill.
const FILL: u64 = 4_000;
const STREAM: &str = "/v1/pipelines/async-process/events";

/// What the fast client saw.
#[derive(Default)]
struct Seen {
    /// Per key, each change's `lastUpdate` (the time of the latest event
    /// folded: the workload's times grow) and when it arrived.
    arrived: HashMap<String, Vec<(i64, Instant)>>,
    /// Every key's last event (its data as sent).
    states: HashMap<String, String>,
    /// Changes that did not follow the one before (must stay empty).
    gaps: Vec<String>,
    /// The position of the last event.
    at: Vec<u64>,
    /// The largest event's data, in bytes.
    largest: usize,
}

/// Whether `next` is `prev` moved on by one change of one partition.
fn follows(prev: &[u64], next: &[u64]) -> bool {
    prev.len() == next.len()
        && prev
            .iter()
            .zip(next)
            .map(|(a, b)| b.checked_sub(*a))
            .try_fold(0u64, |moved, d| d.filter(|d| *d <= 1).map(|d| moved + d))
            == Some(1)
}

/// The key and `lastUpdate` of an all-keys event's data, read without
/// parsing the state: `{"key":"k000042","state":{..."lastUpdate":123,...}}`.
fn key_and_time(data: &str) -> Option<(&str, i64)> {
    let key = data.strip_prefix("{\"key\":\"")?.split('"').next()?;
    let at = data.find("\"lastUpdate\":")? + "\"lastUpdate\":".len();
    let digits: String = data
        .get(at..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((key, digits.parse().ok()?))
}

/// Reads a stream as fast as it comes, on a thread and runtime of its own
/// (the slow clients' work in this process must not delay it), checking
/// every change follows the one before.
fn fast_reader(
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let broke = |e: anyhow::Error| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .await
                        .gaps
                        .push(format!("the stream broke: {e:#}"))
                }
            };
            let mut sse = match RawSse::open(port).await {
                Ok(s) => s,
                Err(e) => return broke(e).await,
            };
            while !stop.load(Ordering::SeqCst) {
                let (id, data) =
                    match tokio::time::timeout(Duration::from_millis(500), sse.next()).await {
                        Err(_) => continue,
                        Ok(Ok(e)) => e,
                        Ok(Err(e)) => return broke(e).await,
                    };
                let Ok(at) = position(&id) else { continue };
                let now = Instant::now();
                let mut s = seen.lock().await;
                if !s.at.is_empty() && !follows(&s.at, &at) {
                    let gap = format!("event {id} after {:?}", s.at);
                    s.gaps.push(gap);
                }
                s.at = at;
                s.largest = s.largest.max(data.len());
                if let Some((key, time)) = key_and_time(&data) {
                    let key = key.to_owned();
                    s.arrived.entry(key.clone()).or_default().push((time, now));
                    s.states.insert(key, data);
                }
            }
        });
    })
}

/// An SSE client on a plain socket with a small receive buffer, reading
/// only as fast as it takes events: HTTP/1.0, so the body is the stream
/// itself (no chunked coding), ended by the host closing it.
struct RawSse {
    reader: BufReader<TcpStream>,
}

impl RawSse {
    async fn open(port: u16) -> Result<RawSse> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(16 * 1024)?;
        let mut conn = socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        conn.write_all(
            format!("GET {STREAM} HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut reader = BufReader::with_capacity(8 * 1024, conn);
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        ensure!(line.contains(" 200 "), "SSE answered {line:?}");
        loop {
            line.clear();
            ensure!(
                reader.read_line(&mut line).await? > 0,
                "SSE ended in its headers"
            );
            if line.trim().is_empty() {
                return Ok(RawSse { reader });
            }
        }
    }

    /// The next event with data: its id and data (comments skipped).
    async fn next(&mut self) -> Result<(String, String)> {
        let (mut id, mut data, mut line) = (String::new(), String::new(), String::new());
        loop {
            line.clear();
            ensure!(
                self.reader.read_line(&mut line).await? > 0,
                "SSE stream ended"
            );
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() {
                    return Ok((id, data));
                }
            } else if let Some(v) = l.strip_prefix("id:") {
                v.trim_start().clone_into(&mut id);
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }
}

/// A digest of a state, the same for equal JSON values.
fn digest(state: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state.to_string().hash(&mut h);
    h.finish()
}

/// A slow client: an event every 50 ms until `until` names the final
/// position, then as fast as it can until it is there; returns a digest of
/// every key's last state (a whole copy per client would make the test
/// hold the states a thousand times over).
async fn slow_reader(
    mut sse: RawSse,
    until: Arc<std::sync::Mutex<Option<Vec<u64>>>>,
) -> Result<HashMap<String, u64>> {
    let mut last = HashMap::new();
    loop {
        let (id, data) = sse.next().await?;
        let at = position(&id)?;
        let change: Value = serde_json::from_str(&data)?;
        let key = change["key"]
            .as_str()
            .with_context(|| format!("an all-keys event without a key: {data:.80}"))?;
        last.insert(key.to_owned(), digest(&change["state"]));
        let target = until
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        match target {
            Some(t) if at.iter().zip(&t).all(|(a, b)| a >= b) => return Ok(last),
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A client that asks for the stream and never reads: a 4 KiB receive
/// buffer, so the host meets back-pressure early.
async fn stalled_client(port: u16) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut conn = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    conn.write_all(
        format!(
            "GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    Ok(conn)
}

/// One acknowledged produce request: when, and its last event's key and
/// time.
struct Ack {
    at: Instant,
    key: String,
    time: i64,
}

/// Produces `events` events (numbered from `first`) over `keys` keys at the
/// workload's pace;
/// `expected` keeps each key's latest event time.
async fn produce(
    host: &Host,
    (first, events, keys): (u64, u64, u64),
    expected: &mut HashMap<String, i64>,
) -> Result<Vec<Ack>> {
    let mut rng = rand::rng();
    let mut acks = Vec::new();
    let mut tick = tokio::time::interval(BATCH_EVERY);
    let mut n = first;
    while n < first + events {
        tick.tick().await;
        let last = (n + BATCH).min(first + events);
        let mut records = Vec::new();
        let mut newest = (String::new(), 0);
        for i in n..last {
            let key = format!("k{:06}", rng.random_range(0..keys));
            let time = 1_000_000 + i64::try_from(i)?;
            records.push(json!({ "value": execution(&format!("e{i:08}"), &key, time, "STARTED") }));
            expected.insert(key.clone(), time);
            newest = (key, time);
        }
        let (status, body) = host
            .post(
                "/v1/topics/async-process-execution/records",
                json!({ "records": records }).to_string(),
            )
            .await?;
        ensure!(status == 200, "produce answered {status}: {body}");
        n = last;
        acks.push(Ack {
            at: Instant::now(),
            key: newest.0,
            time: newest.1,
        });
    }
    Ok(acks)
}

/// The fast client's produce-to-SSE latency of each request (until the
/// change holding its last event arrived), in ms: (p50, p99, max).
async fn latencies(acks: &[Ack], seen: &Mutex<Seen>) -> Result<(f64, f64, f64)> {
    let s = seen.lock().await;
    let mut ms: Vec<f64> = acks
        .iter()
        .map(|a| {
            let arrived = s
                .arrived
                .get(&a.key)
                .and_then(|v| v.iter().find(|(t, _)| *t >= a.time))
                .with_context(|| format!("event time {} of key {} never arrived", a.time, a.key))?;
            Ok(arrived.1.saturating_duration_since(a.at).as_secs_f64() * 1000.0)
        })
        .collect::<Result<_>>()?;
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    Ok((at(0.5), at(0.99), at(1.0)))
}

/// Waits until the fast client has every key's latest event.
async fn fast_has(seen: &Mutex<Seen>, expected: &HashMap<String, i64>, host: &Host) -> Result<()> {
    let t = Instant::now();
    loop {
        {
            let s = seen.lock().await;
            if let Some(g) = s.gaps.first() {
                bail!("the fast client: {g}\n{}", host.log());
            }
            let missing = expected
                .iter()
                .filter(|(k, time)| {
                    s.arrived
                        .get(*k)
                        .and_then(|v| v.last())
                        .is_none_or(|(t, _)| t < time)
                })
                .count();
            if missing == 0 {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the fast client lacks the latest event of {missing} keys\n{}",
                    host.log()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `eddy_sse_clients` from `/metrics` (absent until the first client
/// connects).
async fn sse_clients(host: &Host) -> Result<u64> {
    let text = host.metrics().await?;
    Ok(samples(&text, "eddy_sse_clients")?
        .first()
        .map_or(0, |(_, v)| *v as u64))
}

async fn wait_clients(host: &Host, n: u64) -> Result<()> {
    let t = Instant::now();
    loop {
        let now = sse_clients(host).await?;
        if now == n {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("{now} SSE clients open, expected {n}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_and_stalled_sse_clients_cost_bounded_memory_and_leave_a_fast_one_whole()
-> Result<()> {
    let stalled_n = env_u64("EDDY_SSE_STALLED")?.unwrap_or(2_000);
    let slow_n = env_u64("EDDY_SSE_SLOW")?.unwrap_or(200);
    let per_phase = env_u64("EDDY_SSE_EVENTS")?.unwrap_or(30_000);
    let chaos = Chaos::from_env("sse: slow and stalled clients", per_phase * 2 + FILL, 0)?;
    let keys = ((per_phase * 2 + FILL) / EVENTS_PER_KEY).max(1);

    // Every client is a descriptor on both ends.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
    let need = stalled_n + slow_n + 256;
    ensure!(
        limit.current.is_none_or(|n| n >= need),
        "{need} open files are needed and the hard limit is {:?}: raise it (ulimit -Hn)",
        limit.current
    );

    let config = async_process_config()?.replace(
        "[http]\n",
        &format!(
            "[http]\nsse_max_per_address = {}\n",
            stalled_n + slow_n + 10
        ),
    );
    let host = Host::start(&config).await?;
    let port: u16 = host.url.rsplit(':').next().context("port")?.parse()?;

    // Phase 1: the fast client alone.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let fast = fast_reader(port, seen.clone(), stop.clone());
    wait_clients(&host, 1).await?;
    let mut expected = HashMap::new();
    let acks1 = produce(&host, (0, per_phase, keys), &mut expected).await?;
    fast_has(&seen, &expected, &host).await?;
    let lat1 = latencies(&acks1, &seen).await?;
    let rss1 = host.rss_bytes()?;

    // Phase 2: thousands of stalled and slow clients join.
    let mut stalled = Vec::new();
    for _ in 0..stalled_n {
        stalled.push(stalled_client(port).await?);
    }
    let until = Arc::new(std::sync::Mutex::new(None));
    let mut slow = Vec::new();
    for _ in 0..slow_n {
        let sse = RawSse::open(port).await?;
        slow.push(tokio::spawn(slow_reader(sse, until.clone())));
    }
    wait_clients(&host, 1 + stalled_n + slow_n).await?;
    // Each stalled client is sent what its socket buffers take, then
    // stalls: that first burst (every client sent the same changes) is
    // the cost of serving them at all, so it is not measured.
    let fill = produce(&host, (per_phase, FILL, keys), &mut expected).await?;
    fast_has(&seen, &expected, &host).await?;
    drop(fill);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss2_start = host.rss_bytes()?;
    let peak = Arc::new(AtomicU64::new(rss2_start));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let pid = host.pid().context("the host is not running")?;
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Ok(b) = rss_of(pid) {
                    peak.fetch_max(b, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let acks2 = produce(&host, (per_phase + FILL, per_phase, keys), &mut expected).await?;
    fast_has(&seen, &expected, &host).await?;
    let lat2 = latencies(&acks2, &seen).await?;
    let rss2_peak = peak.load(Ordering::SeqCst);
    let open_now = sse_clients(&host).await?;

    // The slow clients hurry and end with every key's current state.
    let end = seen.lock().await.at.clone();
    *until.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(end);
    // The fast client's last event of each key, parsed once now.
    let reference: HashMap<String, Value> = seen
        .lock()
        .await
        .states
        .iter()
        .map(|(k, data)| {
            let change: Value = serde_json::from_str(data)?;
            Ok((k.clone(), change["state"].clone()))
        })
        .collect::<Result<_>>()?;
    for (i, s) in slow.into_iter().enumerate() {
        let states = s.await?.with_context(|| format!("slow client {i}"))?;
        ensure!(
            states.len() <= reference.len(),
            "slow client {i} saw {} keys, the fast one {}",
            states.len(),
            reference.len()
        );
        // It joined late: every key it saw is as the fast client ended.
        for (k, st) in &states {
            ensure!(
                reference.get(k).map(digest) == Some(*st),
                "slow client {i}: key {k} ended in another state than the fast client saw: {:?}",
                reference.get(k)
            );
        }
    }
    // The fast client's view is the store's.
    for key in reference.keys().take(200) {
        let (status, state) = host
            .get(&format!("/v1/pipelines/async-process/state/{key}"))
            .await?;
        ensure!(status == 200, "state of {key}: {status}");
        ensure!(
            reference.get(key) == Some(&state),
            "key {key}: the store has {state}, the fast client saw {:?}",
            reference.get(key)
        );
    }
    drop(stalled);
    wait_clients(&host, 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::SeqCst);
    sampler.await?;
    // The peak over the whole run: the slow clients' catch-up included.
    let rss_peak = peak.load(Ordering::SeqCst);
    let rss_after = host.rss_bytes()?;
    stop.store(true, Ordering::SeqCst);
    fast.join()
        .map_err(|_| anyhow::anyhow!("the fast client's thread panicked"))?;

    let s = seen.lock().await;
    ensure!(
        s.gaps.is_empty(),
        "the fast client missed changes: {:?}",
        &s.gaps[..s.gaps.len().min(10)]
    );
    // A client that does not read holds its channel of 16 changes (shared
    // with every other client) and what its connection queued: up to 16
    // events, its own copy. 32 of the largest events per client, and room
    // for the history and caches to grow with the run, is the bound; an
    // unbounded queue would hold the whole of phase 2 per client.
    let clients = stalled_n + slow_n;
    let grown = rss_peak.saturating_sub(rss1);
    let bound = clients * 32 * s.largest as u64 + (192 << 20);
    chaos.report(json!({
        "stalled_clients": stalled_n,
        "slow_clients": slow_n,
        "open_during_phase_2": open_now,
        "fast_p50_p99_max_ms_alone": [lat1.0, lat1.1, lat1.2],
        "fast_p50_p99_max_ms_with_clients": [lat2.0, lat2.1, lat2.2],
        "p99_ratio": lat2.1 / lat1.1.max(0.001),
        "rss_mib_alone": mib(rss1),
        "rss_mib_clients_connected": mib(rss2_start),
        "rss_mib_peak_with_clients": mib(rss2_peak),
        "rss_mib_peak_catching_up": mib(rss_peak),
        "rss_mib_after_release": mib(rss_after),
        "per_client_kib": grown as f64 / 1024.0 / clients as f64,
        "largest_event_bytes": s.largest,
    }))?;
    ensure!(
        grown < bound,
        "the host grew by {:.0} MiB with {clients} slow or stalled clients (bound {:.0} MiB)",
        mib(grown),
        mib(bound)
    );
    Ok(())
}
