//! The chart of a run, as a hand-written SVG: four panels (round-trip p50 and p99,
//! stream GB/s and messages/s) against the message size, both axes logarithmic, one line
//! per transport and mode with the same colour, dash and marker in every panel, and one
//! shared legend. Each marker carries its exact figure as a tooltip (`<title>`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a series is; it decides its look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// shmrpc itself: thick solid lines, round markers.
    Shmrpc,
    /// A floor: dark dashed lines, triangles.
    Floor,
    /// A baseline (sockets, pipe, TCP): solid lines, squares.
    Baseline,
    /// From the peers file: dotted lines, diamonds.
    Peer,
}

/// One line: points (message size in bytes, value).
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text (also what ties a series across panels).
    pub name: String,
    /// How it looks.
    pub kind: Kind,
    /// Its points, any order.
    pub points: Vec<(f64, f64)>,
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Above the plot.
    pub title: String,
    /// Beside the y axis.
    pub y_label: String,
    /// How a value reads (tick labels and tooltips).
    pub unit: Unit,
    /// Its lines.
    pub series: Vec<Series>,
}

/// The unit of a panel's values.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Microseconds.
    Micros,
    /// GB/s.
    GBps,
    /// Messages per second.
    PerSec,
}

impl Unit {
    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Micros => {
                if v >= 1000.0 {
                    format!("{} ms", num(v / 1000.0))
                } else {
                    format!("{} µs", num(v))
                }
            }
            Unit::GBps => format!("{} GB/s", num(v)),
            Unit::PerSec => {
                if v >= 1e6 {
                    format!("{} M/s", num(v / 1e6))
                } else if v >= 1e3 {
                    format!("{} k/s", num(v / 1e3))
                } else {
                    format!("{} /s", num(v))
                }
            }
        }
    }
}

/// A number with 3 significant digits, without trailing zeros.
fn num(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{:.3}", v)
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn size_label(bytes: f64) -> String {
    let b = bytes.round() as u64;
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1024 && b % 1024 == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// XML-escapes text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// How a series is drawn.
#[derive(Debug, Clone)]
struct Style {
    color: &'static str,
    width: f64,
    dash: &'static str,
    marker: Kind,
}

const SHMRPC: &[(&str, &str)] = &[
    ("shmrpc spin", "#1f5fa8"),
    ("shmrpc spin-then-park", "#2e9e44"),
    ("shmrpc park", "#8e44ad"),
    ("shmrpc async", "#12a4b6"),
    ("shmrpc async-park", "#a0522d"),
];
const OTHER_SHMRPC: &[&str] = &["#0b3d91", "#1b7837", "#5e3c99"];
const FLOORS: &[&str] = &["#111111", "#666666", "#999999", "#333333"];
const BASELINES: &[(&str, &str)] = &[
    ("Unix socket", "#d62728"),
    ("Unix socket, tokio", "#ff7f0e"),
    ("pipe pair", "#c9a100"),
    ("TCP loopback", "#e377c2"),
];
const OTHER_BASELINES: &[&str] = &["#b22222", "#d2691e", "#bc8f8f"];
const PEERS: &[&str] = &[
    "#c51b7d", "#6b8e23", "#542788", "#b35806", "#01665e", "#8c510a", "#4393c3", "#d6604d",
    "#762a83", "#1b7837",
];

/// Gives every series name one style, the same in every panel.
fn styles(panels: &[Panel]) -> BTreeMap<String, Style> {
    let mut names: Vec<(Kind, String)> = Vec::new();
    for p in panels {
        for s in &p.series {
            if !names.iter().any(|(_, n)| *n == s.name) {
                names.push((s.kind, s.name.clone()));
            }
        }
    }
    let mut out = BTreeMap::new();
    let (mut other, mut floor, mut base, mut peer) = (0, 0, 0, 0);
    for (kind, name) in names {
        let pick = |list: &[&'static str], i: &mut usize| {
            let c = list[*i % list.len()];
            *i += 1;
            c
        };
        let style = match kind {
            Kind::Shmrpc => Style {
                color: SHMRPC
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, c)| *c)
                    .unwrap_or_else(|| pick(OTHER_SHMRPC, &mut other)),
                width: 2.6,
                dash: "",
                marker: Kind::Shmrpc,
            },
            Kind::Floor => {
                let dash = ["7,4", "2,3", "10,3,2,3", "3,2"][floor % 4];
                Style {
                    color: pick(FLOORS, &mut floor),
                    width: 1.8,
                    dash,
                    marker: Kind::Floor,
                }
            }
            Kind::Baseline => Style {
                color: BASELINES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, c)| *c)
                    .unwrap_or_else(|| pick(OTHER_BASELINES, &mut base)),
                width: 1.8,
                dash: "",
                marker: Kind::Baseline,
            },
            Kind::Peer => Style {
                color: pick(PEERS, &mut peer),
                width: 2.2,
                dash: "1,4",
                marker: Kind::Peer,
            },
        };
        out.insert(name, style);
    }
    out
}

