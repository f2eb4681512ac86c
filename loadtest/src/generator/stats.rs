//! What one run measured: a latency histogram, responses by status class, and failures by kind.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, with 3 significant digits.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Why a request produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connect (or the TLS handshake) failed.
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    /// The connection broke while writing the request or reading the response.
    Io,
    /// The peer answered something that is not HTTP.
    Protocol,
}

/// One thread's (or a whole run's) counts. Merged across threads at the end of a run.
pub struct Stats {
    latency_us: Histogram<u64>,
    /// The same latencies split: 2xx responses (answered), and every other response (refused or failed
    /// by the target: the overload scenarios' "time to refuse").
    answered_us: Histogram<u64>,
    refused_us: Histogram<u64>,
    /// Responses by status class: index 1 = 1xx … 5 = 5xx (0 unused).
    classes: [u64; 6],
    failures: Failures,
    /// Responses that completed after the measured window (in flight when it ended): they count in the
    /// histogram, not in the throughput.
    late: u64,
    /// Of those, the 2xx.
    late_2xx: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Failures {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub protocol: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.protocol
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        // 3 significant digits over this range: a fixed ~200 KiB per thread, allocated once.
        let latency_us = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Stats {
            answered_us: latency_us.clone(),
            refused_us: latency_us.clone(),
            latency_us,
            classes: [0; 6],
            failures: Failures::default(),
            late: 0,
            late_2xx: 0,
        }
    }

    /// A response with `status`, `latency_us` after its (intended) send time.
    pub fn response(&mut self, status: u16, latency_us: u64) {
        self.latency_us.saturating_record(latency_us.max(1));
        if (200..300).contains(&status) {
            self.answered_us.saturating_record(latency_us.max(1));
        } else {
            self.refused_us.saturating_record(latency_us.max(1));
        }
        let class = usize::from(status / 100).min(5);
        self.classes[class] += 1;
    }

    /// A request that got no response. Its latency counts too (the time until it failed): in an open loop,
    /// leaving failures out of the histogram would hide a stall behind a timeout.
    pub fn failure(&mut self, kind: Failure, latency_us: u64) {
        self.latency_us.saturating_record(latency_us.max(1));
        match kind {
            Failure::Connect => self.failures.connect += 1,
            Failure::Timeout => self.failures.timeout += 1,
            Failure::Io => self.failures.io += 1,
            Failure::Protocol => self.failures.protocol += 1,
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.answered_us.add(&other.answered_us);
        let _ = self.refused_us.add(&other.refused_us);
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.failures.connect += other.failures.connect;
        self.failures.timeout += other.failures.timeout;
        self.failures.io += other.failures.io;
        self.failures.protocol += other.failures.protocol;
        self.late += other.late;
        self.late_2xx += other.late_2xx;
    }

    /// The last response recorded (with `status`) completed after the measured window.
    pub fn late(&mut self, status: u16) {
        self.late += 1;
        if (200..300).contains(&status) {
            self.late_2xx += 1;
        }
    }

    pub fn responses(&self) -> u64 {
        self.classes.iter().sum()
    }

    pub fn failures(&self) -> Failures {
        self.failures
    }

    /// Latencies recorded (responses and failures).
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.latency_us
    }

    /// `seconds`: the measured window; throughput counts the responses completed within it.
    pub fn summary(&self, seconds: f64) -> Summary {
        let responses = self.responses();
        // Throughput counts what completed within the window: a response that arrived after it (in
        // flight when the window ended) is in the histogram, not in the rate.
        let in_window = responses.saturating_sub(self.late);
        let rate = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        Summary {
            requests: responses + self.failures.total(),
            responses,
            rps: rate(in_window),
            goodput: rate(self.classes[2].saturating_sub(self.late_2xx)),
            seconds,
            latency_ms: Latency::of(&self.latency_us),
            answered_ms: Latency::of(&self.answered_us),
            refused_ms: Latency::of(&self.refused_us),
            status: StatusClasses {
                s1xx: self.classes[1],
                s2xx: self.classes[2],
                s3xx: self.classes[3],
                s4xx: self.classes[4],
                s5xx: self.classes[5],
            },
            failures: self.failures,
        }
    }
}

/// A run's figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests that got a response or failed.
    pub requests: u64,
    pub responses: u64,
    /// Responses per second of the measured window.
    pub rps: f64,
    /// 2xx responses per second of the measured window.
    pub goodput: f64,
    pub seconds: f64,
    pub latency_ms: Latency,
    /// 2xx responses only.
    pub answered_ms: Latency,
    /// Non-2xx responses only (a 503 of a proxy shedding load, say).
    pub refused_ms: Latency,
    pub status: StatusClasses,
    pub failures: Failures,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Quantiles of `h` (µs) in milliseconds; all zero when it is empty.
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub s1xx: u64,
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// #25 point 6: responses that arrive after the window are latencies, not throughput (an open loop
    /// past saturation finishes a backlog after its window, which overstated its goodput).
    #[test]
    fn late_responses_are_not_throughput() {
        let mut s = Stats::new();
        for _ in 0..10 {
            s.response(200, 1_000);
        }
        for _ in 0..3 {
            s.response(200, 900_000);
            s.late(200);
        }
        s.response(503, 1_000);
        s.response(503, 900_000);
        s.late(503);
        let sum = s.summary(2.0);
        assert_eq!(sum.responses, 15);
        assert_eq!(sum.rps, 5.5);
        assert_eq!(sum.goodput, 5.0);
    }

    #[test]
    fn classes_failures_and_quantiles_merge() {
        let mut a = Stats::new();
        for us in 1..=1000 {
            a.response(200, us);
        }
        let mut b = Stats::new();
        b.response(503, 5_000);
        b.response(404, 10);
        b.failure(Failure::Timeout, 2_000_000);
        b.failure(Failure::Connect, 3);
        a.merge(&b);
        let s = a.summary(2.0);
        assert_eq!(s.responses, 1002);
        assert_eq!(s.requests, 1004);
        assert_eq!((s.status.s2xx, s.status.s4xx, s.status.s5xx), (1000, 1, 1));
        assert_eq!(
            s.failures,
            Failures {
                connect: 1,
                timeout: 1,
                io: 0,
                protocol: 0
            }
        );
        assert_eq!(s.rps, 501.0);
        assert!((s.latency_ms.p50 - 0.5).abs() < 0.01, "{:?}", s.latency_ms);
        assert!(s.latency_ms.max >= 2000.0, "{:?}", s.latency_ms);
        // Answered: the 2xx only; refused: the 503 and the 404, not the failures.
        assert!(s.answered_ms.max <= 1.001, "{:?}", s.answered_ms);
        assert!((s.refused_ms.max - 5.0).abs() < 0.01, "{:?}", s.refused_ms);
        assert!(s.refused_ms.p50 < 0.02, "{:?}", s.refused_ms);
    }
}
