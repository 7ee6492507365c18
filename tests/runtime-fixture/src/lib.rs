//! Shared bits of the fixture functions: each invocation is appended as one JSON line to
//! the file named by `FIXTURE_LOG`, so a test can see exactly what reached the handler.

use std::io::Write;

pub fn record(function: &str, value: &serde_json::Value) {
    let Ok(path) = std::env::var("FIXTURE_LOG") else {
        return;
    };
    // One write of the whole line: instances of the fixture running at once (duplicate
    // deliveries) append to the same file, and a line written in pieces could interleave.
    let line = format!(
        "{}\n",
        serde_json::json!({ "function": function, "event": value })
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("FIXTURE_LOG is writable");
    file.write_all(line.as_bytes()).expect("write FIXTURE_LOG");
}