fn marker(o: &mut String, kind: Kind, x: f64, y: f64, color: &str, tip: &str) {
    let tip = format!("<title>{}</title>", esc(tip));
    let _ = match kind {
        Kind::Shmrpc => write!(
            o,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}" stroke="#fff" stroke-width="1">{tip}</circle>"##
        ),
        Kind::Baseline => write!(
            o,
            r##"<rect x="{:.1}" y="{:.1}" width="7" height="7" fill="{color}" stroke="#fff" stroke-width="1">{tip}</rect>"##,
            x - 3.5,
            y - 3.5
        ),
        Kind::Floor => write!(
            o,
            r##"<path d="M{:.1},{:.1}L{:.1},{:.1}L{:.1},{:.1}Z" fill="{color}" stroke="#fff" stroke-width="1">{tip}</path>"##,
            x,
            y - 5.0,
            x + 4.6,
            y + 3.5,
            x - 4.6,
            y + 3.5
        ),
        Kind::Peer => write!(
            o,
            r##"<path d="M{:.1},{:.1}L{:.1},{:.1}L{:.1},{:.1}L{:.1},{:.1}Z" fill="{color}" stroke="#fff" stroke-width="1">{tip}</path>"##,
            x,
            y - 5.0,
            x + 5.0,
            y,
            x,
            y + 5.0,
            x - 5.0,
            y
        ),
    };
    o.push('\n');
}

/// The y range of a panel in decades (log10), at least one decade wide.
fn decades(series: &[Series]) -> Option<(f64, f64)> {
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(0.0, f64::max);
    if vals.is_empty() {
        return None;
    }
    let (mut a, mut b) = (lo.log10().floor(), hi.log10().ceil());
    if b <= a {
        b = a + 1.0;
    }
    // A little air when the data touches a decade line.
    if (lo.log10() - a).abs() < 1e-9 {
        a -= 0.15;
    }
    if (b - hi.log10()).abs() < 1e-9 {
        b += 0.15;
    }
    Some((a, b))
}

const W: f64 = 1240.0;
const PANEL_W: f64 = 620.0;
const PANEL_H: f64 = 400.0;
const TOP: f64 = 92.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";

