//! The access log and its redaction.

use super::*;

/// While set, access log events are formatted for [`capture_access_log`];
/// otherwise the subscriber turns every event away at once, so the other
/// tests of this binary (the memory one above all) are not slowed or grown.
static CAPTURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Access log lines for paths under `/echo/q-`, from every gateway in this
/// process, while [`CAPTURING`] is set.
fn capture_access_log() -> std::sync::Arc<parking_lot::Mutex<String>> {
    use tracing_subscriber::layer::SubscriberExt;
    static LOG: std::sync::OnceLock<std::sync::Arc<parking_lot::Mutex<String>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = log.clone();
        let only_access = tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == "roster_gateway::access" && CAPTURING.load(std::sync::atomic::Ordering::Relaxed)
        });
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(move || Capture(sink.clone()));
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(layer, only_access));
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this test binary");
        log
    })
    .clone()
}

struct Capture(std::sync::Arc<parking_lot::Mutex<String>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if line.contains("roster_gateway::access") && line.contains("/echo/q-") {
            self.0.lock().push_str(&line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_redacts_query_strings_when_configured_on_both_engines() {
    let log = capture_access_log();
    CAPTURING.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reg, _stop) = registry().await;
    let _b = Backend::start(&reg, "echo", "q1").await;
    let h1 = http();
    let h2: HttpClient = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for (toml, redact) in [("", false), ("access_log_redact_query = true\n", true)] {
        let gw = Gw::start(&reg, toml).await;
        for (engine, c) in [("fast", &h1), ("hyper", &h2)] {
            let path = format!("/echo/q-{engine}-{redact}");
            let a = get(c, &gw.url(&format!("{path}?token=s3cret-{engine}"))).await;
            assert_eq!(a.status, StatusCode::OK, "{engine}: {}", a.json);
            let text = log.lock().clone();
            let line = text
                .lines()
                .find(|l| l.contains(&format!("{path}?")))
                .unwrap_or_else(|| panic!("{engine}: no access line for {path}: {text}"));
            assert_eq!(line.contains("s3cret"), !redact, "{engine}, config {toml:?}: {line}");
            assert_eq!(line.contains(&format!("{path}?REDACTED")), redact, "{engine}, config {toml:?}: {line}");
        }
    }
    CAPTURING.store(false, std::sync::atomic::Ordering::Relaxed);
}
