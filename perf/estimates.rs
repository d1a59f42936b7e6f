//! Reading criterion's own estimates back after a run, so that a benchmark can print the ratios of one
//! run (the figures `tuning.md` quotes) rather than leave them to arithmetic by hand. Included by the
//! benches that print ratios (`#[path = "estimates.rs"] mod estimates;`).

/// The mean time in nanoseconds criterion estimated for `group/id` in this run (`id` empty for a bench
/// outside a group), from `target/criterion/…/new/estimates.json`; `None` when it did not run.
pub fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{dir}/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let at = text.find("\"mean\"")?;
    let rest = &text[at..];
    let at = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = rest[at..].trim_start();
    let end =
        rest.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))?;
    rest[..end].parse().ok()
}
