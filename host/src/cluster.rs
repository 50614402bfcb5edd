//! The group of hosts (`[cluster]`): who is in it, where each answers, and
//! which partitions of each pipeline it owns or is restoring.
//!
//! Every host writes its entry to the group's compacted hosts topic
//! (`{group_id}-hosts`, one partition, keyed by `host_id`) when what it
//! owns changes and every [`HEARTBEAT`] otherwise, and reads everyone's
//! entries from the topic's start into a [`Directory`]. The HTTP API asks
//! the directory which host owns a key's partition and forwards the query
//! there. Ownership itself is the consumer group's: the directory only
//! says where to ask, and an owner that lost a partition since answers 421.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{ClusterConfig, KafkaConfig};
use crate::sink::ProduceRecord;
use crate::sink::kafka::KafkaSink;
use crate::source::restore::Ownership;
use crate::source::rewind::Rewind;
use crate::source::{Limit, SourceError};

/// How often a host writes its entry when nothing changed.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long an entry counts after it was written: a host not heard of for
/// this long is taken for gone.
pub const ALIVE: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    u64::try_from(crate::now_ms()).unwrap_or(0)
}

/// The hosts topic of a consumer group.
pub fn hosts_topic(group_id: &str) -> String {
    format!("{group_id}-hosts")
}

/// What a host owns of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Partitions restored and served by the host.
    pub owned: Vec<u32>,
    /// Partitions assigned to the host and being restored.
    pub restoring: Vec<u32>,
    /// Events of each owned partition not processed yet, when the entry
    /// was written (the input's end offset less the host's position).
    #[serde(default)]
    pub lag: BTreeMap<u32, u64>,
}

/// Per pipeline, the lag of each partition this host owns.
pub type LagOf = dyn Fn() -> BTreeMap<String, BTreeMap<u32, u64>> + Send + Sync;

/// One host's entry in the hosts topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Its `host_id`.
    pub host: String,
    /// Changes at each start of the process, to tell two hosts with one
    /// `host_id` apart.
    pub instance: String,
    /// Where its HTTP API answers, if it said.
    pub advertise: Option<String>,
    /// When this process started, ms since the Unix epoch.
    pub started_ms: u64,
    /// When the entry was written.
    pub at_ms: u64,
    /// `false` once the host left the group (a graceful stop).
    pub up: bool,
    /// Per pipeline, what it owns.
    pub pipelines: BTreeMap<String, Share>,
}

impl HostEntry {
    /// Whether the entry was written less than [`ALIVE`] ago and its host
    /// has not left.
    pub fn alive(&self, now_ms: u64) -> bool {
        self.up && now_ms.saturating_sub(self.at_ms) < ALIVE.as_millis() as u64
    }
}

/// The hosts this host knows of, itself included, as last heard.
pub struct Directory {
    me: HostEntry,
    hosts: Mutex<BTreeMap<String, HostEntry>>,
    /// Set when another process uses this host's `host_id`: why, and
    /// that process's last entry.
    conflict: Mutex<Option<(String, HostEntry)>>,
    /// Set when this process found it must give its `host_id` up to an
    /// earlier one: it stops announcing and does not write its leave.
    yielded: AtomicBool,
}

/// Who answers for a partition, as far as the directory knows.
#[derive(Debug, Clone)]
pub enum Owner {
    /// Another live host owns it (or restores it).
    Host {
        /// The host's entry.
        entry: HostEntry,
        /// Whether it is still restoring the partition.
        restoring: bool,
    },
    /// No live host says it owns the partition (a rebalance in progress,
    /// or its owner died and the group has not noticed yet).
    Nobody {
        /// The last host heard owning it, if any.
        last: Option<String>,
    },
}

impl Directory {
    fn new(me: HostEntry) -> Self {
        Directory {
            me,
            hosts: Mutex::default(),
            conflict: Mutex::default(),
            yielded: AtomicBool::new(false),
        }
    }

    /// This host's `host_id`.
    pub fn host_id(&self) -> &str {
        &self.me.host
    }

