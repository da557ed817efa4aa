//! bpf-maps.md's reason table and map table are generated from the one reason list (`Reason`)
//! and the one map table (`maps::pinned()`: `ALL` and the agent-created maps): these tests fail when the doc falls behind, and rewrite
//! it with `UPDATE_DOCS=1`.

use std::path::PathBuf;

use dataplane_common::{
    maps::{self, MapKind},
    Reason,
};

const BEGIN: &str = "<!-- reasons:begin";
const END: &str = "<!-- reasons:end -->";

fn reason_table() -> String {
    let mut out = String::from("| Value | Name | Verdict | Meaning |\n| --- | --- | --- | --- |\n");
    for r in Reason::ALL {
        let help: Vec<&str> = r.help().lines().map(str::trim).collect();
        let verdict = if r.is_drop() { "drop" } else { "pass" };
        out += &format!(
            "| {} | `{}` | {verdict} | {} |\n",
            r as u32,
            r.name(),
            help.join(" ")
        );
    }
    out
}

/// `65536` as `65 536`.
fn grouped(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn map_table() -> String {
    let mut out = String::from(
        "| Map | Type | Key | Value | Entries | Written by | Read by |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for m in maps::pinned() {
        let kind = format!("`{}`", m.kind.name().to_uppercase());
        let (key, value, entries) = match m.kind {
            MapKind::RingBuf => (
                "–".to_string(),
                "`MonitorEvent` records".to_string(),
                format!("{} MiB", m.max_entries >> 20),
            ),
            MapKind::Array => (
                "u32 index".into(),
                format!("{} B", m.value_size),
                grouped(m.max_entries),
            ),
            MapKind::PerCpuArray => (
                "u32 index".into(),
                format!("{} B per CPU", m.value_size),
                grouped(m.max_entries),
            ),
            _ => (
                format!("{} B", m.key_size),
                format!("{} B", m.value_size),
                grouped(m.max_entries),
            ),
        };
        out += &format!(
            "| [`{name}`](#{anchor}) | {kind} | {key} | {value} | {entries} | {} | {} |\n",
            m.writers,
            m.readers,
            name = m.name,
            anchor = m.name.to_lowercase(),
        );
    }
    out
}

/// The text between `begin` (a line starting with it) and `end` must be `want`; rewritten with
/// `UPDATE_DOCS=1`.
fn check_generated(begin: &str, end: &str, want: &str, source: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bpf-maps.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let start = doc
        .find(begin)
        .unwrap_or_else(|| panic!("{begin} marker in bpf-maps.md"));
    let start = start + doc[start..].find('\n').unwrap() + 1;
    let stop = doc
        .find(end)
        .unwrap_or_else(|| panic!("{end} marker in bpf-maps.md"));
    if doc[start..stop] == *want {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let new = format!("{}{want}{}", &doc[..start], &doc[stop..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!(
        "bpf-maps.md's table is behind {source}: run UPDATE_DOCS=1 cargo test -p dataplane-common --test docs"
    );
}

#[test]
fn bpf_maps_md_lists_every_reason() {
    check_generated(BEGIN, END, &reason_table(), "Reason");
}

#[test]
fn bpf_maps_md_lists_every_map() {
    check_generated(
        "<!-- maps:begin",
        "<!-- maps:end -->",
        &map_table(),
        "dataplane_common::maps::ALL",
    );
}
