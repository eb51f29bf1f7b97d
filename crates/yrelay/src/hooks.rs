//! Webhooks: document events delivered to the app's backend, signed, at
//! least once, in order per document.
//!
//! An event is written to the store's outbox before it is attempted; every
//! instance delivers what is due (one at a time per target and document,
//! under a lease), retrying with exponential backoff for `retry_for`.
//! `doc.updated` is debounced per document on the instance that accepted
//! the updates: sent once the document has been quiet for `debounce`, and
//! at least every `max_wait` while edits go on.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::watch;
use yrelay_protocol::DocAddress;

use crate::clock::now_ms;
use crate::metrics;
use crate::store::{Attempted, Delivery, NewDelivery, SpaceHook, Store};

/// Where and how events are delivered.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// The URLs every event is POSTed to (besides those a space registers).
    pub targets: Vec<String>,
    /// Their HMAC-SHA256 key of `Yrelay-Signature` (unsigned without one).
    pub secret: Option<String>,
    /// Their bodies carry the document's JSON.
    pub include_json: bool,
    pub debounce: Duration,
    pub max_wait: Duration,
    /// A delivery failing for longer than this is given up.
    pub retry_for: Duration,
    /// This instance's id (event ids name it).
    pub instance: u64,
}

/// How long an instance holds a delivery it attempts (longer than an
/// attempt may take; a killed instance's are attempted again after it).
const LEASE: Duration = Duration::from_secs(15);
/// How long a receiver may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often due work is looked for.
const TICK: Duration = Duration::from_millis(100);
/// Deliveries attempted at once per instance.
const BATCH: i64 = 64;
/// Events kept in memory while the store is away, at most.
const MAX_UNWRITTEN: usize = 100_000;
/// How often a failure that repeats every tick is logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How often the pending deliveries are counted (a gauge).
const COUNT_EVERY: Duration = Duration::from_secs(5);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The largest document JSON a body carries (larger: `"json": null` and
/// `"jsonOmitted"`).
const MAX_JSON: usize = 1024 * 1024;

/// Reads a document's JSON (the hub's, set once the hub exists).
pub type JsonReader = Box<
    dyn Fn(DocAddress) -> futures_util::future::BoxFuture<'static, Option<Value>> + Send + Sync,
>;

/// `doc.updated` waiting for its document to be quiet.
struct Pending {
    first: Instant,
    last: Instant,
    timestamp_ms: i64,
    editors: BTreeSet<String>,
    cursor: Option<String>,
}

/// Events waiting to be written, and `doc.updated` waiting for quiet.
#[derive(Default)]
struct Waiting {
    /// In the order they happened.
    events: Vec<(DocAddress, &'static str, i64)>,
    updates: HashMap<DocAddress, Pending>,
    /// Not written yet: the store was away (written first, in order).
    unwritten: Vec<Write>,
    /// When a failure to claim deliveries was last logged (at most every
    /// [`WARN_EVERY`]) ...
    warned_claim: Option<Instant>,
    /// ... and when a write to the outbox failed (apart: one must not hide the other).
    warned_write: Option<Instant>,
}

/// Whether a warning last logged at `last` may be logged again (at most
/// every [`WARN_EVERY`]); if so, now is noted as its last time.
fn warn_due(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// One event to write to the outbox.
struct Write {
    addr: DocAddress,
    event: &'static str,
    timestamp_ms: i64,
    editors: Vec<String>,
    cursor: Option<String>,
}

impl Write {
    fn updated(addr: DocAddress, p: Pending) -> Self {
        Write {
            addr,
            event: "doc.updated",
            timestamp_ms: p.timestamp_ms,
            editors: p.editors.into_iter().collect(),
            cursor: p.cursor,
        }
    }
}

pub struct Hooks {
    config: HookConfig,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
    json: OnceLock<JsonReader>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("config", &self.config)
            .finish()
    }
}

impl Hooks {
    pub fn new(config: HookConfig, store: Arc<dyn Store>) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS always builds");
        Arc::new(Self {
            config,
            store,
            client,
            waiting: Mutex::new(Waiting::default()),
            next_id: AtomicU64::new(0),
            json: OnceLock::new(),
        })
    }

    /// How the document JSON that webhooks may ask for is read.
    pub fn read_json_with(&self, reader: JsonReader) {
        let _ = self.json.set(reader);
    }

    /// The document's JSON for a body, or why it is left out.
    async fn json_of(&self, addr: &DocAddress) -> (Value, Option<String>) {
        let Some(read) = self.json.get() else {
            return (Value::Null, Some("not available".into()));
        };
        match read(addr.clone()).await {
            Some(json) if json.to_string().len() <= MAX_JSON => (json, None),
            Some(_) => (
                Value::Null,
                Some(format!(
                    "larger than {MAX_JSON} bytes: GET /v1/docs/{}/{}/json",
                    addr.space(),
                    addr.doc()
                )),
            ),
            None => (Value::Null, Some("the document cannot be read".into())),
        }
    }

    /// An event of a document (`doc.created`, `doc.renamed`, `doc.deleted`,
    /// `doc.undeleted`): written to the outbox in the background, in order.
    pub fn event(&self, addr: &DocAddress, event: &'static str, timestamp_ms: i64) {
        self.lock().events.push((addr.clone(), event, timestamp_ms));
    }

    /// An accepted update: a `doc.updated` once the document is quiet.
    pub fn updated(
        &self,
        addr: &DocAddress,
        editor: Option<&str>,
        timestamp_ms: i64,
        cursor: Option<String>,
    ) {
        let now = Instant::now();
        let mut waiting = self.lock();
        let entry = waiting
            .updates
            .entry(addr.clone())
            .or_insert_with(|| Pending {
                first: now,
                last: now,
                timestamp_ms,
                editors: BTreeSet::new(),
                cursor: None,
            });
        entry.last = now;
        entry.timestamp_ms = entry.timestamp_ms.max(timestamp_ms);
        entry.cursor = cursor.or(entry.cursor.take());
        if let Some(editor) = editor {
            entry.editors.insert(editor.to_owned());
        }
    }

    /// Writes what is waiting to the outbox and delivers what is due,
    /// until `shutdown` changes (then what waits for quiet is written at
    /// once).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        let mut counted = Instant::now() - COUNT_EVERY;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    self.write_waiting(true).await;
                    return;
                }
            }
            if counted.elapsed() >= COUNT_EVERY {
                counted = Instant::now();
                if let Ok(n) = self.store.pending().await {
                    metrics::webhooks_pending(n);
                }
            }
            self.write_waiting(false).await;
            // A full batch: more may be due at once.
            let mut delivered = self.deliver_due().await;
            while matches!(delivered, Ok(n) if n == BATCH as usize) {
                delivered = self.deliver_due().await;
            }
            if let Err(e) = delivered {
                let mut waiting = self.lock();
                if warn_due(&mut waiting.warned_claim) {
                    tracing::warn!(error = %e, "webhook deliveries not claimed; retrying");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the events in the order they happened (a document's waiting
    /// `doc.updated` before its next other event), and the `doc.updated`
    /// that are due (all of them with `all`).
    async fn write_waiting(&self, all: bool) {
        let (debounce, max_wait) = (self.config.debounce, self.config.max_wait);
        let mut writes;
        {
            let mut waiting = self.lock();
            writes = std::mem::take(&mut waiting.unwritten);
            for (addr, event, timestamp_ms) in std::mem::take(&mut waiting.events) {
                if let Some(update) = waiting.updates.remove(&addr) {
                    writes.push(Write::updated(addr.clone(), update));
                }
                writes.push(Write {
                    addr,
                    event,
                    timestamp_ms,
                    editors: Vec::new(),
                    cursor: None,
                });
            }
            let due: Vec<DocAddress> = waiting
                .updates
                .iter()
                .filter(|(_, p)| {
                    all || p.last.elapsed() >= debounce || p.first.elapsed() >= max_wait
                })
                .map(|(addr, _)| addr.clone())
                .collect();
            for addr in due {
                if let Some(update) = waiting.updates.remove(&addr) {
                    writes.push(Write::updated(addr, update));
                }
            }
        }
        let mut writes = writes.into_iter();
        while let Some(w) = writes.next() {
            if let Err(e) = self.enqueue(&w).await {
                // Kept, in order, for the next tick (bounded).
                let mut waiting = self.lock();
                waiting.unwritten = std::iter::once(w).chain(writes).collect();
                let over = waiting.unwritten.len().saturating_sub(MAX_UNWRITTEN);
                if over > 0 {
                    waiting.unwritten.drain(..over);
                    metrics::webhook("lost");
                    tracing::error!(
                        lost = over,
                        "webhook events dropped: the store is away and too many wait"
                    );
                }
                if warn_due(&mut waiting.warned_write) {
                    tracing::warn!(error = %e, waiting = waiting.unwritten.len(), "webhook events not written to the outbox yet; retrying");
                }
                return;
            }
        }
    }

    /// Writes one event to the outbox, for every receiver it goes to.
    async fn enqueue(&self, w: &Write) -> Result<(), crate::store::StoreError> {
        let Write {
            addr,
            event,
            timestamp_ms,
            editors,
            cursor,
        } = w;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}-{}-{n}", self.config.instance, now_ms());
        let body = serde_json::json!({
            "id": id,
            "event": event,
            "space": addr.space(),
            "doc": addr.doc(),
            "timestamp": timestamp_ms,
            "editors": editors,
            "cursor": cursor,
        });
        let global = self.config.targets.iter().map(|url| SpaceHook {
            url: url.clone(),
            secret: self.config.secret.clone(),
            include_json: self.config.include_json,
        });
        let targets: Vec<SpaceHook> = global
            .chain(self.store.space_webhooks(addr.space()).await?)
            .collect();
        // The document as it is when the event is written (none once deleted).
        let with_json = if targets.iter().any(|t| t.include_json) && *event != "doc.deleted" {
            let (json, omitted) = self.json_of(addr).await;
            let mut body = body.clone();
            body["json"] = json;
            if let Some(why) = omitted {
                body["jsonOmitted"] = Value::from(why);
            }
            Some(body.to_string())
        } else {
            None
        };
        let body = body.to_string();
        let deliveries: Vec<NewDelivery> = targets
            .into_iter()
            .map(|t| NewDelivery {
                body: match (&with_json, t.include_json) {
                    (Some(with_json), true) => with_json.clone(),
                    _ => body.clone(),
                },
                target: t.url,
                secret: t.secret,
                space: addr.space().to_owned(),
                doc: addr.doc().to_owned(),
                event: (*event).to_owned(),
                created_at: now_ms(),
            })
            .collect();
        if deliveries.is_empty() {
            return Ok(());
        }
        self.store.enqueue(&deliveries).await
    }

    /// Attempts the deliveries that are due (at most [`BATCH`]); how many.
    async fn deliver_due(&self) -> Result<usize, crate::store::StoreError> {
        let now = now_ms();
        let due = self
            .store
            .claim(now, LEASE.as_millis() as i64, BATCH)
            .await?;
        let attempts = due.iter().map(|d| self.attempt(d));
        let mut settled = Vec::with_capacity(due.len());
        for (delivery, attempted) in due.iter().zip(join_all(attempts).await) {
            match &attempted {
                Attempted::Sent => metrics::webhook("sent"),
                Attempted::Retry { error, .. } => {
                    metrics::webhook("retried");
                    tracing::info!(target = %delivery.target, id = delivery.id, attempts = delivery.attempts + 1, %error, "webhook delivery failed; retrying");
                }
                Attempted::GivenUp { error } => {
                    metrics::webhook("failed");
                    tracing::warn!(target = %delivery.target, id = delivery.id, %error, "webhook delivery given up");
                }
            }
            settled.push((delivery.id, attempted));
        }
        // One commit for the batch (a lease the store cannot settle now
        // lapses: the deliveries are attempted again, at least once).
        self.store.settle(&settled).await?;
        Ok(due.len())
    }

    /// POSTs one delivery, signed.
    async fn attempt(&self, delivery: &Delivery) -> Attempted {
        let mut request = self
            .client
            .post(&delivery.target)
            .header("content-type", "application/json")
            .header("yrelay-event", &delivery.event)
            .body(delivery.body.clone());
        if let Some(secret) = &delivery.secret {
            request = request.header("yrelay-signature", signature(secret, &delivery.body));
        }
        let error = match request.send().await {
            Ok(answer) if answer.status().is_success() => return Attempted::Sent,
            Ok(answer) => format!("the receiver answered {}", answer.status()),
            Err(e) if e.is_timeout() => format!("no answer within {}s", TIMEOUT.as_secs()),
            Err(e) => format!("not delivered: {e}"),
        };
        let now = now_ms();
        if now - delivery.created_at >= self.config.retry_for.as_millis() as i64 {
            return Attempted::GivenUp { error };
        }
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << delivery.attempts.clamp(0, 20))
            .min(MAX_BACKOFF);
        Attempted::Retry {
            next_at: now + backoff.as_millis() as i64,
            error,
        }
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub fn signature(secret: &str, body: &str) -> String {
    let t = now_ms() / 1000;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}