    /// Every host heard of, by `host_id`.
    pub fn hosts(&self) -> Vec<HostEntry> {
        crate::lock(&self.hosts).values().cloned().collect()
    }

    /// Why this host should not be serving: another live process with its
    /// `host_id` (until that process leaves or stops writing).
    pub fn conflict(&self) -> Option<String> {
        let conflict = crate::lock(&self.conflict);
        let (why, other) = conflict.as_ref()?;
        other.alive(now_ms()).then(|| why.clone())
    }

    /// The other host that owns (or restores) `partition` of `pipeline`.
    pub fn owner(&self, pipeline: &str, partition: u32) -> Owner {
        let now = now_ms();
        let hosts = crate::lock(&self.hosts);
        let mut best: Option<(&HostEntry, bool)> = None;
        let mut last: Option<&HostEntry> = None;
        for e in hosts.values().filter(|e| e.host != self.me.host) {
            let Some(share) = e.pipelines.get(pipeline) else {
                continue;
            };
            let restoring = share.restoring.contains(&partition);
            if !restoring && !share.owned.contains(&partition) {
                continue;
            }
            if last.is_none_or(|l| l.at_ms < e.at_ms) {
                last = Some(e);
            }
            if e.alive(now) && best.is_none_or(|(b, _)| b.at_ms < e.at_ms) {
                best = Some((e, restoring));
            }
        }
        match best {
            Some((entry, restoring)) => Owner::Host {
                entry: entry.clone(),
                restoring,
            },
            None => Owner::Nobody {
                last: last.map(|e| e.host.clone()),
            },
        }
    }

    /// Takes in an entry read from the hosts topic; `Some` with the reason
    /// when it shows another live process using this host's `host_id` that
    /// started before this one (this one must stop).
    fn observe(&self, e: HostEntry) -> Option<String> {
        let mut yield_to = None;
        if e.host == self.me.host && e.instance != self.me.instance {
            let mut conflict = crate::lock(&self.conflict);
            if let Some((_, other)) = conflict.as_mut()
                && other.instance == e.instance
            {
                if other.at_ms <= e.at_ms {
                    *other = e;
                }
                return None;
            }
            // Entries written before this process started are its own
            // predecessor's (sent late from the outbox after a crash).
            if e.up && e.at_ms > self.me.started_ms {
                let why = format!(
                    "cluster.host_id {:?} is also used by another host (started at {} ms{}): each host of a group needs its own host_id",
                    e.host,
                    e.started_ms,
                    e.advertise
                        .as_deref()
                        .map(|a| format!(", advertised at {a}"))
                        .unwrap_or_default()
                );
                tracing::error!(host = %e.host, other_instance = %e.instance, "{why}");
                if e.started_ms <= self.me.started_ms {
                    self.yielded.store(true, Ordering::SeqCst);
                    yield_to = Some(why.clone());
                }
                *conflict = Some((why, e));
            }
            return yield_to;
        }
        let mut hosts = crate::lock(&self.hosts);
        if hosts.get(&e.host).is_none_or(|old| old.at_ms <= e.at_ms) {
            hosts.insert(e.host.clone(), e);
        }
        None
    }
}

/// This host's membership: the threads that announce it and follow the
/// others.
pub struct Membership {
    directory: Arc<Directory>,
    stop: Arc<AtomicBool>,
    announcer: Option<JoinHandle<()>>,
    follower: Option<JoinHandle<()>>,
    announce: Arc<Announce>,
}

struct Announce {
    sink: Arc<KafkaSink>,
    topic: String,
    me: HostEntry,
    ownership: Arc<HashMap<String, Arc<Ownership>>>,
    lag: Box<LagOf>,
}

