//! Prometheus metrics: calls by function, decision and status; call latency; reloads; approval
//! transitions; the audit log's writes and health.

use callgate_store::log::LogStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub function: String,
    pub decision: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApprovalLabels {
    /// `call`, `grant` or `break_glass`.
    pub kind: String,
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    pub approvals: Family<ApprovalLabels, Counter>,
    pub calls: Family<CallLabels, Counter>,
    pub latency: Family<FunctionLabels, Histogram>,
    pub reloads: Family<ReloadLabels, Counter>,
    /// Connections closed on accept: their source address had too many open.
    pub connections_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("callgate");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "calls",
            "Calls by function, decision and HTTP status",
            calls.clone(),
        );
        let latency = Family::<FunctionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
        });
        registry.register(
            "call_duration_seconds",
            "Time from request to response, per function",
            latency.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let approvals = Family::<ApprovalLabels, Counter>::default();
        registry.register(
            "approval_transitions",
            "Held calls, grants and break-glass items entering a state (pending, approved, denied, expired, cancelled, revoked, succeeded, failed, unknown)",
            approvals.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed on accept because their source address had limits.max_connections_per_source open",
            connections_refused.clone(),
        );
        Metrics {
            registry,
            approvals,
            calls,
            latency,
            reloads,
            connections_refused,
        }
    }
}

/// Reads the audit writer's counters at scrape time.
#[derive(Debug)]
struct AuditCollector {
    stats: Arc<LogStats>,
    healthy: Arc<AtomicBool>,
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "audit_records",
                "Audit records made durable",
                &self.stats.records,
            ),
            (
                "audit_commits",
                "Audit transactions committed (one fsync each)",
                &self.stats.batches,
            ),
            (
                "audit_failed_commits",
                "Audit transactions that failed; their calls were refused",
                &self.stats.failed_batches,
            ),
            (
                "audit_dropped_records",
                "Queued audit records dropped after the retry queue overflowed",
                &self.stats.dropped,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value.load(Ordering::Relaxed));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let g = ConstGauge::new(i64::from(self.healthy.load(Ordering::Relaxed)));
        g.encode(encoder.encode_descriptor(
            "audit_writable",
            "1 while the audit store accepts writes, 0 while calls are refused",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    /// Adds the audit writer's counters to the registry.
    pub fn register_audit(&mut self, stats: Arc<LogStats>, healthy: Arc<AtomicBool>) {
        self.registry
            .register_collector(Box::new(AuditCollector { stats, healthy }));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
