//! `make bench`, last step: the one table of the performance report, from the rows the
//! benchmarks of the same run appended to the report file (`bench-report FILE`, one JSON
//! row per line, see `integration_tests::bench::emit`), grouped by area in a fixed order.

use anyhow::Context;
use integration_tests::bench::Row;

/// The report's sections, in order; rows of other areas come last.
const AREAS: [&str; 6] = [
    "functions",
    "aggregation",
    "categorisation",
    "bulk payments",
    "bank calls per operation",
    "naive approach",
];

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: bench-report REPORT_FILE")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut rows = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let row: Row =
            serde_json::from_str(line).with_context(|| format!("{path}:{}: not a row", n + 1))?;
        rows.push(row);
    }
    anyhow::ensure!(!rows.is_empty(), "{path} holds no rows");
    let rank = |row: &Row| {
        AREAS
            .iter()
            .position(|a| *a == row.area)
            .unwrap_or(AREAS.len())
    };
    // Stable: rows keep their order within an area.
    rows.sort_by_key(rank);

    println!("| area | measurement | value | target (naive: ours) | |");
    println!("|---|---|---|---|---|");
    let mut last_area = "";
    for row in &rows {
        let area = if row.area == last_area {
            ""
        } else {
            row.area.as_str()
        };
        last_area = &row.area;
        println!(
            "| {} | {} | {} | {} | {} |",
            cell(area),
            cell(&row.measurement),
            cell(&row.value),
            cell(&row.target),
            cell(&row.verdict)
        );
    }
    let met = rows.iter().filter(|r| r.verdict == "met").count();
    let missed: Vec<&Row> = rows.iter().filter(|r| r.verdict == "NOT met").collect();
    println!(
        "\n{} rows; targets met: {met} of {}.",
        rows.len(),
        met + missed.len()
    );
    for row in missed {
        println!(
            "not met: {} — {} (target {})",
            row.measurement, row.value, row.target
        );
    }
    Ok(())
}
