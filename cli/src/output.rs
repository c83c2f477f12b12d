//! Output helpers shared by every command: Docker-style tables, `--format` (json and templates), id truncation, and the human
//! forms of times and sizes (ported from Docker's `go-units`, so the text matches what Docker users know).

use crate::template::{go_names, Template, TemplateError};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// How a listing is printed: Docker's default table, only ids (`-q`), or a `--format` template (`json` is the
/// template `{{json .}}`: one object per line).
#[derive(Debug)]
pub enum Format {
    Table,
    Quiet,
    Template(Box<Template>),
}

/// The flags every listing takes: `-q` and `--format`.
#[derive(Debug, clap::Args)]
pub struct ListingArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output using a custom template: 'table', 'table TEMPLATE', 'json', or a Go template
    #[arg(long, value_parser = check_format, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// Clap value parser for `--format`: checks that the template parses, so a typo is reported as a bad flag value.
pub fn check_format(s: &str) -> Result<String, String> {
    Template::parse(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

impl Format {
    /// Combines `-q` and `--format` as Docker does: `table` (or no format) with `-q` prints ids; any other format
    /// wins over `-q` as the more explicit request.
    pub fn from_flags(quiet: bool, format: Option<&str>) -> Result<Format, TemplateError> {
        match format.map(str::trim) {
            None | Some("") | Some("table") => Ok(if quiet { Format::Quiet } else { Format::Table }),
            Some(f) => Ok(Format::Template(Box::new(Template::parse(f)?))),
        }
    }
}

/// Prints a listing through a template; `rows` are objects with Docker's field names, `titles` map a field to
/// its column title for `table` templates.
pub fn print_rows(t: &Template, rows: &[serde_json::Value], titles: &[(&str, &str)]) -> anyhow::Result<()> {
    print!("{}", t.render_rows(rows, titles)?);
    Ok(())
}

/// Prints inspected objects: the JSON array Docker prints, or with `--format` one rendered template per object
/// (the objects seen with Go field names, so `{{.ID}}` and `{{json .Spec}}` work).
pub fn print_inspected<T: Serialize>(objects: &[T], format: Option<&str>) -> anyhow::Result<()> {
    let Some(f) = format else {
        return print_json(objects);
    };
    let t = Template::parse(f)?;
    for o in objects {
        println!("{}", t.render(&go_names(&serde_json::to_value(o)?))?);
    }
    Ok(())
}

/// Aligns tab-separated text in Docker's columns: at least three spaces between columns, each at least 10 wide
/// (Docker uses Go's `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`).
pub fn tabulate(text: &str) -> String {
    // Go's minwidth includes the padding; Rust's tabwriter adds the padding on top of it.
    let mut tw = tabwriter::TabWriter::new(Vec::new()).minwidth(7).padding(3);
    // Writing to a Vec cannot fail.
    let _ = tw.write_all(text.as_bytes());
    let _ = tw.flush();
    tw.into_inner().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
}

/// A table in Docker's layout: columns separated by at least three spaces, each at least 10 wide
/// (Docker uses Go's `tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)`).
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|s| s.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders to a string (tabs inside cells are replaced so they cannot break the layout).
    pub fn render(&self) -> String {
        let mut text = String::new();
        for row in &self.rows {
            text.push_str(&row.iter().map(|c| c.replace('\t', " ")).collect::<Vec<_>>().join("\t"));
            text.push('\n');
        }
        tabulate(&text)
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// The default table of a listing: `columns` pairs each row field with its column title.
pub fn table_of(rows: &[serde_json::Value], columns: &[(&str, &str)]) -> Table {
    let mut t = Table::new(&columns.iter().map(|(_, title)| *title).collect::<Vec<_>>());
    for r in rows {
        t.row(columns.iter().map(|(k, _)| cell(&r[*k])).collect());
    }
    t
}

/// A field as a table cell: strings as they are, other values as JSON.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Prints a value as pretty JSON (listings pass a slice, giving an array).
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Docker's 12-character short id.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Docker's `formatter.Ellipsis`: at most `max` characters, the last one an ellipsis when cut.
pub fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// go-units `HumanDuration`: "Less than a second", "5 seconds", "About a minute", "3 hours", "2 weeks".
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 1 {
        return "Less than a second".into();
    }
    if seconds == 1 {
        return "1 second".into();
    }
    if seconds < 60 {
        return format!("{seconds} seconds");
    }
    let minutes = seconds / 60;
    if minutes == 1 {
        return "About a minute".into();
    }
    if minutes < 60 {
        return format!("{minutes} minutes");
    }
    // Go rounds hours to the nearest one here.
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if hours == 1 {
        return "About an hour".into();
    }
    if hours < 48 {
        return format!("{hours} hours");
    }
    if hours < 24 * 7 * 2 {
        return format!("{} days", hours / 24);
    }
    if hours < 24 * 30 * 2 {
        return format!("{} weeks", hours / 24 / 7);
    }
    if hours < 24 * 365 * 2 {
        return format!("{} months", hours / 24 / 30);
    }
    format!("{} years", d.as_secs() / 3600 / 24 / 365)
}

/// "5 seconds ago", as `image ls` CREATED shows it.
pub fn ago(d: Duration) -> String {
    format!("{} ago", human_duration(d))
}

/// `service ps` CURRENT STATE: "Running 5 seconds ago", "Pending less than a second ago" (Docker lowercases).
pub fn state_since(state_title: &str, d: Duration) -> String {
    format!("{state_title} {} ago", human_duration(d).to_lowercase())
}

/// Formats `v` with `precision` significant digits like Go's `%.*g` for the range we use (1 ≤ v < 1000 or 0),
/// dropping trailing zeros.
fn sig_digits(v: f64, precision: usize) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let int_digits = (v.abs().log10().floor() as i64 + 1).max(1) as usize;
    let decimals = precision.saturating_sub(int_digits);
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn scaled(size: f64, base: f64, units: &[&str], precision: usize) -> String {
    let mut size = size;
    let mut i = 0;
    while size >= base && i < units.len() - 1 {
        size /= base;
        i += 1;
    }
    // Rounding can carry into the next unit (999.96 kB → "1000kB"); show "1MB" instead, as a person would.
    let factor = 10f64.powi(precision as i32 - (size.log10().floor() as i32 + 1).max(1));
    if (size * factor).round() / factor >= base && i < units.len() - 1 {
        size /= base;
        i += 1;
    }
    format!("{}{}", sig_digits(size, precision), units[i])
}

/// go-units `HumanSizeWithPrecision(size, 3)` (decimal units), as `image ls` SIZE: "4.26MB", "512B".
pub fn human_size(bytes: u64) -> String {
    scaled(bytes as f64, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB", "EB"], 3)
}

/// go-units `BytesSize` (binary units, 4 significant digits): "7.637GiB", "64MiB".
pub fn bytes_size(bytes: u64) -> String {
    scaled(bytes as f64, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"], 4)
}

/// Splits a (familiar) image reference into Docker's REPOSITORY and TAG columns.
pub fn split_repo_tag(reference: &str) -> (String, String) {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (without_digest[..at].to_string(), without_digest[at + 1..].to_string())
        }
        None => (without_digest.to_string(), "<none>".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(human_duration(Duration::from_secs(5)), "5 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "About a minute");
        assert_eq!(human_duration(Duration::from_secs(150)), "2 minutes");
        assert_eq!(human_duration(Duration::from_secs(3600)), "About an hour");
        assert_eq!(human_duration(Duration::from_secs(5 * 3600)), "5 hours");
        assert_eq!(human_duration(Duration::from_secs(3 * 86400)), "3 days");
        assert_eq!(human_duration(Duration::from_secs(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(Duration::from_secs(90 * 86400)), "3 months");
        assert_eq!(human_duration(Duration::from_secs(800 * 86400)), "2 years");
        assert_eq!(ago(Duration::from_secs(120)), "2 minutes ago");
        assert_eq!(state_since("Running", Duration::from_secs(5)), "Running 5 seconds ago");
        assert_eq!(state_since("Pending", Duration::ZERO), "Pending less than a second ago");
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_100_000), "4.1MB");
        assert_eq!(human_size(4_263_900), "4.26MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(999_960), "1MB");
        assert_eq!(human_size(42_600), "42.6kB");
        assert_eq!(bytes_size(64 * 1024 * 1024), "64MiB");
        assert_eq!(bytes_size(8_200_000_000), "7.637GiB");
    }

    #[test]
    fn tables_pad_like_docker() {
        let mut t = Table::new(&["ID", "NAME", "PORTS"]);
        t.row(vec!["abc".into(), "a-rather-long-name".into(), "".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        // Go's tabwriter(minwidth 10, padding 3): "ID" is padded to 10, the long name gets 3 spaces after it.
        assert_eq!(lines[0], "ID        NAME                 PORTS");
        assert_eq!(lines[1], "abc       a-rather-long-name   ");
    }

    #[test]
    fn format_flags_combine_like_docker() {
        assert!(matches!(Format::from_flags(false, None), Ok(Format::Table)));
        assert!(matches!(Format::from_flags(true, None), Ok(Format::Quiet)));
        assert!(matches!(Format::from_flags(true, Some("table")), Ok(Format::Quiet)));
        assert!(matches!(Format::from_flags(false, Some("")), Ok(Format::Table)));
        // An explicit format wins over -q.
        assert!(matches!(Format::from_flags(true, Some("json")), Ok(Format::Template(t)) if !t.table));
        assert!(matches!(Format::from_flags(true, Some("table {{.ID}}")), Ok(Format::Template(t)) if t.table));
        assert!(Format::from_flags(false, Some("{{.ID")).is_err());
        assert_eq!(check_format("{{json .}}"), Ok("{{json .}}".to_string()));
        assert!(check_format("{{end}}").unwrap_err().starts_with("template parsing error"));
    }

    #[test]
    fn ids_and_ellipsis() {
        assert_eq!(short_id("0123456789abcdefghij"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(ellipsis("short", 30), "short");
        assert_eq!(ellipsis("abcdef", 4), "abc…");
    }

    #[test]
    fn repo_and_tag() {
        assert_eq!(split_repo_tag("busybox:latest"), ("busybox".into(), "latest".into()));
        assert_eq!(split_repo_tag("localhost:5000/app:v1"), ("localhost:5000/app".into(), "v1".into()));
        assert_eq!(split_repo_tag("localhost:5000/app"), ("localhost:5000/app".into(), "<none>".into()));
    }
}
