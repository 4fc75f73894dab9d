//! Every Prometheus metric of the service, defined in one place on one registry. Names follow
//! Prometheus conventions: `notellm_` prefix, base units, `_total` counters, histograms for
//! durations and sizes. Label sets that dashboards query are created at zero at start-up so a
//! fresh service exports them before the first request.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Routes as they appear in the `route` label (matched paths, never raw ids).
pub const ROUTES: &[&str] = &[
    "/notes/{note_id}",
    "/notes:batch",
    "/related/{note_id}",
    "/related",
    "/suggest-tags",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin/reindex",
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub queue_rejected: IntCounterVec,
    pub requests_dropped: IntCounterVec,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub batch_padding: Histogram,
    pub inference_duration: Histogram,
    pub generation_duration: Histogram,
    pub embedded_notes: IntCounter,
    /// Images run through the encoder (a note whose image was stored before reuses its features).
    pub images_encoded: IntCounter,
    /// Image notes written with features reused from the store.
    pub image_features_reused: IntCounter,
    pub notes_indexed: IntGauge,
    pub index_tombstones: IntGauge,
    pub index_rebuilds: IntCounter,
    pub snapshots_rejected: IntCounter,
    pub store_up: IntGauge,
    pub store_full: IntGauge,
    pub snapshot_age: Gauge,
    pub store_errors: IntCounterVec,
    pub build_info: GaugeVec,
    pub reindex_running: IntGauge,
    pub reindex_state: IntGaugeVec,
    pub reindex_notes: IntGaugeVec,
    pub reindex_runs: IntCounterVec,
    pub reindex_duration: Histogram,
    pub reindex_write_hold: Histogram,
    pub reindex_embedded: IntCounter,
    /// Writes the store refused as embedded by a model another process's re-index had replaced,
    /// embedded again by the new one.
    pub writes_reembedded: IntCounter,
    pub related_cache_hits: IntCounter,
    pub related_cache_misses: IntCounter,
    pub related_cache_entries: IntGauge,
    pub suggestions: IntCounterVec,
    /// Replica mode (`follow.rs`); all stay 0 on a process that does not follow the store.
    pub follow_applied_seq: IntGauge,
    pub follow_lag_seq: IntGauge,
    pub follow_lag_seconds: Gauge,
    pub follow_applied: IntCounter,
    pub follow_reconnects: IntCounter,
    pub follow_switches: IntCounterVec,
}

/// `state` values of `notellm_reindex_state` (see `service::ReindexState`).
pub const REINDEX_STATES: &[&str] =
    &["loading", "embedding", "catching_up", "switching", "done", "failed", "cancelled"];
