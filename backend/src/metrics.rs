//! The backend's Prometheus collectors (names from shared/DESIGN.md).

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub pool: IntGaugeVec,
    pub argon2: Histogram,
    pub in_flight: IntGauge,
    pub panics: IntCounter,
    pub db_query: HistogramVec,
}

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "backend_http_requests_total",
                "Requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "backend_http_request_duration_seconds",
                "Request duration by route.",
            ),
            &["route"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "backend_db_pool_connections",
                "Postgres pool connections by state.",
            ),
            &["state"],
        )?;
        let argon2 = Histogram::with_opts(
            HistogramOpts::new(
                "backend_argon2_verify_seconds",
                "Time of one Argon2id password verification.",
            )
            .buckets(vec![0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
        )?;
        let in_flight = IntGauge::new(
            "backend_http_requests_in_flight",
            "Requests being handled right now.",
        )?;
        let panics = IntCounter::new(
            "backend_panics_total",
            "Requests whose handler panicked (answered 500; the process lives on).",
        )?;
        let db_query = HistogramVec::new(
            HistogramOpts::new(
                "backend_db_query_duration_seconds",
                "Time of one database call by statement name (the db module's module.function).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["statement"],
        )?;
        registry.register(Box::new(db_query.clone()))?;
        registry.register(Box::new(panics.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(argon2.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            duration,
            pool,
            argon2,
            in_flight,
            panics,
            db_query,
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            out.extend_from_slice(format!("# encode error: {e}\n").as_bytes());
        }
        out
    }
}

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics::new().expect("metric definitions are static and valid"))
}

/// Times one database call into `backend_db_query_duration_seconds{statement}` when dropped (on every
/// return path, errors included). Statement names are the `db` module's `module.function`: bounded.
pub struct QueryTimer {
    statement: &'static str,
    start: std::time::Instant,
}

impl QueryTimer {
    pub fn start(statement: &'static str) -> QueryTimer {
        QueryTimer {
            statement,
            start: std::time::Instant::now(),
        }
    }
}

impl Drop for QueryTimer {
    fn drop(&mut self) {
        metrics()
            .db_query
            .with_label_values(&[self.statement])
            .observe(self.start.elapsed().as_secs_f64());
    }
}