/// The whole chart. `title` and `subtitle` go on top; `notes` under the legend.
pub fn chart(title: &str, subtitle: &str, panels: &[Panel], notes: &[String]) -> String {
    let styles = styles(panels);
    // The legend: every series, in order of kind then first appearance.
    let mut legend: Vec<(Kind, String)> = Vec::new();
    for p in panels {
        for s in &p.series {
            if !legend.iter().any(|(_, n)| *n == s.name) {
                legend.push((s.kind, s.name.clone()));
            }
        }
    }
    legend.sort_by_key(|(k, _)| *k);
    let cols = 3usize;
    let rows = legend.len().div_ceil(cols);
    let panel_rows = panels.len().div_ceil(2);
    let legend_top = TOP + panel_rows as f64 * PANEL_H + 14.0;
    let notes_top = legend_top + 30.0 + rows as f64 * 22.0 + 8.0;
    let h = notes_top + notes.len() as f64 * 17.0 + 18.0;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" viewBox="0 0 {W} {h:.0}" font-family="{FONT}" font-size="12">"#
    );
    let _ = writeln!(o, "<title>{}</title>", esc(title));
    let _ = writeln!(
        o,
        r##"<rect x="0" y="0" width="{W}" height="{h:.0}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        o,
        r##"<text x="24" y="34" font-size="21" font-weight="600" fill="#111">{}</text>"##,
        esc(title)
    );
    let _ = writeln!(
        o,
        r##"<text x="24" y="58" font-size="12.5" fill="#444">{}</text>"##,
        esc(subtitle)
    );
    for (i, p) in panels.iter().enumerate() {
        let x0 = (i % 2) as f64 * PANEL_W;
        let y0 = TOP + (i / 2) as f64 * PANEL_H;
        panel(&mut o, p, x0, y0, &styles);
    }
    // Legend.
    let _ = writeln!(
        o,
        r##"<text x="24" y="{:.1}" font-size="13" font-weight="600" fill="#111">Legend</text>"##,
        legend_top + 14.0
    );
    let col_w = (W - 48.0) / cols as f64;
    for (k, (_, name)) in legend.iter().enumerate() {
        let st = &styles[name];
        let x = 24.0 + (k % cols) as f64 * col_w;
        let y = legend_top + 34.0 + (k / cols) as f64 * 22.0;
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="{}" stroke-dasharray="{}" stroke-linecap="round"/>"#,
            x + 36.0,
            st.color,
            st.width,
            st.dash
        );
        marker(&mut o, st.marker, x + 18.0, y, st.color, name);
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" fill="#222">{}</text>"##,
            x + 44.0,
            y + 4.0,
            esc(name)
        );
    }
    for (k, n) in notes.iter().enumerate() {
        let _ = writeln!(
            o,
            r##"<text x="24" y="{:.1}" font-size="11.5" fill="#555">{}</text>"##,
            notes_top + k as f64 * 17.0 + 12.0,
            esc(n)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn panel(o: &mut String, p: &Panel, x0: f64, y0: f64, styles: &BTreeMap<String, Style>) {
    let (l, r, t, b) = (
        x0 + 86.0,
        x0 + PANEL_W - 22.0,
        y0 + 34.0,
        y0 + PANEL_H - 58.0,
    );
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="600" fill="#111">{}</text>"##,
        l,
        y0 + 20.0,
        esc(&p.title)
    );
    let _ = writeln!(
        o,
        r##"<rect x="{l:.1}" y="{t:.1}" width="{:.1}" height="{:.1}" fill="#fafafa" stroke="#bbb"/>"##,
        r - l,
        b - t
    );
    // x: log2 of the size, from 32 B to 2 MiB.
    let (xa, xb) = (32f64.log2(), ((2u64 << 20) as f64).log2());
    let xs = |size: f64| l + (size.log2() - xa) / (xb - xa) * (r - l);
    for e in (6..=20).step_by(2) {
        let size = (1u64 << e) as f64;
        let x = xs(size);
        let major = e % 10 == 0 || e == 6 || e == 16;
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{t:.1}" x2="{x:.1}" y2="{b:.1}" stroke="{}" stroke-width="1"/>"##,
            if major { "#ddd" } else { "#eee" }
        );
        if major {
            let _ = writeln!(
                o,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
                b + 17.0,
                size_label(size)
            );
        }
    }
    let _ = writeln!(
        o,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#333">message size (log scale)</text>"##,
        (l + r) / 2.0,
        b + 38.0
    );
    let _ = writeln!(
        o,
        r##"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle" fill="#333">{}</text>"##,
        x0 + 18.0,
        (t + b) / 2.0,
        esc(&p.y_label)
    );
    let Some((ya, yb)) = decades(&p.series) else {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">no data in this run</text>"##,
            (l + r) / 2.0,
            (t + b) / 2.0
        );
        return;
    };
    let ys = |v: f64| b - (v.log10() - ya) / (yb - ya) * (b - t);
    let span = yb - ya;
    let mut d = ya.floor() as i32;
    while f64::from(d) <= yb {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(d);
            let lv = v.log10();
            if lv < ya - 1e-9 || lv > yb + 1e-9 {
                continue;
            }
            let y = ys(v);
            let major = m == 1.0;
            let _ = writeln!(
                o,
                r##"<line x1="{l:.1}" y1="{y:.1}" x2="{r:.1}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
                if major { "#d6d6d6" } else { "#eeeeee" }
            );
            if major || span <= 2.5 {
                let _ = writeln!(
                    o,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{}">{}</text>"##,
                    l - 6.0,
                    y + 4.0,
                    if major { "#333" } else { "#777" },
                    esc(&p.unit.fmt(v))
                );
            }
        }
        d += 1;
    }
    // Lines first, then markers on top.
    for s in &p.series {
        let st = &styles[&s.name];
        let mut pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, v)| *x > 0.0 && v.is_finite() && *v > 0.0)
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() >= 2 {
            let path: Vec<String> = pts
                .iter()
                .map(|(x, v)| format!("{:.1},{:.1}", xs(*x), ys(*v)))
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{}" stroke-dasharray="{}" stroke-linejoin="round" stroke-linecap="round" opacity="0.92"><title>{}</title></polyline>"#,
                path.join(" "),
                st.color,
                st.width,
                st.dash,
                esc(&s.name)
            );
        }
    }
    for s in &p.series {
        let st = &styles[&s.name];
        for &(x, v) in &s.points {
            if x > 0.0 && v.is_finite() && v > 0.0 {
                let tip = format!("{}, {}: {}", s.name, size_label(x), p.unit.fmt(v));
                marker(o, st.marker, xs(x), ys(v), st.color, &tip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_every_series_and_is_balanced() {
        let s = |name: &str, kind, k: f64| Series {
            name: name.to_owned(),
            kind,
            points: vec![(64.0, k), (1024.0, 2.0 * k), (65536.0, 30.0 * k)],
        };
        let panels = vec![
            Panel {
                title: "Round trip p50".into(),
                y_label: "µs".into(),
                unit: Unit::Micros,
                series: vec![
                    s("shmrpc spin", Kind::Shmrpc, 0.4),
                    s("floor: copy ping-pong", Kind::Floor, 0.2),
                    s("Unix <socket> & co", Kind::Baseline, 20.0),
                    Series {
                        name: "floor: one cache line".into(),
                        kind: Kind::Floor,
                        points: vec![(64.0, 0.2)],
                    },
                ],
            },
            Panel {
                title: "Empty".into(),
                y_label: "GB/s".into(),
                unit: Unit::GBps,
                series: vec![],
            },
        ];
        let svg = chart("t & t", "sub", &panels, &["note".into()]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for n in [
            "shmrpc spin",
            "floor: copy ping-pong",
            "Unix &lt;socket&gt; &amp; co",
            "t &amp; t",
        ] {
            assert!(svg.contains(n), "{n}");
        }
        assert!(svg.contains("no data in this run"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert_eq!(
            svg.matches("<title>").count(),
            svg.matches("</title>").count()
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn numbers_and_units_read_well() {
        assert_eq!(num(0.45), "0.45");
        assert_eq!(num(12.0), "12");
        assert_eq!(num(150.4), "150");
        assert_eq!(Unit::Micros.fmt(1500.0), "1.5 ms");
        assert_eq!(Unit::PerSec.fmt(2.5e7), "25 M/s");
        assert_eq!(size_label(1048576.0), "1 MiB");
        assert_eq!(size_label(64.0), "64 B");
    }
}