impl Announce {
    fn shares(&self) -> BTreeMap<String, Share> {
        self.ownership
            .iter()
            .map(|(name, o)| {
                (
                    name.clone(),
                    Share {
                        owned: o.owned(),
                        restoring: o.restoring(),
                        lag: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }

    fn write(&self, mut pipelines: BTreeMap<String, Share>, up: bool) -> Result<(), String> {
        if up {
            for (name, lag) in (self.lag)() {
                if let Some(share) = pipelines.get_mut(&name) {
                    share.lag = lag
                        .into_iter()
                        .filter(|(p, _)| share.owned.contains(p))
                        .collect();
                }
            }
        }
        let entry = HostEntry {
            at_ms: now_ms(),
            up,
            pipelines,
            ..self.me.clone()
        };
        let value = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        self.sink
            .write_confirmed(
                &self.topic,
                ProduceRecord {
                    timestamp_ms: None,
                    partition: Some(0),
                    key: Some(self.me.host.as_bytes().to_vec()),
                    headers: Vec::new(),
                    value,
                },
                ALIVE,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Membership {
    /// Joins the group's directory: starts announcing this host and
    /// following the others. `advertise` is where this host's HTTP API
    /// answers; `lag` tells the lag of its partitions (asked at each
    /// entry it writes); `on_conflict` is called when another host with
    /// this `host_id` was there first.
    ///
    /// # Errors
    /// When the hosts topic cannot be read.
    pub fn join(
        cluster: &ClusterConfig,
        kafka: &KafkaConfig,
        sink: Arc<KafkaSink>,
        ownership: Arc<HashMap<String, Arc<Ownership>>>,
        advertise: Option<String>,
        lag: Box<LagOf>,
        on_conflict: impl Fn(String) + Send + 'static,
    ) -> Result<Self, SourceError> {
        let topic = hosts_topic(&kafka.group_id);
        let now = now_ms();
        let me = HostEntry {
            host: cluster.host_id.clone(),
            instance: uuid::Uuid::new_v4().to_string(),
            advertise,
            started_ms: now,
            at_ms: now,
            up: true,
            pipelines: BTreeMap::new(),
        };
        let directory = Arc::new(Directory::new(me.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut reader = crate::source::kafka::KafkaRewind::open_following(
            kafka,
            &topic,
            Duration::from_millis(500),
        )?;
        let (low, _) = reader.watermarks(0)?;
        reader.assign(&[(0, low)])?;
        let follower = {
            let directory = directory.clone();
            let stop = stop.clone();
            let name = topic.clone();
            std::thread::Builder::new()
                .name("cluster-follow".into())
                .spawn(move || follow(&mut reader, &name, &directory, &stop, &on_conflict))
                .map_err(|e| SourceError::Broker {
                    topic: topic.clone(),
                    error: format!("cannot start the hosts topic reader: {e}"),
                })?
        };
        let announce = Arc::new(Announce {
            sink,
            topic: topic.clone(),
            me,
            ownership,
            lag,
        });
        let announcer = {
            let announce = announce.clone();
            let stop = stop.clone();
            let directory = directory.clone();
            std::thread::Builder::new()
                .name("cluster-announce".into())
                .spawn(move || announce_loop(&announce, &directory, &stop))
                .map_err(|e| SourceError::Broker {
                    topic,
                    error: format!("cannot start the host announcer: {e}"),
                })?
        };
        Ok(Membership {
            directory,
            stop,
            announcer: Some(announcer),
            follower: Some(follower),
            announce,
        })
    }

    /// The directory this membership keeps.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.clone()
    }

    /// Leaves the group's directory: after the pipelines let go of their
    /// partitions, writes an entry saying this host left (sent by the
    /// outbox's last drain).
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in [self.announcer.take(), self.follower.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
        if self.directory.yielded.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.announce.write(BTreeMap::new(), false) {
            tracing::warn!(error = %e, "cannot write this host's leave to the hosts topic");
        }
    }
}

fn announce_loop(announce: &Announce, directory: &Directory, stop: &AtomicBool) {
    let mut last: Option<(BTreeMap<String, Share>, Instant)> = None;
    while !stop.load(Ordering::SeqCst) && !directory.yielded.load(Ordering::SeqCst) {
        let shares = announce.shares();
        let due = last
            .as_ref()
            .is_none_or(|(s, at)| *s != shares || at.elapsed() >= HEARTBEAT);
        if due {
            match announce.write(shares.clone(), true) {
                Ok(()) => last = Some((shares, Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write this host's entry to the hosts topic");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn follow(
    reader: &mut crate::source::kafka::KafkaRewind,
    topic: &str,
    directory: &Directory,
    stop: &AtomicBool,
    on_conflict: &dyn Fn(String),
) {
    let limit = Limit {
        records: 1_000,
        bytes: 4 << 20,
    };
    let mut yielded = false;
    while !stop.load(Ordering::SeqCst) {
        let polled = match reader.poll(limit, Duration::from_millis(200)) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "cannot read the hosts topic");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        for r in polled.records {
            if r.value.is_empty() {
                continue;
            }
            match serde_json::from_slice::<HostEntry>(&r.value) {
                Ok(e) => {
                    if let Some(why) = directory.observe(e)
                        && !yielded
                    {
                        yielded = true;
                        on_conflict(why);
                    }
                }
                Err(e) => tracing::warn!(
                    topic = %topic, offset = r.offset, error = %e,
                    "a record of the hosts topic is not a host entry; skipped"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, instance: &str, started_ms: u64, at_ms: u64) -> HostEntry {
        HostEntry {
            host: host.into(),
            instance: instance.into(),
            advertise: Some(format!("http://{host}")),
            started_ms,
            at_ms,
            up: true,
            pipelines: BTreeMap::from([(
                "p".to_string(),
                Share {
                    owned: vec![0, 1],
                    restoring: vec![2],
                    lag: BTreeMap::new(),
                },
            )]),
        }
    }

    #[test]
    fn the_owner_is_the_live_host_heard_last() {
        let now = now_ms();
        let d = Directory::new(entry("me", "i0", now, now));
        assert!(
            d.observe(entry("a", "i1", now - 60_000, now - 30_000))
                .is_none()
        );
        assert!(matches!(d.owner("p", 0), Owner::Nobody { last: Some(h) } if h == "a"));
        assert!(d.observe(entry("b", "i2", now - 1_000, now)).is_none());
        assert!(
            matches!(d.owner("p", 1), Owner::Host { entry, restoring: false } if entry.host == "b")
        );
        assert!(matches!(
            d.owner("p", 2),
            Owner::Host {
                restoring: true,
                ..
            }
        ));
        assert!(matches!(d.owner("p", 3), Owner::Nobody { last: None }));
        assert!(matches!(d.owner("q", 0), Owner::Nobody { last: None }));
        // An older entry of a host does not replace a newer one.
        let mut left = entry("b", "i2", now - 1_000, now - 5_000);
        left.up = false;
        assert!(d.observe(left).is_none());
        assert!(matches!(d.owner("p", 1), Owner::Host { .. }));
    }

    #[test]
    fn a_second_process_with_one_host_id_is_told_apart() {
        let now = now_ms();
        let d = Directory::new(entry("me", "i0", now, now));
        // The previous process of this host, heard late: not a conflict.
        assert!(
            d.observe(entry("me", "old", now - 9_000, now - 10))
                .is_none()
        );
        assert!(d.conflict().is_none());
        // One started later that is alive: it must stop, not this one.
        assert!(d.observe(entry("me", "new", now + 5, now + 10)).is_none());
        assert!(d.conflict().is_some_and(|c| c.contains("\"me\"")));
        // It stops: the conflict is over.
        let mut gone = entry("me", "new", now + 5, now + 20);
        gone.up = false;
        assert!(d.observe(gone).is_none());
        assert!(d.conflict().is_none());
        // One started earlier and still writing: this one stops.
        let d = Directory::new(entry("me", "i0", now, now));
        let why = d.observe(entry("me", "first", now - 9_000, now + 10));
        assert!(why.is_some_and(|w| w.contains("http://me")));
        assert!(d.hosts().is_empty());
    }
}
