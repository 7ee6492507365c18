//! What the benchmark binaries (`src/bin/bench-*.rs`) share: settings from the
//! environment, the verdict column, logs on stderr and where the function binaries are.

use std::path::PathBuf;

use anyhow::Context;

/// A whole number from `name`, or `default` when it is unset or empty.
///
/// # Errors
/// The variable is set to something that is not a whole number.
pub fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a whole number")),
        _ => Ok(default),
    }
}

/// The table's last column.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Logs on stderr (the table goes to stdout), `RUST_LOG` or errors only.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .try_init();
}

/// The function binaries: `BENCH_BIN_DIR`, else the directory of the running benchmark
/// (`target/release` when it was built with `--release`).
///
/// # Errors
/// The running binary's path is unknown.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(match std::env::var_os("BENCH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_owned(),
    })
}
