//! Prometheus metrics: names in one place, recorded through the `metrics`
//! facade, rendered by the exporter at `/metrics`.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide recorder (once; later calls reuse it, which
/// lets tests start several servers in one process).
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("yrelay_update_ack_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("static bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed (then ours records nothing).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub fn connection_opened(transport: &'static str) {
    gauge!("yrelay_connections", "transport" => transport).increment(1.0);
}

pub fn connection_closed(transport: &'static str) {
    gauge!("yrelay_connections", "transport" => transport).decrement(1.0);
}

pub fn doc_loaded() {
    counter!("yrelay_doc_loads_total").increment(1);
    gauge!("yrelay_docs_loaded").increment(1.0);
}

pub fn doc_unloaded() {
    gauge!("yrelay_docs_loaded").decrement(1.0);
}

pub fn update_accepted(transport: &'static str, bytes: usize, ack_seconds: f64) {
    counter!("yrelay_updates_total", "transport" => transport).increment(1);
    counter!("yrelay_update_bytes_total").increment(bytes as u64);
    histogram!("yrelay_update_ack_seconds").record(ack_seconds);
}

pub fn broadcast(mode: &'static str, receivers: usize) {
    counter!("yrelay_broadcasts_total", "mode" => mode).increment(receivers as u64);
}

pub fn rejected(reason: &'static str) {
    counter!("yrelay_rejected_messages_total", "reason" => reason).increment(1);
}

/// A webhook delivery attempt and how it ended (`sent`, `retried`,
/// `failed`: given up), or an event the outbox could not take (`lost`).
pub fn webhook(outcome: &'static str) {
    counter!("yrelay_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

/// Webhook deliveries waiting in the outbox (due or backing off), on every
/// instance alike.
pub fn webhooks_pending(n: i64) {
    gauge!("yrelay_webhook_deliveries_pending").set(n as f64);
}

/// An accepted update (stored before nesting was bounded) applied although
/// it nests types deeper than the limit.
pub fn too_deep_doc() {
    counter!("yrelay_deep_updates_applied_total").increment(1);
}

pub fn slow_consumer_closed() {
    counter!("yrelay_slow_consumers_closed_total").increment(1);
}

pub fn store_error() {
    counter!("yrelay_store_errors_total").increment(1);
}

pub fn store_backlog(updates: f64) {
    gauge!("yrelay_store_backlog_updates").set(updates);
}

pub fn compaction(updates: usize) {
    counter!("yrelay_compactions_total").increment(1);
    counter!("yrelay_compacted_updates_total").increment(updates as u64);
}

/// Distinct users (or anonymous connections) seen in the last minute.
pub fn active_users(count: usize) {
    gauge!("yrelay_active_users").set(count as f64);
}
