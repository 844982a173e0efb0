//! In-memory object storage with one global resource version and a change
//! history that watches replay from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::resources::ResourceDef;
use super::status::ApiError;

/// How many changes watches can replay from; older resource versions get 410 Gone.
const HISTORY_LIMIT: usize = 10_000;
/// Live changes buffered per watch before it is ended with 410 Gone.
const WATCH_BUFFER: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored change, as watches and the kubelet see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub res: &'static ResourceDef,
    pub namespace: String,
    pub kind: EventType,
    pub object: Value,
    /// The object before a modification (watch filters need it to turn a
    /// modification that leaves a selector into DELETED).
    pub old: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjKey {
    group: &'static str,
    plural: &'static str,
    namespace: String,
    name: String,
}

fn key(res: &'static ResourceDef, ns: &str, name: &str) -> ObjKey {
    ObjKey { group: res.group, plural: res.plural, namespace: ns.to_string(), name: name.to_string() }
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    /// Highest resource version no longer in `history`.
    compacted: u64,
    hooks: Vec<mpsc::UnboundedSender<Arc<Change>>>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum WatchStart {
    /// Synthetic ADDED events for every current object, then changes (`resourceVersion` unset or "0").
    Now,
    /// Changes after this resource version.
    After(u64),
}

/// A started watch: changes to replay, the live receiver, and the store's resource version then.
pub type WatchStarted = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

pub struct Store {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Change>>,
}

pub fn uid() -> String {
    let b = random_bytes::<16>();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// Random bytes from the kernel (ids need only be unique, not secret).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        // Fall back to time and a counter; uniqueness is all callers need.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
            ^ u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
    b
}

/// The 5 random characters the API server appends to `generateName`.
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>().iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

pub fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        Store { state: Mutex::new(State { rv: 1000, ..State::default() }), tx }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write is one insert).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, st: &mut State, change: Change) {
        let change = Arc::new(change);
        st.history.push_back(change.clone());
        while st.history.len() > HISTORY_LIMIT {
            if let Some(old) = st.history.pop_front() {
                st.compacted = old.rv;
            }
        }
        let _ = self.tx.send(change.clone());
        st.hooks.retain(|h| h.send(change.clone()).is_ok());
    }

    /// Every change from now on, unbounded (for the kubelet and controllers).
    pub fn hook(&self) -> mpsc::UnboundedReceiver<Arc<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().hooks.push(tx);
        rx
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, res: &'static ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock().objects.get(&key(res, ns, name)).cloned().ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Objects of a type (in one namespace, or all when `ns` is None) that pass `filter`, and the list's resource version.
    pub fn list(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> (Vec<Value>, u64) {
        let st = self.lock();
        let items = st
            .objects
            .iter()
            .filter(|(k, _)| k.group == res.group && k.plural == res.plural)
            .filter(|(k, _)| ns.is_none_or(|ns| k.namespace == ns))
            .filter(|(_, v)| filter(v))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.rv)
    }

    /// Stores a new object; `metadata.name` must be set. Fills uid, creationTimestamp, resourceVersion.
    pub fn create(&self, res: &'static ResourceDef, mut obj: Value) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let ns = if res.namespaced { namespace_of(&obj).to_string() } else { String::new() };
        let name = name_of(&obj).to_string();
        let k = key(res, &ns, &name);
        if st.objects.contains_key(&k) {
            return Err(ApiError::already_exists(res, &name));
        }
        st.rv += 1;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(uid());
        meta["resourceVersion"] = json!(st.rv.to_string());
        meta["creationTimestamp"] = json!(super::time::now());
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            if !res.namespaced {
                m.remove("namespace");
            }
        }
        if !res.group.is_empty() {
            meta["generation"] = json!(1);
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        st.objects.insert(k, obj.clone());
        let rv = st.rv;
        self.emit(&mut st, Change { rv, res, namespace: ns, kind: EventType::Added, object: obj.clone(), old: None });
        Ok(obj)
    }

    /// Read-modify-write of one object. No change means no new resource version and no event.
    pub fn update(
        &self,
        res: &'static ResourceDef,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let k = key(res, ns, name);
        let old = st.objects.get(&k).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
        let mut new = old.clone();
        f(&mut new)?;
        // Identity fields are the server's.
        for f in ["uid", "creationTimestamp", "name", "namespace"] {
            new["metadata"][f] = old["metadata"][f].clone();
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return Ok(old);
        }
        if !res.group.is_empty() && new.get("spec") != old.get("spec") {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(k, new.clone());
        let rv = st.rv;
        self.emit(
            &mut st,
            Change {
                rv,
                res,
                namespace: ns.to_string(),
                kind: EventType::Modified,
                object: new.clone(),
                old: Some(old),
            },
        );
        Ok(new)
    }

    /// Removes an object; the DELETED event carries the deletion's resource version.
    pub fn delete(&self, res: &'static ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let mut obj = st.objects.remove(&key(res, ns, name)).ok_or_else(|| ApiError::not_found(res, name))?;
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let rv = st.rv;
        self.emit(
            &mut st,
            Change { rv, res, namespace: ns.to_string(), kind: EventType::Deleted, object: obj.clone(), old: None },
        );
        Ok(obj)
    }

    /// Starts a watch: the changes to replay first (synthetic ADDED events for
    /// [`WatchStart::Now`]), then live changes from the receiver.
    pub fn watch(
        &self,
        res: &'static ResourceDef,
        ns: Option<&str>,
        start: WatchStart,
    ) -> Result<WatchStarted, ApiError> {
        let st = self.lock();
        let rx = self.tx.subscribe();
        let same =
            |r: &ResourceDef, n: &str| r.group == res.group && r.plural == res.plural && ns.is_none_or(|ns| n == ns);
        let replay = match start {
            WatchStart::Now => st
                .objects
                .iter()
                .filter(|(k, _)| {
                    k.group == res.group && k.plural == res.plural && ns.is_none_or(|ns| k.namespace == ns)
                })
                .map(|(k, v)| {
                    let rv = v
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(st.rv);
                    Arc::new(Change {
                        rv,
                        res,
                        namespace: k.namespace.clone(),
                        kind: EventType::Added,
                        object: v.clone(),
                        old: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) => {
                if rv < st.compacted {
                    return Err(ApiError::gone(format!("too old resource version: {rv} ({})", st.compacted + 1)));
                }
                st.history.iter().filter(|c| c.rv > rv && same(c.res, &c.namespace)).cloned().collect()
            }
        };
        Ok((replay, rx, st.rv))
    }
}
