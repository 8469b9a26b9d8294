//! Log setup shared by both binaries: `RUST_LOG` filters (default `info`, with the GPU
//! backend's crates at `warn`: CubeCL logs every kernel it autotunes at `info`), and
//! `FEDSEG_LOG_FORMAT=json` switches to one JSON object per line for log collectors
//! (journald, Loki, Elasticsearch) instead of text for people.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// `cubecl` matches every `cubecl_*` target (a directive's target is a prefix).
const DEFAULT_FILTER: &str = "info,cubecl=warn";

pub fn json_requested() -> bool {
    std::env::var("FEDSEG_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// Logs to stderr, in colour only on a terminal (not into files, journald or containers'
/// log collectors) and only without `NO_COLOR`.
pub fn init_stderr() {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    init(std::io::stderr, ansi);
}

/// Installs the global subscriber writing to `writer`; colours only where `ansi` and text.
pub fn init<W>(writer: W, ansi: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests, or the simulation re-pointing logs) keeps the first: not an error.
    let _ = if json_requested() {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_ansi(ansi).try_init()
    };
}
