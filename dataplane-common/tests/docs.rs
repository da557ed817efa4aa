//! bpf-maps.md's reason table is generated from the one reason list (`Reason`): this test fails
//! when it falls behind, and rewrites it with `UPDATE_DOCS=1`.

use std::path::PathBuf;

use dataplane_common::Reason;

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

#[test]
fn bpf_maps_md_lists_every_reason() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bpf-maps.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let begin = doc
        .find(BEGIN)
        .expect("reasons:begin marker in bpf-maps.md");
    let begin = begin + doc[begin..].find('\n').unwrap() + 1;
    let end = doc.find(END).expect("reasons:end marker in bpf-maps.md");
    let want = reason_table();
    if doc[begin..end] == want {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let new = format!("{}{want}{}", &doc[..begin], &doc[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    panic!("bpf-maps.md's reason table is behind Reason: run UPDATE_DOCS=1 cargo test -p dataplane-common --test docs");
}
