//! The charts of `tether compare --svg DIR`, written as SVG directly.
//!
//! Why not `plotters`: its text layout measures glyphs with a font
//! rasteriser (system fonts or a bundled TTF) even for SVG output, and a
//! headless CI machine may have no fonts; SVG text is laid out by the
//! viewer and needs none. Three charts, each a few dozen elements: bars
//! of bytes per chat transport, publish-to-receipt latency per message
//! (log scale) and keep-alive against a new connection per request.

use std::fmt::Write;

use super::Report;

const COLOURS: [&str; 4] = ["#d62728", "#ff7f0e", "#2ca02c", "#1f77b4"];

/// (file name, SVG text) of every chart the report has data for.
pub fn all(report: &Report) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(chat) = &report.chat {
        let bars: Vec<(String, Vec<f64>)> = chat
            .transports
            .iter()
            .map(|t| {
                let other = t.total_bytes.saturating_sub(t.protocol_overhead) as f64;
                (t.transport.to_string(), vec![t.protocol_overhead as f64, other])
            })
            .collect();
        out.push((
            "chat-bytes.svg",
            stacked_bars(
                &format!("{} chat messages: bytes on the wire, both ways", chat.messages),
                &bars,
                &["protocol headers", "bodies and payloads"],
                "bytes",
            ),
        ));
        let series: Vec<(String, Vec<Option<f64>>)> = chat
            .transports
            .iter()
            .map(|t| (t.transport.to_string(), t.latencies_ms.clone()))
            .collect();
        out.push(("chat-latency.svg", latency_dots(&series)));
    }
    if let Some(k) = &report.keepalive {
        let bars: Vec<(String, Vec<f64>)> = k.modes.iter().map(|m| (m.mode.to_string(), vec![m.total_ms])).collect();
        out.push((
            "keepalive.svg",
            stacked_bars(
                &format!("{} requests: total time", k.modes.first().map_or(0, |m| m.requests)),
                &bars,
                &["ms"],
                "ms",
            ),
        ));
        let packets: Option<Vec<(String, Vec<f64>)>> = k
            .modes
            .iter()
            .map(|m| {
                let lo = m.loopback?;
                Some((m.mode.to_string(), vec![lo.packets as f64 / m.requests.max(1) as f64]))
            })
            .collect();
        if let Some(bars) = packets {
            out.push((
                "keepalive-packets.svg",
                stacked_bars(
                    "Packets on the loopback interface per request",
                    &bars,
                    &["packets"],
                    "packets",
                ),
            ));
        }
    }
    out
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn open(w: u32, h: u32, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{x}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{t}</text>\n",
        x = w / 2,
        t = esc(title)
    )
}

/// Horizontal bars, one per row, each split into `parts` (same order as
/// `legend`), with the total at the end.
fn stacked_bars(title: &str, rows: &[(String, Vec<f64>)], legend: &[&str], unit: &str) -> String {
    let (w, left, right, row_h) = (760.0, 190.0, 120.0, 34.0);
    let h = 70.0 + row_h * rows.len() as f64 + 30.0;
    let max = rows
        .iter()
        .map(|(_, v)| v.iter().sum::<f64>())
        .fold(0.0, f64::max)
        .max(1.0);
    let scale = (w - left - right) / max;
    let mut s = open(w as u32, h as u32, title);
    for (i, (label, parts)) in rows.iter().enumerate() {
        let y = 50.0 + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 17.0,
            esc(label)
        );
        let mut x = left;
        for (j, v) in parts.iter().enumerate() {
            let bw = v * scale;
            let _ = writeln!(
                s,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"24\" fill=\"{}\"/>",
                COLOURS[(3 + j) % COLOURS.len()]
            );
            x += bw;
        }
        let total: f64 = parts.iter().sum();
        let shown = if total < 100.0 {
            format!("{total:.1}")
        } else {
            thousands(total)
        };
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\">{shown} {unit}</text>", x + 6.0, y + 17.0);
    }
    if legend.len() > 1 {
        let y = h - 18.0;
        for (j, name) in legend.iter().enumerate() {
            let x = left + 180.0 * j as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{y}\">{}</text>",
                y - 10.0,
                COLOURS[(3 + j) % COLOURS.len()],
                x + 16.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Publish-to-receipt latency of each message, one colour per transport,
/// on a log scale from 0.1 ms.
fn latency_dots(series: &[(String, Vec<Option<f64>>)]) -> String {
    let (w, h, left, top, bottom, right) = (760.0, 420.0, 70.0, 40.0, 70.0, 20.0);
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(1);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(1.0f64, |a, b| a.max(*b));
    let (lo, hi) = (0.1f64.log10(), max.log10().ceil().max(1.0));
    let y_of = |ms: f64| top + (h - top - bottom) * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo));
    let x_of = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / n as f64;
    let mut s = open(
        w as u32,
        h as u32,
        "Publish-to-receipt latency of each message (log scale)",
    );
    let mut decade = lo;
    while decade <= hi + 1e-9 {
        let y = y_of(10f64.powf(decade));
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} ms</text>",
            w - right,
            left - 6.0,
            y + 4.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">message (in publication order)</text>",
        (left + w - right) / 2.0,
        h - bottom + 22.0
    );
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        for (i, v) in values.iter().enumerate() {
            if let Some(ms) = v {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\" fill-opacity=\"0.8\"/>",
                    x_of(i),
                    y_of(*ms)
                );
            }
        }
        let x = left + 160.0 * k as f64;
        let _ = writeln!(
            s,
            "<circle cx=\"{x}\" cy=\"{}\" r=\"5\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            h - 22.0,
            x + 9.0,
            h - 18.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 12345 → "12,345".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_dots_are_well_formed_svg() {
        let s = stacked_bars("t <x>", &[("a".into(), vec![1.0, 2.0])], &["h", "b"], "bytes");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;x&gt;") && s.contains("3.0 bytes"));
        let d = latency_dots(&[("ws".into(), vec![Some(0.5), None, Some(900.0)])]);
        assert_eq!(d.matches("<circle").count(), 3, "two dots and the legend's");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
