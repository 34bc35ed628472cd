//! Asking a relay's admin listener from an async test: probes and gauges.

use super::process::http_get;
use std::time::{Duration, Instant};

/// GET `path` on the admin listener `admin` off the async threads: (status, body).
pub async fn get(admin: &str, path: &'static str) -> (u16, String) {
    let admin = admin.to_owned();
    tokio::task::spawn_blocking(move || http_get(&admin, path))
        .await
        .expect("the admin GET task ends")
}

/// The value of an unlabelled series in a Prometheus text page.
pub fn series(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls /metrics until every (series, value) holds, for at most 10 s: the relay samples its
/// gauges each second.
pub async fn await_metrics(admin: &str, want: &[(&str, f64)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(admin, "/metrics").await;
        if want.iter().all(|(n, v)| series(&body, n) == Some(*v)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached {want:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
