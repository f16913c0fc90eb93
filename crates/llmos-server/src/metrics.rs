//! `/metrics` in the Prometheus text format: requests by route and status, request latency
//! as a histogram, tokens, queue depth and batch size from the batcher.

use crate::App;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

const BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    n: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Hist>>,
}

impl Metrics {
    pub fn record(&self, route: &str, status: u16, secs: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(route.to_string()).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += secs;
            h.n += 1;
        }
    }
}

pub async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let mut out = String::new();
    let m = &app.metrics;
    out.push_str("# HELP llmos_requests_total HTTP requests by route and status.\n");
    out.push_str("# TYPE llmos_requests_total counter\n");
    if let Ok(r) = m.requests.lock() {
        for ((route, status), n) in r.iter() {
            let _ = writeln!(
                out,
                "llmos_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    out.push_str(
        "# HELP llmos_request_seconds Time to answer a request (whole stream included).\n",
    );
    out.push_str("# TYPE llmos_request_seconds histogram\n");
    if let Ok(l) = m.latency.lock() {
        for (route, h) in l.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "llmos_request_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "llmos_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.n
            );
            let _ = writeln!(
                out,
                "llmos_request_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "llmos_request_seconds_count{{route=\"{route}\"}} {}",
                h.n
            );
        }
    }
    let s = &app.batcher.stats;
    let steps = s.steps.load(Relaxed);
    let seqs = s.batched_seqs.load(Relaxed);
    let mean = if steps > 0 {
        seqs as f64 / steps as f64
    } else {
        0.0
    };
    let rows: [(&str, &str, &str, f64); 10] = [
        (
            "llmos_generations_total",
            "counter",
            "Generations started.",
            s.requests.load(Relaxed) as f64,
        ),
        (
            "llmos_generations_cancelled_total",
            "counter",
            "Generations whose client left before the end.",
            s.cancelled.load(Relaxed) as f64,
        ),
        (
            "llmos_prompt_tokens_total",
            "counter",
            "Prompt tokens received.",
            s.prompt_tokens.load(Relaxed) as f64,
        ),
        (
            "llmos_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens found in a slot's cache (not recomputed).",
            s.cached_tokens.load(Relaxed) as f64,
        ),
        (
            "llmos_generated_tokens_total",
            "counter",
            "Tokens generated.",
            s.generated_tokens.load(Relaxed) as f64,
        ),
        (
            "llmos_decode_steps_total",
            "counter",
            "Forward passes of the batcher.",
            steps as f64,
        ),
        (
            "llmos_queue_depth",
            "gauge",
            "Requests waiting for a slot.",
            s.queued.load(Relaxed) as f64,
        ),
        (
            "llmos_active_sequences",
            "gauge",
            "Sequences in the running batch.",
            s.active.load(Relaxed) as f64,
        ),
        (
            "llmos_batch_size_mean",
            "gauge",
            "Mean sequences per forward pass so far.",
            mean,
        ),
        (
            "llmos_slots",
            "gauge",
            "Slots (most sequences in one batch).",
            app.cfg.parallel as f64,
        ),
    ];
    for (name, ty, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}\n{name} {v}");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