/// `kind` values of `notellm_reindex_notes`.
pub const REINDEX_NOTE_KINDS: &[&str] = &["total", "done", "reused", "caught_up"];
/// `source` values of `notellm_suggestions_total` (see `service::SuggestionSource`).
pub const SUGGESTION_SOURCES: &[&str] = &["neighbours", "generated"];
/// `outcome` values of `notellm_follow_switches_total`.
pub const FOLLOW_SWITCH_OUTCOMES: &[&str] = &["done", "failed"];
/// `outcome` values of `notellm_reindex_runs_total`.
pub const REINDEX_OUTCOMES: &[&str] = &["done", "failed", "cancelled"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn hist(name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        // 0.25 ms .. ~16 s: /related answers in about a millisecond, generation in seconds.
        let latency = exponential_buckets(0.000_25, 2.0, 17)?;
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new("notellm_http_requests_total", "HTTP requests by route, method and status"),
                &["route", "method", "status"],
            )?,
            http_duration: HistogramVec::new(
                HistogramOpts::new("notellm_http_request_duration_seconds", "HTTP request duration by route")
                    .buckets(latency.clone()),
                &["route"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new("notellm_queue_depth", "Requests waiting in a queue (embed, generate)"),
                &["queue"],
            )?,
            queue_rejected: IntCounterVec::new(
                Opts::new("notellm_queue_rejected_total", "Requests refused because a queue was full"),
                &["queue"],
            )?,
            requests_dropped: IntCounterVec::new(
                Opts::new("notellm_requests_dropped_total", "Queued requests dropped before running, by reason"),
                &["queue", "reason"],
            )?,
            batch_size: hist("notellm_batch_size", "Notes per embedding batch", exponential_buckets(1.0, 2.0, 9)?)?,
            batch_tokens: hist(
                "notellm_batch_tokens",
                "Padded tokens per embedding batch",
                exponential_buckets(16.0, 2.0, 12)?,
            )?,
            batch_padding: hist(
                "notellm_batch_padding_ratio",
                "Share of padding tokens in an embedding batch",
                vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0],
            )?,
            inference_duration: hist(
                "notellm_inference_duration_seconds",
                "Forward pass time of one embedding batch",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            generation_duration: hist(
                "notellm_generation_duration_seconds",
                "Time to generate hashtags and a category for one note",
                exponential_buckets(0.01, 2.0, 14)?,
            )?,
            embedded_notes: IntCounter::new("notellm_embedded_notes_total", "Notes embedded by the model")?,
            images_encoded: IntCounter::new("notellm_images_encoded_total", "Images run through the image encoder")?,
            image_features_reused: IntCounter::new(
                "notellm_image_features_reused_total",
                "Image notes embedded with an image's features read from the store instead of encoded",
            )?,
            notes_indexed: IntGauge::new("notellm_notes_indexed", "Live notes in the HNSW index")?,
            index_tombstones: IntGauge::new(
                "notellm_index_tombstones",
                "Deleted or replaced vectors still in the graph",
            )?,
            index_rebuilds: IntCounter::new("notellm_index_rebuilds_total", "Index rebuilds (tombstone share passed)")?,
            store_up: IntGauge::new(
                "notellm_store_up",
                "1 while the store answers the service's health probe (every second), else 0",
            )?,
            store_full: IntGauge::new(
                "notellm_store_full",
                "1 while the store refuses writes for lack of space (since the last write failed so, until one succeeds)",
            )?,
            snapshots_rejected: IntCounter::new(
                "notellm_snapshots_rejected_total",
                "Index snapshots the store contradicted at start (the index was rebuilt from the store)",
            )?,
            snapshot_age: Gauge::new(
                "notellm_snapshot_age_seconds",
                "Seconds since the last index snapshot was written or loaded",
            )?,
            store_errors: IntCounterVec::new(
                Opts::new("notellm_store_errors_total", "Store operations that failed, by operation"),
                &["op"],
            )?,
            suggestions: IntCounterVec::new(
                Opts::new(
                    "notellm_suggestions_total",
                    "/suggest-tags answers, by source (the nearest notes' vote, or generation)",
                ),
                &["source"],
            )?,
            build_info: GaugeVec::new(
                Opts::new("notellm_build_info", "Build and model information (value 1)"),
                &["version", "model_version", "store"],
            )?,
            reindex_running: IntGauge::new("notellm_reindex_running", "1 while a re-index runs")?,
            reindex_state: IntGaugeVec::new(
                Opts::new("notellm_reindex_state", "State of the running or last re-index (1 for the current one)"),
                &["state"],
            )?,
            reindex_notes: IntGaugeVec::new(
                Opts::new(
                    "notellm_reindex_notes",
                    "Progress of the running or last re-index: notes in the store at its start (total), \
                     with a new vector (done), of which reused from an earlier attempt (reused), and \
                     changes applied while catching up (caught_up)",
                ),
                &["kind"],
            )?,
            reindex_runs: IntCounterVec::new(
                Opts::new("notellm_reindex_runs_total", "Re-indexes ended, by outcome"),
                &["outcome"],
            )?,
            // 1 s .. ~36 h: a re-index of the default model runs at ~7 notes/s on 2 cores.
            reindex_duration: hist(
                "notellm_reindex_duration_seconds",
                "Duration of a re-index, start to end",
                exponential_buckets(1.0, 2.0, 18)?,
            )?,
            reindex_write_hold: hist(
                "notellm_reindex_write_hold_seconds",
                "How long a re-index switch held writes (last changes, store switch, swap)",
                exponential_buckets(0.001, 2.0, 16)?,
            )?,
            reindex_embedded: IntCounter::new(
                "notellm_reindex_embedded_notes_total",
                "Notes embedded by re-indexes (background, not live writes)",
            )?,
            writes_reembedded: IntCounter::new(
                "notellm_writes_reembedded_total",
                "Writes the store refused because another process's re-index had switched it to another model \
                 while they were embedded, embedded again by the new model",
            )?,
            related_cache_hits: IntCounter::new(
                "notellm_related_cache_hits_total",
                "GET /related answers served from the answer cache",
            )?,
            related_cache_misses: IntCounter::new(
                "notellm_related_cache_misses_total",
                "GET /related lookups the answer cache could not serve (absent, or computed before the \
                 last index write); counted only when the cache is enabled",
            )?,
            related_cache_entries: IntGauge::new(
                "notellm_related_cache_entries",
                "Answers held by the /related answer cache, stale ones included",
            )?,
            follow_applied_seq: IntGauge::new(
                "notellm_follow_applied_seq",
                "The store seq up to which this replica's index holds every change",
            )?,
            follow_lag_seq: IntGauge::new(
                "notellm_follow_lag_seq",
                "Store seqs committed that this replica has not applied yet (as last seen)",
            )?,
            follow_lag_seconds: Gauge::new(
                "notellm_follow_lag_seconds",
                "How long this replica has been behind the store's latest seen change (0 when caught up)",
            )?,
            follow_applied: IntCounter::new(
                "notellm_follow_applied_changes_total",
                "Changes written by other replicas applied to this replica's index (stored vectors, never \
                 re-embedded)",
            )?,
            follow_reconnects: IntCounter::new(
                "notellm_follow_reconnects_total",
                "Times the change listener was lost (dropped, silent past its heartbeat) and rebuilt",
            )?,
            follow_switches: IntCounterVec::new(
                Opts::new(
                    "notellm_follow_switches_total",
                    "Re-index switches recorded in the store that this replica followed, by outcome",
                ),
                &["outcome"],
            )?,
            registry: r,
        };
        let r = &m.registry;
        r.register(Box::new(m.http_requests.clone()))?;
        r.register(Box::new(m.http_duration.clone()))?;
        r.register(Box::new(m.queue_depth.clone()))?;
        r.register(Box::new(m.queue_rejected.clone()))?;
        r.register(Box::new(m.requests_dropped.clone()))?;
        r.register(Box::new(m.batch_size.clone()))?;
        r.register(Box::new(m.batch_tokens.clone()))?;
        r.register(Box::new(m.batch_padding.clone()))?;
        r.register(Box::new(m.inference_duration.clone()))?;
        r.register(Box::new(m.generation_duration.clone()))?;
        r.register(Box::new(m.embedded_notes.clone()))?;
        r.register(Box::new(m.images_encoded.clone()))?;
        r.register(Box::new(m.image_features_reused.clone()))?;
        r.register(Box::new(m.notes_indexed.clone()))?;
        r.register(Box::new(m.index_tombstones.clone()))?;
        r.register(Box::new(m.index_rebuilds.clone()))?;
        r.register(Box::new(m.snapshots_rejected.clone()))?;
        r.register(Box::new(m.store_up.clone()))?;
        r.register(Box::new(m.store_full.clone()))?;
        r.register(Box::new(m.snapshot_age.clone()))?;
        r.register(Box::new(m.store_errors.clone()))?;
        r.register(Box::new(m.build_info.clone()))?;
        r.register(Box::new(m.reindex_running.clone()))?;
        r.register(Box::new(m.reindex_state.clone()))?;
        r.register(Box::new(m.reindex_notes.clone()))?;
        r.register(Box::new(m.reindex_runs.clone()))?;
        r.register(Box::new(m.reindex_duration.clone()))?;
        r.register(Box::new(m.reindex_write_hold.clone()))?;
        r.register(Box::new(m.reindex_embedded.clone()))?;
        r.register(Box::new(m.writes_reembedded.clone()))?;
        r.register(Box::new(m.related_cache_hits.clone()))?;
        r.register(Box::new(m.related_cache_misses.clone()))?;
        r.register(Box::new(m.related_cache_entries.clone()))?;
        r.register(Box::new(m.suggestions.clone()))?;
        r.register(Box::new(m.follow_applied_seq.clone()))?;
        r.register(Box::new(m.follow_lag_seq.clone()))?;
        r.register(Box::new(m.follow_lag_seconds.clone()))?;
        r.register(Box::new(m.follow_applied.clone()))?;
        r.register(Box::new(m.follow_reconnects.clone()))?;
        r.register(Box::new(m.follow_switches.clone()))?;
        for outcome in FOLLOW_SWITCH_OUTCOMES {
            m.follow_switches.with_label_values(&[outcome]).reset();
        }
        for state in REINDEX_STATES {
            m.reindex_state.with_label_values(&[state]).set(0);
        }
        for kind in REINDEX_NOTE_KINDS {
            m.reindex_notes.with_label_values(&[kind]).set(0);
        }
        for outcome in REINDEX_OUTCOMES {
            m.reindex_runs.with_label_values(&[outcome]).reset();
        }
        for q in [crate::batcher::Queue::Embed.label(), crate::batcher::Queue::Generate.label()] {
            m.queue_depth.with_label_values(&[q]).set(0);
            m.queue_rejected.with_label_values(&[q]).reset();
            m.requests_dropped.with_label_values(&[q, "client_gone"]).reset();
        }
        for route in ROUTES {
            let _ = m.http_duration.with_label_values(&[route]);
        }
        for source in SUGGESTION_SOURCES {
            m.suggestions.with_label_values(&[source]).reset();
        }
        for op in ["put", "get", "delete", "changes", "scan", "ping", "labels"] {
            m.store_errors.with_label_values(&[op]).reset();
        }
        Ok(m)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_at_zero_and_rendered() {
        let m = Metrics::new().unwrap();
        m.build_info.with_label_values(&["0.1.0", "m1", "sqlite"]).set(1.0);
        let text = m.render();
        for name in [
            "notellm_queue_depth{queue=\"embed\"} 0",
            "notellm_http_request_duration_seconds_bucket{route=\"/related/{note_id}\"",
            "notellm_batch_size_bucket",
            "notellm_notes_indexed 0",
            "notellm_store_errors_total{op=\"put\"} 0",
            "notellm_build_info{model_version=\"m1\",store=\"sqlite\",version=\"0.1.0\"} 1",
            "notellm_reindex_running 0",
            "notellm_reindex_state{state=\"switching\"} 0",
            "notellm_reindex_notes{kind=\"done\"} 0",
            "notellm_reindex_runs_total{outcome=\"failed\"} 0",
            "notellm_reindex_duration_seconds_bucket",
            "notellm_reindex_write_hold_seconds_bucket",
            "notellm_reindex_embedded_notes_total 0",
            "notellm_writes_reembedded_total 0",
            "notellm_related_cache_hits_total 0",
            "notellm_images_encoded_total 0",
            "notellm_image_features_reused_total 0",
            "notellm_related_cache_misses_total 0",
            "notellm_related_cache_entries 0",
            "notellm_suggestions_total{source=\"neighbours\"} 0",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
