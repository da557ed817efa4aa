//! The SVG plot: four log-log panels, cost per packet against the number of services.

use std::fmt::Write;

use crate::scenario::Traffic;

use super::agg::*;
use super::Results;

const COLORS: [(&str, &str); 6] = [
    ("no-nat", "#888888"),
    ("iptables-legacy", "#d62728"),
    ("iptables-nft", "#ff7f0e"),
    ("nftables", "#9467bd"),
    ("ebpf-tc", "#1f77b4"),
    ("ebpf-xdp", "#2ca02c"),
];

/// Four log-log panels, one per traffic kind: cost per packet (median) against N, one line per
/// mode. Hand-written SVG, no dependencies.
pub fn plot(r: &Results) -> String {
    let (pw, ph) = (430.0, 300.0);
    let (ml, mr, mt, mb) = (70.0, 32.0, 30.0, 45.0);
    let (w, h) = (2.0 * pw, 2.0 * ph + 40.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let sweep: Vec<usize> = r.services.clone();
    let (xmin, xmax) = (
        *sweep.iter().min().unwrap_or(&1) as f64,
        *sweep.iter().max().unwrap_or(&10) as f64,
    );
    let (lx0, lx1) = (
        xmin.max(1.0).log10(),
        xmax.max(10.0).log10().max(xmin.max(1.0).log10() + 1.0),
    );
    for (i, t) in Traffic::ALL.iter().enumerate() {
        let (ox, oy) = ((i % 2) as f64 * pw, (i / 2) as f64 * ph);
        let (x0, x1, y0, y1) = (ox + ml, ox + pw - mr, oy + ph - mb, oy + mt);
        let vals: Vec<f64> = COLORS
            .iter()
            .flat_map(|(row, _)| {
                sweep
                    .iter()
                    .filter_map(|n| packet_agg(r, row, *n, *t))
                    .map(|a| a.median)
                    .collect::<Vec<_>>()
            })
            .collect();
        if vals.is_empty() {
            continue;
        }
        let vmin = vals.iter().cloned().fold(f64::INFINITY, f64::min);
        let vmax = vals.iter().cloned().fold(0.0, f64::max);
        let ly0 = (vmin * 0.8).log10().floor();
        let ly1 = (vmax * 1.25).log10().ceil().max(ly0 + 1.0);
        let px = |n: f64| x0 + (n.max(1.0).log10() - lx0) / (lx1 - lx0) * (x1 - x0);
        let py = |v: f64| y0 - (v.log10() - ly0) / (ly1 - ly0) * (y0 - y1);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
            ox + ml,
            oy + 18.0,
            short(*t)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            x1 - x0,
            y0 - y1
        );
        // y grid: 1, 2, 5 per decade.
        let mut d = ly0 as i32;
        while d as f64 <= ly1 {
            for k in [1.0, 2.0, 5.0] {
                let v = k * 10f64.powi(d);
                if v.log10() < ly0 - 1e-9 || v.log10() > ly1 + 1e-9 {
                    continue;
                }
                let y = py(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x0}" x2="{x1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##
                );
                let label = if v >= 1000.0 {
                    format!("{} µs", v / 1000.0)
                } else {
                    format!("{v} ns")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
                    x0 - 4.0,
                    y + 4.0
                );
            }
            d += 1;
        }
        for n in &sweep {
            let x = px(*n as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{y0}" y2="{y1}" stroke="#eee"/>"##
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y0 + 14.0,
                ns(*n as f64)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">services (log scale)</text>"#,
            (x0 + x1) / 2.0,
            y0 + 30.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">cost per packet (log)</text>"#,
            ox + 14.0,
            (y0 + y1) / 2.0,
            ox + 14.0,
            (y0 + y1) / 2.0
        );
        for (row, color) in COLORS {
            let pts: Vec<(f64, f64)> = sweep
                .iter()
                .filter_map(|n| packet_agg(r, row, *n, *t).map(|a| (px(*n as f64), py(a.median))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
                );
            }
        }
    }
    // Legend.
    let ly = 2.0 * ph + 20.0;
    for (i, (row, color)) in COLORS.iter().enumerate() {
        let x = 20.0 + i as f64 * 140.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{row}</text>"#,
            x + 24.0,
            x + 30.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
