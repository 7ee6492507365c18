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

/// One row of a benchmark's table, and of `make bench`'s combined report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// What part of the product the row measures (the report's first column).
    pub area: String,
    pub measurement: String,
    pub value: String,
    /// The target, or for a naive approach what ours does instead.
    #[serde(default)]
    pub target: String,
    /// `met` / `NOT met`, or a naive approach's ratio.
    #[serde(default)]
    pub verdict: String,
}

impl Row {
    pub fn new(
        area: impl Into<String>,
        measurement: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            area: area.into(),
            measurement: measurement.into(),
            value: value.into(),
            target: String::new(),
            verdict: String::new(),
        }
    }

    /// A target and whether it was met.
    #[must_use]
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.verdict = verdict(met).to_owned();
        self
    }

    /// A naive approach measured in the same run: what ours does (`ours`) and how many
    /// times better that is (`ratio`).
    #[must_use]
    pub fn against(mut self, ours: impl Into<String>, ratio: f64) -> Self {
        self.target = ours.into();
        self.verdict = format!("ours {ratio:.1}× better");
        self
    }
}

/// Prints `rows` as a Markdown table on stdout and, when `BENCH_REPORT` names a file,
/// appends them to it (one JSON object per line) for `bench-report`.
///
/// # Errors
/// The report file cannot be written.
pub fn emit(rows: &[Row]) -> anyhow::Result<()> {
    println!("| measurement | value | target | |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.measurement, row.value, row.target, row.verdict
        );
    }
    if let Some(path) = std::env::var_os("BENCH_REPORT").filter(|p| !p.is_empty()) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", PathBuf::from(&path).display()))?;
        for row in rows {
            writeln!(file, "{}", serde_json::to_string(row)?)?;
        }
    }
    Ok(())
}

/// `d` in milliseconds with one decimal and the unit.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `p` quantile (0 to 1, nearest rank) of sorted durations; zero when empty.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}
