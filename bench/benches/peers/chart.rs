//! The chart of the summary's ratios, `docs/peers.svg`.

use std::fmt::Write as _;

use crate::peers::*;
use crate::report::*;

/// A bar chart of each scenario's times relative to the best peer (1.0 = best peer).
pub(crate) fn chart(rows: &[Row]) -> String {
    let rows: Vec<&Row> = rows.iter().filter(|r| r.target.is_some()).collect();
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    let (bar, left, width) = (16.0, 300.0, 420.0);
    let row_height = 30.0 + bar * PEERS.len() as f64;
    let height = 60.0 + row_height * rows.len() as f64 + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"15\">Time relative to the best peer in each scenario (lower is better; 1.0 = best peer)</text>\n",
        left + width + 120.0
    );
    let max = rows
        .iter()
        .flat_map(|r| {
            let best = best_peer(r).unwrap_or(f64::INFINITY);
            r.values
                .iter()
                .flatten()
                .map(move |v| v / best)
                .collect::<Vec<_>>()
        })
        .fold(1.0_f64, f64::max)
        .min(8.0);
    for (i, row) in rows.iter().enumerate() {
        let top = 50.0 + row_height * i as f64;
        let best = best_peer(row).unwrap_or(f64::INFINITY);
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>",
            top + 12.0,
            row.scenario
        );
        for (p, value) in row.values.iter().enumerate() {
            let y = top + 20.0 + p as f64 * bar;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                left - 6.0,
                y + 12.0,
                PEERS[p].replace('<', "&lt;").replace('>', "&gt;")
            );
            if let Some(v) = value {
                let ratio = v / best;
                let w = (ratio.min(max) / max * width).max(1.0);
                let _ = writeln!(
                    svg,
                    "<rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>",
                    bar - 3.0,
                    colors[p]
                );
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{}\">{ratio:.2}x ({v:.0} {})</text>",
                    left + w + 4.0,
                    y + 12.0,
                    row.unit
                );
            }
        }
        let x = left + width / max;
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"3,3\"/>",
            top + 18.0,
            top + 20.0 + bar * PEERS.len() as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}
