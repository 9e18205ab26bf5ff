//! `curves.svg`: loss, train accuracy and test accuracy per epoch, like the book's figure.

use super::EpochMetrics;

const W: f64 = 480.0;
const H: f64 = 320.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;

/// An SVG document plotting `metrics` over epochs.
pub fn curves_svg(metrics: &[EpochMetrics]) -> String {
    let last = metrics.iter().map(|m| m.epoch).max().unwrap_or(1).max(1) as f64;
    let top = metrics.iter().map(|m| m.loss).fold(1.0, f64::max).min(10.0);
    let x = |e: f64| LEFT + (W - LEFT - RIGHT) * (e / last);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v.clamp(0.0, top) / top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" \
         font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Axes, ticks and grid.
    svg += &format!(
        "<path d=\"M{LEFT} {TOP} V{} H{}\" stroke=\"black\" fill=\"none\"/>\n",
        H - BOTTOM,
        W - RIGHT
    );
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        svg += &format!(
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y0 = y(v)
        );
    }
    let step = (last / 10.0).ceil().max(1.0) as usize;
    for e in (0..=last as usize).step_by(step) {
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{e}</text>\n",
            x(e as f64),
            H - BOTTOM + 16.0
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n",
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0
    );
    type Series = (&'static str, &'static str, &'static str, fn(&EpochMetrics) -> f64);
    let series: [Series; 3] = [
        ("train loss", "#1f77b4", "", |m| m.loss),
        ("train acc", "#ff7f0e", "6 4", |m| m.train_acc),
        ("test acc", "#2ca02c", "2 3", |m| m.test_acc),
    ];
    for (i, (label, colour, dash, value)) in series.iter().enumerate() {
        let points: Vec<String> = metrics
            .iter()
            .map(|m| format!("{:.1},{:.1}", x(m.epoch as f64), y(value(m))))
            .collect();
        svg += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
             stroke-dasharray=\"{dash}\"/>\n",
            points.join(" ")
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\" \
             stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{}\">{label}</text>\n",
            W - RIGHT + 10.0,
            W - RIGHT + 40.0,
            W - RIGHT + 46.0,
            ly + 4.0
        );
    }
    svg + "</svg>\n"
}
