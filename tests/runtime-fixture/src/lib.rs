//! Shared bits of the fixture functions: each invocation is appended as one JSON line to
//! the file named by `FIXTURE_LOG`, so a test can see exactly what reached the handler.

use std::io::Write;

pub fn record(function: &str, value: &serde_json::Value) {
    let Ok(path) = std::env::var("FIXTURE_LOG") else {
        return;
    };
    let line = serde_json::json!({ "function": function, "event": value });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("FIXTURE_LOG is writable");
    writeln!(file, "{line}").expect("write FIXTURE_LOG");
}
