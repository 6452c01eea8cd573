//! Prometheus metrics: one recorder per process, rendered at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Decision latency buckets, in seconds: 10 µs to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's metrics handle, installing the recorder on first use. `None` when another
/// recorder was installed first (metrics then go there).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("ztinfra_decision_duration_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            metrics::describe_counter!(
                "ztinfra_decisions_total",
                "Decisions made, by outcome and endpoint"
            );
            metrics::describe_histogram!(
                "ztinfra_decision_duration_seconds",
                metrics::Unit::Seconds,
                "Time from a decision request's arrival to its answer"
            );
            metrics::describe_counter!(
                "ztinfra_policy_reloads_total",
                "Policy reloads, by outcome (ok, error)"
            );
            metrics::describe_gauge!("ztinfra_policies_active", "Policies in the active set");
            metrics::describe_counter!(
                "ztinfra_policy_validated_total",
                "Policies type-checked by loads (unchanged ones are not checked again)"
            );
            let upkeep = handle.clone();
            // Histograms are drained on render or upkeep; keep memory bounded between scrapes.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}
